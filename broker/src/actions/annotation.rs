//! ANNOTATION (action 21; RTAN1–4, `../shared/ably-chat.md` §4, §5.6): a client annotates
//! messages of a channel (a reaction, a flag). Like a publish: de-duplicate a resent msgSerial
//! (§4.6), let the channel service check the capability, the ANNOTATION_PUBLISH mode and each
//! annotation, and queue them on the channel's sequencer, which checks that the annotated
//! message exists, stores them and sends the summaries; the ACK or NACK goes in msgSerial
//! order once they are durable (§7.3).

use protocol::error::codes;
use protocol::{ErrorInfo, ProtocolMessage};

use super::message::refuse;
use super::{new_msg_serial, track};
use crate::channel::service::Publisher;
use crate::connection::state::Connection;
use crate::store::push_decimal;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let items = message.annotations.as_ref().map_or(0, Vec::len);
    let Some(msg_serial) = new_msg_serial(conn, &message, items) else {
        return;
    };
    let mut pm_id = String::with_capacity(conn.connection_id.len() + 12);
    pm_id.push_str(&conn.connection_id);
    pm_id.push(':');
    push_decimal(&mut pm_id, msg_serial, 0);
    let Some(channel) = message.channel else {
        let error = ErrorInfo::new(codes::BAD_REQUEST, "ANNOTATION without a channel");
        return refuse(conn, msg_serial, error);
    };
    let publisher = Publisher {
        identity: &conn.authority.identity,
        capability: &conn.authority.capability,
        attached_modes: conn.attached.get(&channel).copied(),
        connection_id: Some(conn.connection_id.clone()),
        id_base: pm_id,
    };
    let annotations = message.annotations.unwrap_or_default();
    let checked = conn
        .broker
        .channels
        .check_annotations(channel, annotations, publisher);
    match checked {
        Ok(publish) => {
            let reply = track(conn, msg_serial);
            conn.broker.channels.publish(publish, reply).await;
        }
        Err(e) => refuse(conn, msg_serial, e),
    }
}
