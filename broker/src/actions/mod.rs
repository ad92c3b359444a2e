//! One file per protocol action a client may send, each validating, applying and replying;
//! [`dispatch`] routes a decoded ProtocolMessage to it. Nothing here panics on client input:
//! an invalid frame gets the most precise Ably error the protocol allows (a NACK for a
//! publish, a channel ERROR for a channel action, a connection ERROR otherwise).

mod annotation;
mod attach;
mod auth;
mod close;
mod detach;
mod heartbeat;
mod message;
mod presence;
mod sync;

use std::sync::Arc;

use protocol::error::codes;
use protocol::{Action, DecodeError, ErrorInfo, Format, ProtocolMessage};

use crate::channel::service::outcome_of;
use crate::channel::{Command, Reply};
use crate::connection::ledger::Seen;
use crate::connection::state::{Connection, Ending};

/// Applies one ProtocolMessage from the client.
pub async fn dispatch(conn: &mut Connection, message: ProtocolMessage) {
    match message.action {
        Action::Heartbeat => heartbeat::apply(conn, message),
        Action::Attach => attach::apply(conn, message).await,
        Action::Detach => detach::apply(conn, message).await,
        Action::Message => message::apply(conn, message).await,
        Action::Annotation => annotation::apply(conn, message).await,
        Action::Auth => auth::apply(conn, message).await,
        Action::Close => close::apply(conn),
        Action::Disconnect => {
            // §4.5: the client drops this transport but keeps its connection for resume.
            conn.outbox.close(None);
            conn.ending = Some(Ending::Resumable);
        }
        Action::Presence => presence::apply(conn, message).await,
        Action::Sync => sync::apply(conn, message).await,
        // ACTIVATE is ignored by design.
        Action::Activate => {}
        other => unsupported(conn, &message, other),
    }
}

/// Answers an action the broker does not handle: NACK when it carries a msgSerial (so the
/// client's operation does not hang), a channel ERROR when it names a channel, else nothing.
fn unsupported(conn: &mut Connection, message: &ProtocolMessage, action: Action) {
    let error = ErrorInfo::new(
        codes::BAD_REQUEST,
        format!("action {} is not supported by this broker", action.code()),
    );
    if let Some(msg_serial) = message.msg_serial {
        message::refuse(conn, msg_serial, error);
    } else if let Some(channel) = &message.channel {
        channel_error(conn, channel, error);
    } else {
        tracing::debug!(action = action.code(), "unsupported action ignored");
    }
}

/// Answers a frame that did not decode, as precisely as what can be salvaged from it allows.
pub fn undecodable(conn: &mut Connection, format: Format, bytes: &[u8], error: &DecodeError) {
    let salvage = protocol::salvage(format, bytes).unwrap_or_default();
    let error = ErrorInfo::new(
        codes::BAD_REQUEST,
        format!("invalid protocol message: {error}"),
    );
    match (salvage.msg_serial, salvage.channel) {
        (Some(msg_serial), _) => message::refuse(conn, msg_serial, error),
        (None, Some(channel)) => channel_error(conn, &channel, error),
        (None, None) => conn.fail(error),
    }
}

/// The msgSerial of a new MESSAGE or PRESENCE. `None` when the frame is already answered: one
/// without a msgSerial fails the connection, and a msgSerial processed before gets the same
/// answer again without being applied twice (§4.6).
fn new_msg_serial(conn: &mut Connection, message: &ProtocolMessage, items: usize) -> Option<u64> {
    let Some(msg_serial) = message.msg_serial else {
        conn.fail(ErrorInfo::new(
            codes::BAD_REQUEST,
            format!("action {} without msgSerial", message.action.code()),
        ));
        return None;
    };
    match conn.session.seen(msg_serial) {
        Seen::New => Some(msg_serial),
        Seen::Waiting => {
            let session = conn.session.clone();
            conn.pending.push_back(Box::pin(async move {
                (msg_serial, session.outcome(msg_serial, items).await)
            }));
            None
        }
        Seen::Answered(outcome) => {
            conn.answer(msg_serial, outcome);
            None
        }
        Seen::Forgotten => {
            conn.answer(msg_serial, Ok(vec![None; items]));
            None
        }
    }
}

/// Records a new msgSerial and queues its ACK/NACK in order; the returned reply is where the
/// channel's sequencer reports the outcome (dropping it unsent NACKs with 50001). The reply
/// writes the outcome into the connection's ledger before this socket sees it, so a resend on
/// a socket that resumed the connection gets the same answer even if this one is gone.
fn track(conn: &mut Connection, msg_serial: u64) -> Reply {
    let (reply, outcome) = Reply::new();
    // Weak: a reply held by a channel must not keep a closed connection's session.
    let session = Arc::downgrade(&conn.session);
    conn.session.record(msg_serial);
    conn.pending.push_back(Box::pin(
        async move { (msg_serial, outcome_of(outcome).await) },
    ));
    reply.keeping(move |outcome| {
        if let Some(session) = session.upgrade() {
            session.settle(msg_serial, outcome);
        }
    })
}

/// Fails one channel (§5.7): ERROR with `channel`. The connection stays up; the channel stops
/// receiving.
pub fn channel_error(conn: &mut Connection, channel: &str, error: ErrorInfo) {
    if conn.attached.remove(channel).is_some() {
        conn.broker.metrics.attached_channels.dec();
        let command = Command::Detach {
            connection_id: conn.connection_id.clone(),
            socket_id: conn.socket_id,
            reply: None,
            leave_presence: true,
        };
        let channels = conn.broker.channels.clone();
        let name = channel.to_owned();
        tokio::spawn(async move {
            let _ = channels.send(&name, command).await;
        });
    }
    conn.send(&ProtocolMessage {
        error: Some(error),
        ..ProtocolMessage::for_channel(Action::Error, channel)
    });
}
