//! One file per protocol action a client may send, each validating, applying and replying;
//! [`dispatch`] routes a decoded ProtocolMessage to it. Nothing here panics on client input:
//! an invalid frame gets the most precise Ably error the protocol allows (a NACK for a
//! publish, a channel ERROR for a channel action, a connection ERROR otherwise).

mod attach;
mod auth;
mod close;
mod detach;
mod heartbeat;
mod message;
mod presence;

pub use message::stamp;

use protocol::error::codes;
use protocol::{Action, DecodeError, ErrorInfo, Format, ProtocolMessage};

use crate::channel::Command;
use crate::connection::{Connection, Ending};

/// Applies one ProtocolMessage from the client.
pub async fn dispatch(conn: &mut Connection, message: ProtocolMessage) {
    match message.action {
        Action::Heartbeat => heartbeat::apply(conn, message),
        Action::Attach => attach::apply(conn, message).await,
        Action::Detach => detach::apply(conn, message).await,
        Action::Message => message::apply(conn, message).await,
        Action::Auth => auth::apply(conn, message).await,
        Action::Close => close::apply(conn),
        Action::Disconnect => {
            // §4.5: the client drops this transport but keeps its connection for resume.
            conn.outbox.close(None);
            conn.ending = Some(Ending::Resumable);
        }
        Action::Presence => presence::apply(conn, message).await,
        // A client SYNC may be ignored (§6.4); ACTIVATE is ignored by design.
        Action::Sync | Action::Activate => {}
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
