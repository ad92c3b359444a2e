//! DETACH (§5.3): stop delivering the channel to this socket, remove the connection's presence
//! members there at once (§6.6), and reply DETACHED. The reply goes through the channel's
//! sequencer so no MESSAGE follows it.

use protocol::{Action, ProtocolMessage};

use crate::channel::Command;
use crate::connection::state::Connection;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let Some(channel) = message.channel else {
        return;
    };
    if conn.attached.remove(&channel).is_none() {
        conn.send(&ProtocolMessage::for_channel(Action::Detached, channel));
        return;
    }
    conn.broker.metrics.attached_channels.dec();
    let command = Command::Detach {
        connection_id: conn.connection_id.clone(),
        socket_id: conn.socket_id,
        reply: Some(conn.outbox.clone()),
        leave_presence: true,
    };
    if conn.broker.channels.send(&channel, command).await.is_err() {
        conn.send(&ProtocolMessage::for_channel(Action::Detached, channel));
    }
}
