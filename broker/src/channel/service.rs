//! The channel service: what the realtime actions and REST both ask of a channel — publish,
//! the presence set, history, occupancy — as methods on [`Channels`]. Each checks the channel
//! name and the caller's capability here, once, and a publish goes through every check of
//! §7 (attach modes, no updates, no server-set fields, clientId, size, ids) before it reaches
//! the channel's sequencer. REST reaches channels only through these methods; the realtime
//! actions keep what only a connection has (msgSerial ledger, ACK order, attachments).

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::TryFutureExt;
use protocol::error::codes;
use protocol::{flags, Capability, ErrorInfo, Message, Operation, PresenceMessage};
use tokio::sync::oneshot;

use super::{
    validate_name, Channels, Command, ListPresence, Occupancy, Origin, Publish, PublishOutcome,
    Reply,
};
use crate::auth::Identity;
use crate::store::{parse_serial, push_decimal, Query};

pub use crate::store::Direction;

/// Who publishes, as far as the checks of a publish need to know.
pub struct Publisher<'a> {
    /// Whose messages they are (§8.6).
    pub identity: &'a Identity,
    /// What the credential allows.
    pub capability: &'a Capability,
    /// The modes of the publisher's attachment to the channel, when it has one (§8.8).
    pub attached_modes: Option<u64>,
    /// The connectionId of the realtime connection the messages are published as: the
    /// publishing connection, or the one a REST publish names by `connectionKey`.
    pub connection_id: Option<Arc<str>>,
    /// The base of the ids of messages the app gave none (`<base>:<index>`), and the
    /// ProtocolMessage id the subscribers see: `<connectionId>:<msgSerial>` on realtime.
    pub id_base: String,
}

/// A publish that passed every check, stamped and ready for the channel's sequencer.
pub struct CheckedPublish {
    channel: String,
    messages: Vec<Message>,
    app_ids: bool,
    origin: Option<Origin>,
}

/// Which log a history request reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryLog {
    /// `GET /channels/{name}/messages`.
    Messages,
    /// `GET /channels/{name}/presence/history`.
    Presence,
}

/// A page of history (§9.2): the filter and where the page starts.
#[derive(Clone, Debug)]
pub struct HistoryRequest {
    /// Which log.
    pub log: HistoryLog,
    /// Only entries at or after this time (ms).
    pub start: Option<i64>,
    /// Only entries at or before this time (ms).
    pub end: Option<i64>,
    /// Newest first (backwards) or oldest first.
    pub direction: Direction,
    /// Most entries returned.
    pub limit: usize,
    /// `untilAttach`: only messages up to this channelSerial, when it is of the current epoch.
    pub until_serial: Option<String>,
    /// Where a later page starts: the serial the previous page stopped short of.
    pub cursor: Option<u64>,
}

/// A page request over the presence set, in (clientId, connectionId) order.
#[derive(Clone, Debug, Default)]
pub struct PresenceQuery {
    /// Start after this (clientId, connectionId).
    pub after: Option<(String, String)>,
    /// Only this clientId.
    pub client_id: Option<String>,
    /// Only this connectionId.
    pub connection_id: Option<String>,
    /// Most members returned.
    pub limit: usize,
}

impl Channels {
    /// Checks that `channel` is a valid name and `capability` allows `operation` on it (40010,
    /// 40160); `what` names the operation in the refusal.
    pub fn permit(
        &self,
        channel: &str,
        capability: &Capability,
        operation: Operation,
        what: &str,
    ) -> Result<(), ErrorInfo> {
        validate_name(channel, self.context().max_channel_name_length)?;
        if !capability.allows(channel, operation) {
            return Err(ErrorInfo::new(
                codes::CAPABILITY_DENIED,
                format!("Unable to {what}: no {what} capability on channel {channel}"),
            ));
        }
        Ok(())
    }

    /// Every check of a publish, realtime or REST: the name, the publish capability, the modes
    /// of the publisher's attachment (§8.8), at least one message, and then each message
    /// stamped by [`stamp`].
    pub fn check_publish(
        &self,
        channel: String,
        mut messages: Vec<Message>,
        publisher: Publisher<'_>,
    ) -> Result<CheckedPublish, ErrorInfo> {
        self.permit(
            &channel,
            publisher.capability,
            Operation::Publish,
            "publish",
        )?;
        // §8.8: an attachment publishes only in the modes it was granted (ably-js `modes`); a
        // channel the publisher has not attached publishes by capability alone (RTL6c).
        if publisher
            .attached_modes
            .is_some_and(|modes| modes & flags::MODE_PUBLISH == 0)
        {
            return Err(mode_not_attached(&channel, "publish"));
        }
        if messages.is_empty() {
            return Err(ErrorInfo::new(codes::BAD_REQUEST, "no messages to publish"));
        }
        let app_ids = stamp(
            &mut messages,
            publisher.identity,
            publisher.connection_id.as_deref(),
            &publisher.id_base,
            self.context().max_message_size,
        )?;
        let origin = publisher.connection_id.map(|connection_id| Origin {
            connection_id,
            pm_id: publisher.id_base,
        });
        Ok(CheckedPublish {
            channel,
            messages,
            app_ids,
            origin,
        })
    }

    /// Hands a checked publish to its channel's sequencer; the outcome goes to `reply` (also
    /// when the channel refuses it, e.g. 50300 during shutdown).
    pub async fn publish(self: &Arc<Self>, publish: CheckedPublish, reply: Reply) {
        let CheckedPublish {
            channel,
            messages,
            app_ids,
            origin,
        } = publish;
        let command = Command::Publish(Publish {
            messages,
            origin,
            app_ids,
            received: Instant::now(),
            reply,
        });
        let _ = self.send(&channel, command).await;
    }

    /// [`Channels::publish`], waiting for the outcome: a serial per message once durable.
    pub async fn publish_and_wait(self: &Arc<Self>, publish: CheckedPublish) -> PublishOutcome {
        let (reply, outcome) = Reply::new();
        self.publish(publish, reply).await;
        outcome_of(outcome).await
    }

    /// Why an update, delete or append of a message (ably-js REST `updateMessage()` and
    /// friends) is refused: 93002 once the caller is known to be allowed to publish on
    /// `channel`, until mutable messages exist.
    pub fn refuse_update(&self, channel: &str, capability: &Capability) -> ErrorInfo {
        match self.permit(channel, capability, Operation::Publish, "publish") {
            Err(e) => e,
            Ok(()) => updates_not_enabled("update of a published message"),
        }
    }

    /// A page of the channel's history or presence history, for a caller with the `history`
    /// capability. Serials are returned with the entries so the caller can page on.
    pub async fn history(
        &self,
        channel: &str,
        capability: &Capability,
        request: &HistoryRequest,
    ) -> Result<Vec<(u64, Message)>, ErrorInfo> {
        self.permit(channel, capability, Operation::History, "history")?;
        let epoch = self.context().backend.epoch(channel).to_owned();
        let mut to = u64::MAX;
        if let Some((serial_epoch, serial)) = request.until_serial.as_deref().and_then(parse_serial)
        {
            // `untilAttach`: only messages up to the attach point.
            if serial_epoch == epoch && request.log == HistoryLog::Messages {
                to = serial;
            }
        }
        let mut from = 0;
        match (request.cursor, request.direction) {
            (Some(c), Direction::Backwards) => to = to.min(c),
            (Some(c), Direction::Forwards) => from = c,
            (None, _) => {}
        }
        let query = Query {
            from,
            to,
            start_ms: request.start,
            end_ms: request.end,
            direction: request.direction,
            limit: request.limit,
        };
        let name = channel.to_owned();
        let context = self.context().clone();
        let log = request.log;
        tokio::task::spawn_blocking(move || match log {
            HistoryLog::Messages => context.backend.read(&name, &query),
            HistoryLog::Presence => context.backend.read_presence(&name, &query),
        })
        .await
        .map_err(|_| ErrorInfo::new(codes::INTERNAL, "history read failed"))?
        .map_err(ErrorInfo::from)
    }

    /// The channel's present members (`present` items), for a caller with the `subscribe`
    /// capability.
    pub async fn presence_members(
        self: &Arc<Self>,
        channel: &str,
        capability: &Capability,
        query: PresenceQuery,
    ) -> Result<Vec<PresenceMessage>, ErrorInfo> {
        self.permit(channel, capability, Operation::Subscribe, "subscribe")?;
        let (reply, answer) = oneshot::channel();
        let list = ListPresence {
            after: query.after,
            client_id: query.client_id,
            connection_id: query.connection_id,
            limit: query.limit,
            reply,
        };
        self.send(channel, Command::ListPresence(list)).await?;
        answer.await.map_err(|_| channel_stopped())
    }

    /// Makes connection `connection_id`'s presence members leave on each of `channels` at once
    /// (§6.6): the one way every path that ends a connection's membership (CLOSE, the grace
    /// period after a drop, a deleted user) does it. A channel where it has no member ignores
    /// the command.
    pub async fn leave_everywhere(
        self: &Arc<Self>,
        connection_id: &Arc<str>,
        channels: impl IntoIterator<Item = impl AsRef<str>>,
    ) {
        for channel in channels {
            let command = Command::LeaveConnection {
                connection_id: connection_id.clone(),
            };
            let _ = self.send(channel.as_ref(), command).await;
        }
    }

    /// Who is on the channel, for a caller with the `channel-metadata` capability.
    pub async fn occupancy(
        self: &Arc<Self>,
        channel: &str,
        capability: &Capability,
    ) -> Result<Occupancy, ErrorInfo> {
        self.permit(
            channel,
            capability,
            Operation::ChannelMetadata,
            "channel-metadata",
        )?;
        self.occupancy_here(channel).await
    }

    /// Who is on the channel on this node, with no capability check: for another node of the
    /// cluster that adds it up (`cluster.rs`). A channel not running here has no one attached
    /// here, and is not started to say so.
    pub async fn attachers_here(self: &Arc<Self>, channel: &str) -> Occupancy {
        if !self.is_running(channel) {
            return Occupancy::default();
        }
        self.occupancy_here(channel).await.unwrap_or_default()
    }

    async fn occupancy_here(self: &Arc<Self>, channel: &str) -> Result<Occupancy, ErrorInfo> {
        let (reply, answer) = oneshot::channel();
        self.send(channel, Command::Occupancy { reply }).await?;
        answer.await.map_err(|_| channel_stopped())
    }
}

fn channel_stopped() -> ErrorInfo {
    ErrorInfo::new(codes::INTERNAL_CHANNEL, "channel stopped")
}

/// Turns a channel's publish reply into the outcome the publisher awaits; a channel that
/// stopped without answering NACKs with 50001.
pub fn outcome_of(reply: oneshot::Receiver<PublishOutcome>) -> BoxFuture<'static, PublishOutcome> {
    Box::pin(reply.unwrap_or_else(|_| Err(stopped_before_storing())))
}

/// The answer to a publish whose channel stopped without storing it: 50001.
pub fn stopped_before_storing() -> ErrorInfo {
    ErrorInfo::new(
        codes::INTERNAL_CHANNEL,
        "channel stopped before storing the message",
    )
}

/// The refusal of an operation outside the modes an attachment was granted (§8.8): 40160, as
/// Ably answers it.
pub fn mode_not_attached(channel: &str, mode: &str) -> ErrorInfo {
    ErrorInfo::new(
        codes::CAPABILITY_DENIED,
        format!(
            "Unable to {mode} on channel {channel}: the {mode} mode was not requested when attaching"
        ),
    )
}

/// Validates and stamps messages from any publisher (realtime or REST): only new messages
/// (no updates, deletes or appends), no server-set fields, canonical data, clientId per §8.6,
/// size per §7.5, and an id (`<base>:<index>`) where the app set none. Returns whether the
/// app set any ids (idempotent publishing).
pub fn stamp(
    messages: &mut [Message],
    identity: &Identity,
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
        format!(
            "message updates are not enabled on this broker ({what}); publish a new message instead"
        ),
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
