//! HEARTBEAT from the client: a `ping()` carries an `id` that must be echoed (§4.4).

use protocol::{Action, ProtocolMessage};

use crate::connection::state::Connection;

pub(super) fn apply(conn: &mut Connection, message: ProtocolMessage) {
    if let Some(id) = message.id {
        conn.send(&ProtocolMessage {
            id: Some(id),
            ..ProtocolMessage::new(Action::Heartbeat)
        });
    }
}
