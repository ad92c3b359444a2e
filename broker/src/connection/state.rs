//! The per-socket state the actions work on ([`Connection`]): the broker, the session, the
//! outbox, the authority, the attached channels and the ACKs waiting to go out, with what an
//! action may do to it (send, answer, fail, end). Apart from the read loop in `mod.rs`, so the
//! actions use it without importing the module that dispatches to them.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use protocol::error::codes;
use protocol::{Action, ConnectionDetails, ErrorInfo, ProtocolMessage};

use super::session::{Authority, Session};
use crate::auth::now_ms;
use crate::broker::Broker;
use crate::channel::PublishOutcome;
use crate::outbox::Outbox;
use crate::revocation::{self, Lapsed};

/// A publish awaiting its ACK or NACK, in msgSerial order.
pub type PendingAck = BoxFuture<'static, (u64, PublishOutcome)>;

/// How a socket's read loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client sent CLOSE: forget the connection.
    Closed,
    /// The socket goes but the connection stays resumable (DISCONNECT, drop, slow consumer,
    /// token expiry, shutdown).
    Resumable,
}

/// The per-socket state the actions work on.
pub struct Connection {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The connection this socket serves.
    pub session: Arc<Session>,
    /// The connectionId, shared with subscriptions.
    pub connection_id: Arc<str>,
    /// This socket's id.
    pub socket_id: u64,
    /// Frames to this socket.
    pub outbox: Outbox,
    /// Identity and capability.
    pub authority: Authority,
    /// Attached channels and their granted modes.
    pub attached: HashMap<String, u64>,
    /// Publishes awaiting ACK/NACK, oldest first.
    pub pending: FuturesOrdered<PendingAck>,
    /// Set by an action to end the read loop.
    pub ending: Option<Ending>,
    /// Whether AUTH was already sent for the current token, or is not to be sent for it (see
    /// [`Connection::plan_renewal`]).
    pub renewal_requested: bool,
}

impl Connection {
    /// The CONNECTED message for this connection (§4.3).
    pub fn connected_message(&self, error: Option<ErrorInfo>) -> ProtocolMessage {
        let config = &self.broker.config;
        let connection_key = self.session.connection_key();
        ProtocolMessage {
            connection_id: Some(self.session.id.clone()),
            connection_key: Some(connection_key.clone()),
            connection_details: Some(ConnectionDetails {
                connection_key,
                client_id: self.authority.identity.reported.clone(),
                max_idle_interval: Some(config.connection.max_idle_interval_ms),
                connection_state_ttl: Some(config.connection.connection_state_ttl_ms),
                max_message_size: Some(config.limits.max_message_size as u64),
                max_frame_size: Some(config.limits.max_frame_size as u64),
                max_inbound_rate: None,
                server_id: Some(config.server_id.clone()),
            }),
            error,
            ..ProtocolMessage::new(Action::Connected)
        }
    }

    /// Decides, for a newly accepted credential, whether the broker asks for a new token
    /// before it expires (§4.7). Only a token that outlives the renewal lead is asked for
    /// early. One that expires sooner (a short-lived token, or a cached JWT no newer than the
    /// last) is not: a server AUTH would fail a client that cannot renew (40171), and asking
    /// again at once would loop until expiry. Such a connection is DISCONNECTED with 40142 at
    /// expiry instead, which a client that can renew answers with a new token and a resume.
    pub fn plan_renewal(&mut self) {
        let lead = self.broker.config.connection.token_renewal_lead_ms as i64;
        self.renewal_requested = self
            .authority
            .expires_at
            .is_some_and(|e| e <= now_ms() + lead);
    }

    /// Ends the connection if its credential lapsed while it was being registered: a token
    /// revoked meanwhile gets DISCONNECTED 40141 (a client that can renew comes back with a
    /// new token), a user deleted meanwhile is evicted with ERROR 40300 (see
    /// [`revocation::lapsed`]).
    pub async fn end_if_lapsed(&mut self) {
        let users = self.broker.auth0.as_ref().map(|plugin| plugin.users());
        match revocation::lapsed(&self.broker.revocations, users, &self.authority).await {
            None => return,
            Some(Lapsed::Revoked) => self.outbox.close(Some(ProtocolMessage {
                error: Some(ErrorInfo::new(codes::TOKEN_REVOKED, "Token revoked")),
                ..ProtocolMessage::new(Action::Disconnected)
            })),
            Some(Lapsed::Deleted) => {
                if let Some(user) = self.authority.identity.reported.clone() {
                    revocation::evict_user(&self.broker.sessions, &self.broker.channels, &user)
                        .await;
                }
            }
        }
        self.ending = Some(Ending::Resumable);
    }

    /// Queues a frame; a full or closed outbox ends the connection on its own.
    pub fn send(&self, message: &ProtocolMessage) {
        let _ = self.outbox.push(message);
    }

    /// Queues an already-decided outcome (a NACK for an invalid publish, a re-ACK) in
    /// msgSerial order with the pending ones.
    pub fn answer(&mut self, msg_serial: u64, outcome: PublishOutcome) {
        self.pending
            .push_back(Box::pin(std::future::ready((msg_serial, outcome))));
    }

    /// Sends a fatal connection ERROR and ends the connection (§4.5).
    pub fn fail(&mut self, error: ErrorInfo) {
        self.outbox.finish_with(&ProtocolMessage {
            error: Some(error),
            ..ProtocolMessage::new(Action::Error)
        });
        self.ending = Some(Ending::Resumable);
    }
}
