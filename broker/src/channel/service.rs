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
use protocol::{flags, Annotation, Capability, ErrorInfo, Message, Operation, PresenceMessage};
use tokio::sync::oneshot;

use super::annotations;
use super::versions::{self, Rights};
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
    rights: Rights,
}

impl CheckedPublish {
    /// The channel published to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The messages as they will be stored: stamped with ids, clientIds and connectionId.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The connectionId the messages are published as, if any.
    pub fn connection_id(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| &*o.connection_id)
    }

    /// Gives the messages the ids `<base>:<index>` and makes them idempotent, as an app's own
    /// ids are (§7.3): within the backend's idempotency window, a publish with the same ids
    /// is answered with the first one's serials and neither stored nor broadcast again. The
    /// chat REST API's `idempotencyKey` (`../shared/ably-chat.md` §5.4) derives `base` from
    /// the key.
    pub fn make_idempotent(&mut self, base: &str) {
        for (index, m) in self.messages.iter_mut().enumerate() {
            let mut id = String::with_capacity(base.len() + 4);
            id.push_str(base);
            id.push(':');
            push_decimal(&mut id, index as u64, 0);
            m.id = Some(id);
        }
        self.app_ids = true;
    }
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
    /// Only messages of this name (the chat REST API lists `chat.message` only); presence
    /// history ignores it.
    pub name: Option<String>,
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
        // §5.10 of `../shared/ably-chat.md`: the publisher's claim on a new message. A change
        // keeps its author's claim, which `versions::apply` carries over.
        let claim = publisher.identity.user_claim(&channel);
        for m in messages.iter_mut().filter(|m| !m.is_version()) {
            set_user_claim(&mut m.extras, claim);
        }
        let origin = publisher.connection_id.map(|connection_id| Origin {
            connection_id,
            pm_id: publisher.id_base,
        });
        let may = |operation| publisher.capability.allows(&channel, operation);
        let rights = Rights {
            update_any: may(Operation::MessageUpdateAny),
            update_own: may(Operation::MessageUpdateOwn),
            delete_any: may(Operation::MessageDeleteAny),
            delete_own: may(Operation::MessageDeleteOwn),
        };
        Ok(CheckedPublish {
            channel,
            messages,
            app_ids,
            origin,
            rights,
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
            rights,
        } = publish;
        let command = Command::Publish(Publish {
            messages,
            origin,
            app_ids,
            rights,
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
        let only = request.name.clone();
        let clip = context.summary_clip;
        tokio::task::spawn_blocking(move || match log {
            HistoryLog::Messages => latest_versions(
                &|q| context.backend.read(&name, q),
                query,
                only.as_deref(),
                clip,
            ),
            HistoryLog::Presence => context.backend.read_presence(&name, &query),
        })
        .await
        .map_err(|_| ErrorInfo::new(codes::INTERNAL, "history read failed"))?
        .map_err(ErrorInfo::from)
    }

    /// Message `serial` of `channel` in its latest version (RSL11, `GET
    /// /channels/{c}/messages/{serial}`), for a caller with the `history` capability; 40400
    /// when the channel holds no message with that serial.
    pub async fn message(
        &self,
        channel: &str,
        capability: &Capability,
        serial: &str,
    ) -> Result<Message, ErrorInfo> {
        let all = self.message_versions(channel, capability, serial).await?;
        let mut latest = versions::latest_of(all);
        let summary = self.aggregate(channel, serial).await?;
        latest.annotations = Some(serde_json::json!({
            "summary": summary.summary(self.context().summary_clip)
        }));
        Ok(latest)
    }

    /// The annotations of message `serial` of `channel`, folded; 40400 when the channel holds
    /// no such message. No capability is asked: callers check theirs.
    pub async fn aggregate(
        &self,
        channel: &str,
        serial: &str,
    ) -> Result<annotations::Aggregate, ErrorInfo> {
        let seq = self.position_of(channel, serial)?;
        let (name, context, serial) = (
            channel.to_owned(),
            self.context().clone(),
            serial.to_owned(),
        );
        let read = move || {
            annotations::aggregate(&|q| context.backend.read(&name, q), seq, &serial, u64::MAX)
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| ErrorInfo::new(codes::INTERNAL, "annotation read failed"))?
            .map_err(ErrorInfo::from)
    }

    /// A page of the annotations of message `serial` of `channel`, oldest first, from position
    /// `from` on (REST `GET /channels/{c}/messages/{serial}/annotations`, RSAN3), for a caller
    /// with the `annotation-subscribe` capability; 40400 when the channel holds no such
    /// message. Each annotation comes with its position, to page on.
    pub async fn annotations(
        &self,
        channel: &str,
        capability: &Capability,
        serial: &str,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Annotation)>, ErrorInfo> {
        self.permit(
            channel,
            capability,
            Operation::AnnotationSubscribe,
            "annotation-subscribe",
        )?;
        // Asks that the message exists, as a message of this channel.
        self.versions_of(channel, serial).await?;
        let seq = self.position_of(channel, serial)?;
        let (name, context, serial) = (
            channel.to_owned(),
            self.context().clone(),
            serial.to_owned(),
        );
        let from = from.unwrap_or(seq + 1).max(seq + 1);
        let read = move || {
            annotations::list(
                &|q| context.backend.read(&name, q),
                &serial,
                from,
                u64::MAX,
                limit,
            )
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| ErrorInfo::new(codes::INTERNAL, "annotation read failed"))?
            .map_err(ErrorInfo::from)
    }

    /// Every check of an annotation publish, realtime or REST (RTAN1, RSAN1): the name, the
    /// `annotation-publish` capability, the ANNOTATION_PUBLISH mode of the publisher's
    /// attachment, each annotation's type, action, name and count ([`annotations::validate`]),
    /// its clientId (§8.6) and size; then each becomes an entry of the log for the sequencer,
    /// which checks that the annotated message exists.
    pub fn check_annotations(
        &self,
        channel: String,
        annotations: Vec<Annotation>,
        publisher: Publisher<'_>,
    ) -> Result<CheckedPublish, ErrorInfo> {
        self.permit(
            &channel,
            publisher.capability,
            Operation::AnnotationPublish,
            "annotation-publish",
        )?;
        if publisher
            .attached_modes
            .is_some_and(|modes| modes & flags::MODE_ANNOTATION_PUBLISH == 0)
        {
            return Err(mode_not_attached(&channel, "annotation-publish"));
        }
        if annotations.is_empty() {
            return Err(ErrorInfo::new(
                codes::BAD_REQUEST,
                "no annotations to publish",
            ));
        }
        let mut size = 0;
        let mut app_ids = false;
        let mut entries = Vec::with_capacity(annotations.len());
        for (index, mut a) in annotations.into_iter().enumerate() {
            strip_server_fields(&mut a.extras);
            a.normalise_data()?;
            size += a.size();
            a.client_id = publisher
                .identity
                .message_client_id(a.client_id.as_deref())?;
            annotations::validate(&a)?;
            match &a.id {
                Some(id) if !id.is_empty() => app_ids = true,
                _ => {
                    let mut id = String::with_capacity(publisher.id_base.len() + 4);
                    id.push_str(&publisher.id_base);
                    id.push(':');
                    push_decimal(&mut id, index as u64, 0);
                    a.id = Some(id);
                }
            }
            set_user_claim(&mut a.extras, publisher.identity.user_claim(&channel));
            a.connection_id = publisher.connection_id.as_deref().map(str::to_owned);
            a.serial = None;
            a.timestamp = None;
            entries.push(a.into_entry());
        }
        let max_size = self.context().max_message_size;
        if size > max_size {
            return Err(ErrorInfo::new(
                codes::MESSAGE_TOO_LARGE,
                format!("annotation size {size} exceeds maxMessageSize {max_size}"),
            ));
        }
        let origin = publisher.connection_id.map(|connection_id| Origin {
            connection_id,
            pm_id: publisher.id_base,
        });
        Ok(CheckedPublish {
            channel,
            messages: entries,
            app_ids,
            origin,
            rights: Rights::default(),
        })
    }

    /// The position of `serial` in `channel`'s log; 40400 for a serial of another epoch.
    fn position_of(&self, channel: &str, serial: &str) -> Result<u64, ErrorInfo> {
        let epoch = self.context().backend.epoch(channel);
        parse_serial(serial)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, seq)| seq)
            .ok_or_else(|| versions::unknown_message(serial))
    }

    /// Every version of message `serial` of `channel`, the original first (RSL14, `GET
    /// /channels/{c}/messages/{serial}/versions`), for a caller with the `history`
    /// capability; 40400 when the channel holds no message with that serial.
    pub async fn message_versions(
        &self,
        channel: &str,
        capability: &Capability,
        serial: &str,
    ) -> Result<Vec<Message>, ErrorInfo> {
        self.permit(channel, capability, Operation::History, "history")?;
        self.versions_of(channel, serial).await
    }

    /// Waits until this node holds `channel` up to `position` (a serial it just gave out),
    /// so that reading it back finds it: in cluster mode a node's own publish comes back
    /// through the stream after JetStream's ACK. At once on a single node, and never longer
    /// than the sequencer's catch-up wait; a serial of another epoch is not waited for.
    pub async fn caught_up(self: &Arc<Self>, channel: &str, position: &str) {
        let Ok(position) = self.position_of(channel, position) else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if self
            .send(channel, Command::CatchUp { position, reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    /// Every version of message `serial` that the caller has just published or changed, to
    /// answer with what was stored (the chat REST API answers a send or an edit with the
    /// message): no `history` capability is asked, as the caller wrote what it reads.
    pub async fn own_change(&self, channel: &str, serial: &str) -> Result<Vec<Message>, ErrorInfo> {
        self.versions_of(channel, serial).await
    }

    async fn versions_of(&self, channel: &str, serial: &str) -> Result<Vec<Message>, ErrorInfo> {
        let seq = self.position_of(channel, serial)?;
        let (name, context) = (channel.to_owned(), self.context().clone());
        let read = move || versions::versions(&|q| context.backend.read(&name, q), seq, u64::MAX);
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| ErrorInfo::new(codes::INTERNAL, "message read failed"))?
            .map_err(ErrorInfo::from)?
            .ok_or_else(|| versions::unknown_message(serial))
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

/// Validates and stamps messages from any publisher (realtime or REST): new messages, and
/// changes to earlier ones (update, delete, append: `serial` names the message; the
/// sequencer checks the rights and applies them), no server-set fields, canonical data,
/// clientId per §8.6, size per §7.5, and an id (`<base>:<index>`) where the app set none.
/// Returns whether the app set any ids (idempotent publishing).
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
        let change = check_action(m)?;
        strip_server_fields(&mut m.extras);
        // A message's summary is the server's, folded from its annotations (§7.9): one a
        // client sends, on a new message or with a change on top, is dropped.
        m.annotations = None;
        m.normalise_data()?;
        if change {
            // ably-js sends the message it changes with the change on top: its id, clientId,
            // timestamp and version are the original's or server-set, not this publisher's.
            m.id = None;
            m.client_id = None;
            m.timestamp = None;
            if let Some(version) = &mut m.version {
                version.serial = None;
                version.timestamp = None;
                version.client_id = None;
            }
        } else {
            m.version = None;
        }
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
        if !change {
            m.serial = None;
        }
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

/// History's page of `query` (§5.8 of `../shared/ably-chat.md`): the log's new messages (of
/// name `only`, when given) in their latest versions with their annotations' summaries
/// (client lists cut at `clip`), leaving the changes, summaries and annotations out, as many
/// as `query.limit` while the log has them.
fn latest_versions(
    read: versions::Reader<'_>,
    mut query: Query,
    only: Option<&str>,
    clip: usize,
) -> Result<Vec<(u64, Message)>, crate::store::StoreError> {
    let limit = query.limit;
    let mut page = Vec::new();
    loop {
        let rows = read(&query)?;
        let more = rows.len() == query.limit;
        let Some(&(last, _)) = rows.last() else { break };
        page.extend(rows.into_iter().filter(|(_, m)| {
            !m.refers() && only.is_none_or(|name| m.name.as_deref() == Some(name))
        }));
        if page.len() >= limit || !more {
            break;
        }
        match query.direction {
            Direction::Forwards => query.from = last + 1,
            Direction::Backwards if last == 0 => break,
            Direction::Backwards => query.to = last - 1,
        }
        query.limit = limit - page.len();
    }
    page.truncate(limit);
    versions::fold(read, page, u64::MAX, clip)
}

/// Whether a message is a change to an earlier one (`action` 1, 2 or 5 with the original's
/// `serial`, as ably-js `updateMessage()`, `deleteMessage()` and `appendMessage()` send them,
/// `../shared/ably-chat.md` §2) rather than a new one (absent action or 0). A change without
/// a serial, and the actions only the server sends (meta, summary), are refused (40003).
fn check_action(message: &Message) -> Result<bool, ErrorInfo> {
    match message.action {
        None | Some(Message::CREATE) => Ok(false),
        Some(_) if message.is_version() => match message.serial.as_deref() {
            Some(serial) if !serial.is_empty() => Ok(true),
            _ => Err(ErrorInfo::new(
                codes::INVALID_PARAMETER,
                "an update, delete or append needs the serial of the message it changes",
            )),
        },
        Some(action) => Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            format!("message action {action} cannot be published"),
        )),
    }
}

/// Sets the server-set `extras.userClaim` to `claim` (the publisher's user claim for the
/// channel, §5.10 of `../shared/ably-chat.md`), after [`strip_server_fields`] took out any the
/// client sent; `None` leaves `extras` as it is. `extras` that are not an object (refused
/// elsewhere) are left alone.
pub fn set_user_claim(extras: &mut Option<serde_json::Value>, claim: Option<&str>) {
    let Some(claim) = claim else {
        return;
    };
    let extras = extras.get_or_insert_with(|| serde_json::Value::Object(Default::default()));
    if let serde_json::Value::Object(map) = extras {
        map.insert("userClaim".to_owned(), claim.into());
    }
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
