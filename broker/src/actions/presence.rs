//! PRESENCE from a client (§6.2, §6.3): enter, update and leave, including `enterClient` and
//! friends on wildcard or key connections. Checks the `presence` capability, that the channel
//! is attached in a mode that allows presence, the clientId rules and the size limit; strips
//! server-set extras and sets `userClaim` from the token (`../shared/ably-chat.md` §5.10);
//! stamps each item with its clientId,
//! connectionId, id (`<connId>:<msgSerial>:<index>`, or the client's own on an automatic
//! re-enter) and timestamp; and lets the channel's sequencer apply and broadcast it. The ACK
//! or NACK goes out in msgSerial order with publishes.

use protocol::error::codes;
use protocol::{flags, ErrorInfo, Operation, PresenceAction, PresenceMessage, ProtocolMessage};

use super::message::refuse;
use super::{new_msg_serial, track};
use crate::auth::now_ms;
use crate::channel::service::{mode_not_attached, set_user_claim, strip_server_fields};
use crate::channel::{Command, Origin, PresenceOp};
use crate::connection::state::Connection;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let items = message.presence.as_ref().map_or(0, Vec::len);
    let Some(msg_serial) = new_msg_serial(conn, &message, items) else {
        return;
    };
    let (channel, items) = match prepare(conn, message, msg_serial) {
        Ok(prepared) => prepared,
        Err(e) => return refuse(conn, msg_serial, e),
    };
    let op = PresenceOp {
        items,
        origin: Origin {
            connection_id: conn.connection_id.clone(),
            pm_id: format!("{}:{msg_serial}", conn.connection_id),
        },
        reply: track(conn, msg_serial),
    };
    conn.session.used_presence(&channel);
    let _ = conn
        .broker
        .channels
        .send(&channel, Command::Presence(op))
        .await;
}

fn prepare(
    conn: &Connection,
    message: ProtocolMessage,
    msg_serial: u64,
) -> Result<(String, Vec<PresenceMessage>), ErrorInfo> {
    let channel = message
        .channel
        .ok_or_else(|| ErrorInfo::new(codes::BAD_REQUEST, "PRESENCE without a channel"))?;
    if !conn
        .authority
        .capability
        .allows(&channel, Operation::Presence)
    {
        return Err(ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            format!("Unable to enter presence: no presence capability on channel {channel}"),
        ));
    }
    let Some(modes) = conn.attached.get(&channel) else {
        return Err(ErrorInfo::new(
            codes::CHANNEL_STATE,
            format!("attach channel {channel} before using presence on it"),
        ));
    };
    if modes & flags::MODE_PRESENCE == 0 {
        return Err(mode_not_attached(&channel, "presence"));
    }
    let mut items = message.presence.unwrap_or_default();
    if items.is_empty() {
        return Err(ErrorInfo::new(
            codes::BAD_REQUEST,
            "PRESENCE without presence items",
        ));
    }
    let identity = &conn.authority.identity;
    let now = now_ms();
    let mut size = 0;
    for (index, item) in items.iter_mut().enumerate() {
        if !matches!(
            item.action,
            PresenceAction::Enter | PresenceAction::Update | PresenceAction::Leave
        ) {
            return Err(ErrorInfo::new(
                codes::BAD_REQUEST,
                format!(
                    "presence action {} cannot be sent by a client",
                    item.action.code()
                ),
            ));
        }
        let client_id = identity
            .message_client_id(item.client_id.as_deref())?
            .filter(|c| c != "*")
            .ok_or_else(|| {
                ErrorInfo::new(
                    codes::PRESENCE_NEEDS_CLIENT_ID,
                    "Cannot enter presence without a clientId",
                )
            })?;
        strip_server_fields(&mut item.extras);
        normalise(item)?;
        // As for messages (§7.5), only a clientId the client sent counts.
        size += item.client_id.as_ref().map_or(0, String::len)
            + item.data.as_ref().map_or(0, protocol::Data::len)
            + item
                .extras
                .as_ref()
                .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()));
        // An automatic re-enter after a resume carries its old id (§6.7); keep it when it is
        // one of this connection's, so the client sees the member as not newer.
        let own_id = item
            .id
            .as_deref()
            .is_some_and(|id| id.starts_with(&format!("{}:", conn.connection_id)));
        if !own_id {
            item.id = Some(format!("{}:{msg_serial}:{index}", conn.connection_id));
        }
        // Server-set, so not counted in the size: the member's claim for this channel.
        set_user_claim(&mut item.extras, identity.user_claim(&channel));
        item.client_id = Some(client_id);
        item.connection_id = Some(conn.connection_id.to_string());
        item.timestamp = Some(now);
    }
    let max = conn.broker.config.limits.max_message_size;
    if size > max {
        return Err(ErrorInfo::new(
            codes::MESSAGE_TOO_LARGE,
            format!("presence data size {size} exceeds maxMessageSize {max}"),
        ));
    }
    Ok((channel, items))
}

/// Presence data follows the same encoding rules as message data (§7.5).
fn normalise(item: &mut PresenceMessage) -> Result<(), ErrorInfo> {
    let mut carrier = protocol::Message {
        data: item.data.take(),
        encoding: item.encoding.take(),
        ..Default::default()
    };
    carrier.normalise_data()?;
    item.data = carrier.data;
    item.encoding = carrier.encoding;
    Ok(())
}
