//! SYNC from a client (RTP19, §6.4): a request for a fresh presence sync of a channel this
//! socket has attached with presence-subscribe. The channel's sequencer sends the whole set as
//! SYNC pages through the socket's outbox, ordered with its live presence events. A SYNC for a
//! channel not attached so is ignored: failing the channel over it would help nobody.

use protocol::{flags, ProtocolMessage};

use super::channel_error;
use crate::channel::Command;
use crate::connection::state::Connection;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let Some(channel) = message.channel else {
        tracing::debug!("SYNC without a channel ignored");
        return;
    };
    let receives_presence = conn
        .attached
        .get(&channel)
        .is_some_and(|modes| modes & flags::MODE_PRESENCE_SUBSCRIBE != 0);
    if !receives_presence {
        tracing::debug!(%channel, "SYNC for a channel not attached with presence_subscribe ignored");
        return;
    }
    let command = Command::SyncPresence {
        connection_id: conn.connection_id.clone(),
        socket_id: conn.socket_id,
    };
    if let Err(e) = conn.broker.channels.send(&channel, command).await {
        channel_error(conn, &channel, e);
    }
}
