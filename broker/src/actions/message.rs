//! MESSAGE (§7): publish. De-duplicate a resent msgSerial (§4.6), then let the channel service
//! (`channel/service.rs`) check and stamp the messages — capability, attach modes, clientId,
//! size, canonical data (§7.5), ids and the connectionId — and queue them on the channel's
//! sequencer. With the moderation hook on, a reviewed publish waits for its verdict off the
//! read loop and takes its turn behind the connection's earlier publishes. The ACK or NACK is
//! sent in msgSerial order when the sequencer reports the messages durable (§7.3).

use std::sync::Arc;

use protocol::error::codes;
use protocol::{ErrorInfo, ProtocolMessage};

use super::{new_msg_serial, track};
use crate::channel::service::{CheckedPublish, Publisher};
use crate::channel::{Channels, Reply};
use crate::connection::ledger::Seen;
use crate::connection::session::Turn;
use crate::connection::state::Connection;
use crate::moderation::{Moderation, Source};
use crate::store::push_decimal;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let items = message.messages.as_ref().map_or(0, Vec::len);
    let Some(msg_serial) = new_msg_serial(conn, &message, items) else {
        return;
    };
    // `<connectionId>:<msgSerial>`: the ProtocolMessage's id, and the base of its messages'.
    let mut pm_id = String::with_capacity(conn.connection_id.len() + 12);
    pm_id.push_str(&conn.connection_id);
    pm_id.push(':');
    push_decimal(&mut pm_id, msg_serial, 0);
    let Some(channel) = message.channel else {
        let error = ErrorInfo::new(codes::BAD_REQUEST, "MESSAGE without a channel");
        return refuse(conn, msg_serial, error);
    };
    let publisher = Publisher {
        identity: &conn.authority.identity,
        capability: &conn.authority.capability,
        attached_modes: conn.attached.get(&channel).copied(),
        connection_id: Some(conn.connection_id.clone()),
        id_base: pm_id,
    };
    let messages = message.messages.unwrap_or_default();
    let checked = conn
        .broker
        .channels
        .check_publish(channel, messages, publisher);
    match checked {
        Ok(publish) => {
            let moderation = conn.broker.moderation.as_ref();
            let review = moderation.filter(|m| m.applies(&publish)).cloned();
            let turn = conn.session.publish_turn(review.is_some());
            let reply = track(conn, msg_serial);
            match turn {
                None => conn.broker.channels.publish(publish, reply).await,
                Some(turn) => {
                    let in_turn = InTurn {
                        channels: conn.broker.channels.clone(),
                        review,
                        client_id: conn.authority.identity.default.clone(),
                        turn,
                    };
                    tokio::spawn(in_turn.publish(publish, reply));
                }
            }
        }
        Err(e) => refuse(conn, msg_serial, e),
    }
}

/// A publish that waits for its turn: the moderation hook reviews it off the read loop, while
/// earlier publishes of the connection may still be under review, and it goes to its channel
/// only after them, so a channel stores a connection's publishes in msgSerial order however
/// long each review takes.
struct InTurn {
    channels: Arc<Channels>,
    review: Option<Arc<Moderation>>,
    client_id: Option<String>,
    turn: Turn,
}

impl InTurn {
    async fn publish(mut self, publish: CheckedPublish, reply: Reply) {
        let verdict = match &self.review {
            Some(moderation) => {
                let client_id = self.client_id.as_deref();
                moderation
                    .review(&publish, Source::Realtime, client_id)
                    .await
            }
            None => Ok(()),
        };
        self.turn.wait().await;
        match verdict {
            Ok(()) => self.channels.publish(publish, reply).await,
            Err(error) => reply.send(Err(error)),
        }
        // `self.turn` drops here: the connection's next publish may go.
    }
}

/// NACKs `msg_serial` with `error`, remembering it so a resend gets the same answer.
pub(super) fn refuse(conn: &mut Connection, msg_serial: u64, error: ErrorInfo) {
    if !matches!(conn.session.seen(msg_serial), Seen::New) {
        conn.answer(msg_serial, Err(error));
        return;
    }
    conn.session.record_refusal(msg_serial, error.clone());
    conn.answer(msg_serial, Err(error));
}
