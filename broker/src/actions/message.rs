//! MESSAGE (§7): publish. De-duplicate a resent msgSerial (§4.6), check capability, clientId
//! and size, bring data to its canonical encoding (§7.5), stamp ids and the connectionId, and
//! queue the publish on the channel's sequencer. The ACK or NACK is sent in msgSerial order
//! when the sequencer reports the messages durable (§7.3).

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use protocol::error::codes;
use protocol::{flags, ErrorInfo, Message, Operation, ProtocolMessage};

use super::{mode_not_attached, new_msg_serial, track};
use crate::channel::{validate_name, Command, Origin, Publish};
use crate::connection::session::Seen;
use crate::connection::state::Connection;
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
    let (channel, messages, app_ids) = match prepare(conn, message, &pm_id) {
        Ok(prepared) => prepared,
        Err(e) => return refuse(conn, msg_serial, e),
    };
    let publish = Publish {
        messages,
        origin: Some(Origin {
            connection_id: conn.connection_id.clone(),
            pm_id,
        }),
        app_ids,
        received: Instant::now(),
        reply: track(conn, msg_serial),
    };
    // A failed send drops the reply sender, which NACKs the publish.
    let _ = conn
        .broker
        .channels
        .send(&channel, Command::Publish(publish))
        .await;
}

/// NACKs `msg_serial` with `error`, remembering it so a resend gets the same answer.
pub(super) fn refuse(conn: &mut Connection, msg_serial: u64, error: ErrorInfo) {
    if !matches!(conn.session.seen(msg_serial), Seen::New) {
        conn.answer(msg_serial, Err(error));
        return;
    }
    let outcome = futures_util::future::ready(Err(error)).boxed().shared();
    conn.session.record(msg_serial, outcome.clone());
    conn.pending
        .push_back(Box::pin(async move { (msg_serial, outcome.await) }));
}

fn prepare(
    conn: &Connection,
    message: ProtocolMessage,
    pm_id: &str,
) -> Result<(String, Vec<Message>, bool), ErrorInfo> {
    let limits = &conn.broker.config.limits;
    let channel = message
        .channel
        .ok_or_else(|| ErrorInfo::new(codes::BAD_REQUEST, "MESSAGE without a channel"))?;
    validate_name(&channel, limits.max_channel_name_length)?;
    if !conn
        .authority
        .capability
        .allows(&channel, Operation::Publish)
    {
        return Err(ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            format!("Unable to publish: no publish capability on channel {channel}"),
        ));
    }
    // §8.8: an attachment publishes only in the modes it was granted (ably-js `modes`); a
    // channel this socket has not attached publishes by capability alone (RTL6c).
    if conn
        .attached
        .get(&channel)
        .is_some_and(|modes| modes & flags::MODE_PUBLISH == 0)
    {
        return Err(mode_not_attached(&channel, "publish"));
    }
    let mut messages = message.messages.unwrap_or_default();
    if messages.is_empty() {
        return Err(ErrorInfo::new(
            codes::BAD_REQUEST,
            "MESSAGE without messages",
        ));
    }
    let connection_id: Arc<str> = conn.connection_id.clone();
    let app_ids = stamp(
        &mut messages,
        &conn.authority.identity,
        Some(&connection_id),
        pm_id,
        limits.max_message_size,
    )?;
    Ok((channel, messages, app_ids))
}

/// Validates and stamps messages from any publisher (realtime or REST): only new messages
/// (no updates, deletes or appends), no server-set fields, canonical data, clientId per §8.6,
/// size per §7.5, and an id (`<base>:<index>`) where the app set none. Returns whether the
/// app set any ids (idempotent publishing).
pub fn stamp(
    messages: &mut [Message],
    identity: &crate::auth::Identity,
    connection_id: Option<&str>,
    id_base: &str,
    max_size: usize,
) -> Result<bool, ErrorInfo> {
    let mut size = 0;
    let mut app_ids = false;
    for (index, m) in messages.iter_mut().enumerate() {
        refuse_mutation(m)?;
        strip_server_fields(&mut m.extras);
        m.normalise_data()?;
        // §7.5 counts what the client sent; the clientId the broker fills in is not counted.
        size += m.size();
        m.client_id = identity.message_client_id(m.client_id.as_deref())?;
        match &m.id {
            Some(id) if !id.is_empty() => app_ids = true,
            _ => {
                let mut id = String::with_capacity(id_base.len() + 4);
                id.push_str(id_base);
                id.push(':');
                push_decimal(&mut id, index as u64, 0);
                m.id = Some(id);
            }
        }
        m.connection_id = connection_id.map(str::to_owned);
        m.connection_key = None;
        m.serial = None;
        m.timestamp = None;
    }
    if size > max_size {
        return Err(ErrorInfo::new(
            codes::MESSAGE_TOO_LARGE,
            format!("message size {size} exceeds maxMessageSize {max_size}"),
        ));
    }
    Ok(app_ids)
}

/// Refuses an update, delete or append (`action` 1, 2 or 5 with the original's `serial`, as
/// ably-js `updateMessage()`, `deleteMessage()` and `appendMessage()` send them,
/// `../shared/ably-chat.md` §2): mutable messages do not exist yet, and storing one as a new
/// message would deliver an edit as a duplicate. Only an absent action or 0 (create) passes.
fn refuse_mutation(message: &Message) -> Result<(), ErrorInfo> {
    match message.action {
        None | Some(0) => Ok(()),
        Some(action) => Err(updates_not_enabled(&format!("message action {action}"))),
    }
}

/// 93002: message updates, deletes and appends are not enabled (`what` says which request).
pub fn updates_not_enabled(what: &str) -> ErrorInfo {
    ErrorInfo::new(
        codes::MESSAGE_UPDATES_DISABLED,
        format!("message updates are not enabled on this broker ({what}); publish a new message instead"),
    )
}

/// Removes what only the server may set from a client's `extras`: `userClaim`, which
/// `@ably/chat` shows as a trusted, server-set value (CHA-M2h, `../shared/ably-chat.md`
/// §5.10). Everything else (`headers`, `ref`, `push`, `ephemeral`…) is the app's and stays.
pub fn strip_server_fields(extras: &mut Option<serde_json::Value>) {
    if let Some(serde_json::Value::Object(map)) = extras {
        if map.remove("userClaim").is_some() && map.is_empty() {
            *extras = None;
        }
    }
}
