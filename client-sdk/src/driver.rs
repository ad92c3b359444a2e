//! The connection task: the one owner of the socket, the msgSerial counter, pending publishes
//! and every channel's state. Handles talk to it over a channel of [`Command`]s (habit 13 of
//! `../shared/style.md`). It reconnects with backoff and jitter, resumes with the connection
//! key (§4.6), re-sends unacknowledged publishes (same msgSerials when the connectionId is kept,
//! new ones otherwise), re-attaches every channel from its last serial (§5.6), re-enters its own
//! presence members (§6.7), and renews tokens when the server asks (§4.7) or refuses one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{
    flags, Action, ErrorInfo, Format, Message, PresenceAction, PresenceMessage, ProtocolMessage,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth::Credentials;
use crate::data::{decode_message, decode_presence};
use crate::error::Error;
use crate::options::Options;
use crate::ConnectionState;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The answer to a publish or presence operation: serials, or why not.
pub(crate) type Outcome = Result<Vec<Option<String>>, Error>;

/// Requests from handles.
pub(crate) enum Command {
    Publish {
        channel: String,
        messages: Vec<Message>,
        reply: oneshot::Sender<Outcome>,
    },
    Presence {
        channel: String,
        item: PresenceMessage,
        reply: oneshot::Sender<Outcome>,
    },
    Attach {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Detach {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Subscribe {
        channel: String,
        id: u64,
        sink: Sink<Message>,
    },
    SubscribePresence {
        channel: String,
        id: u64,
        sink: Sink<PresenceMessage>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
    PresenceGet {
        channel: String,
        reply: oneshot::Sender<Result<Vec<PresenceMessage>, Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A subscriber's queue: bounded; when full, messages are dropped and counted.
pub(crate) struct Sink<T> {
    pub(crate) sender: mpsc::Sender<T>,
    pub(crate) lagged: Arc<AtomicU64>,
}

impl<T> Sink<T> {
    /// Delivers without waiting; false once the subscriber is gone.
    fn deliver(&self, item: T) -> bool {
        match self.sender.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct ChannelState {
    wanted: bool,
    attach_sent: bool,
    attached: bool,
    serial: Option<String>,
    attach_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    detach_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    subscribers: HashMap<u64, Sink<Message>>,
    presence_subscribers: HashMap<u64, Sink<PresenceMessage>>,
    members: BTreeMap<(String, String), PresenceMessage>,
    syncing: bool,
    residual: Vec<(String, String)>,
    get_waiters: Vec<oneshot::Sender<Result<Vec<PresenceMessage>, Error>>>,
    own: BTreeMap<String, PresenceMessage>,
    presence_queue: Vec<(PresenceMessage, oneshot::Sender<Outcome>)>,
}

impl ChannelState {
    /// Answers everyone waiting on this channel — attach, presence operations, `get()`, and
    /// with `detaching` also detach — with `error`.
    fn fail_waiters(&mut self, error: &Error, detaching: bool) {
        for waiter in self.attach_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
        for waiter in self.get_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
        for (_, waiter) in self.presence_queue.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
        if detaching {
            for waiter in self.detach_waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

struct Pending {
    frame: ProtocolMessage,
    reply: oneshot::Sender<Outcome>,
}

/// How a socket's life ended.
enum End {
    Dropped,
    Closed,
    Failed(Error),
}

pub(crate) struct Driver {
    options: Arc<Options>,
    credentials: Arc<Credentials>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<ConnectionState>,
    connection: watch::Sender<Option<(String, Option<String>)>>,
    reason: watch::Sender<Option<Error>>,
    connection_id: Option<String>,
    connection_key: Option<String>,
    state_ttl: Duration,
    max_idle: Duration,
    msg_serial: u64,
    pending: BTreeMap<u64, Pending>,
    queued: Vec<Pending>,
    channels: HashMap<String, ChannelState>,
    renew_token: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
}

fn error_of(message: &ProtocolMessage, fallback: &str) -> ErrorInfo {
    message
        .error
        .clone()
        .unwrap_or_else(|| ErrorInfo::new(protocol::error::codes::INTERNAL, fallback))
}

impl Driver {
    pub(crate) fn new(
        options: Arc<Options>,
        credentials: Arc<Credentials>,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<ConnectionState>,
        connection: watch::Sender<Option<(String, Option<String>)>>,
        reason: watch::Sender<Option<Error>>,
    ) -> Driver {
        Driver {
            options,
            credentials,
            commands,
            state,
            connection,
            reason,
            connection_id: None,
            connection_key: None,
            state_ttl: Duration::from_secs(120),
            max_idle: Duration::from_secs(15),
            msg_serial: 0,
            pending: BTreeMap::new(),
            queued: Vec::new(),
            channels: HashMap::new(),
            renew_token: false,
            close_waiters: Vec::new(),
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    /// Runs until closed or failed.
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut down_since: Option<Instant> = None;
        let final_state = loop {
            self.set_state(ConnectionState::Connecting);
            match self.connect().await {
                Ok(socket) => {
                    attempt = 0;
                    down_since = None;
                    match self.serve(socket).await {
                        End::Dropped => {}
                        End::Closed => break ConnectionState::Closed,
                        End::Failed(e) => {
                            self.reason.send_replace(Some(e.clone()));
                            self.fail_all(&e);
                            break ConnectionState::Failed;
                        }
                    }
                }
                Err(End::Failed(e)) => {
                    self.reason.send_replace(Some(e.clone()));
                    self.fail_all(&e);
                    break ConnectionState::Failed;
                }
                Err(End::Closed) => break ConnectionState::Closed,
                Err(End::Dropped) => {}
            }
            let since = *down_since.get_or_insert_with(Instant::now);
            let suspended = since.elapsed() >= self.state_ttl;
            let delay = if suspended {
                self.set_state(ConnectionState::Suspended);
                self.fail_queued(&Error::Suspended(
                    "no connection for connectionStateTtl".into(),
                ));
                self.options.suspended_retry
            } else {
                self.set_state(ConnectionState::Disconnected);
                retry_delay(self.options.disconnected_retry, attempt)
            };
            attempt += 1;
            if !self.wait(delay).await {
                break ConnectionState::Closed;
            }
        };
        self.fail_all(&Error::Closed);
        self.set_state(final_state);
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Sleeps while still taking commands (publishes queue up). False when closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Close { reply }) => {
                        self.close_waiters.push(reply);
                        return false;
                    }
                    Some(command) => self.offline(command),
                },
            }
        }
    }

    /// A command while there is no socket.
    fn offline(&mut self, command: Command) {
        match command {
            Command::Publish {
                channel,
                messages,
                reply,
            } => self.queued.push(Pending {
                frame: ProtocolMessage {
                    messages: Some(messages),
                    ..ProtocolMessage::for_channel(Action::Message, channel)
                },
                reply,
            }),
            Command::Presence {
                channel,
                item,
                reply,
            } => {
                let ch = self.channels.entry(channel).or_default();
                ch.wanted = true;
                ch.presence_queue.push((item, reply));
            }
            Command::Attach { channel, reply } => {
                let ch = self.channels.entry(channel).or_default();
                ch.wanted = true;
                ch.attach_waiters.push(reply);
            }
            other => self.local(other),
        }
    }

    /// Commands that need no socket.
    fn local(&mut self, command: Command) {
        match command {
            Command::Subscribe { channel, id, sink } => {
                self.channels
                    .entry(channel)
                    .or_default()
                    .subscribers
                    .insert(id, sink);
            }
            Command::SubscribePresence { channel, id, sink } => {
                self.channels
                    .entry(channel)
                    .or_default()
                    .presence_subscribers
                    .insert(id, sink);
            }
            Command::Unsubscribe { channel, id } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.subscribers.remove(&id);
                    ch.presence_subscribers.remove(&id);
                }
            }
            Command::Detach { channel, reply } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.wanted = false;
                    ch.attached = false;
                    ch.serial = None;
                    ch.own.clear();
                }
                let _ = reply.send(Ok(()));
            }
            Command::PresenceGet { channel, reply } => {
                let ch = self.channels.entry(channel).or_default();
                ch.wanted = true;
                ch.get_waiters.push(reply);
            }
            Command::Close { reply } => self.close_waiters.push(reply),
            Command::Publish { .. } | Command::Presence { .. } | Command::Attach { .. } => {
                unreachable!("handled by the caller")
            }
        }
    }

    async fn connect(&mut self) -> Result<Socket, End> {
        let (name, credential) = match self.credentials.query_param(self.renew_token).await {
            Ok(p) => p,
            Err(e @ Error::Ably(_)) | Err(e @ Error::Failed(_)) => return Err(End::Failed(e)),
            Err(_) => return Err(End::Dropped),
        };
        self.renew_token = false;
        let url = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair(name, &credential);
            query.append_pair(
                "format",
                if self.options.format == Format::Json {
                    "json"
                } else {
                    "msgpack"
                },
            );
            query.append_pair("v", "6");
            query.append_pair("heartbeats", "true");
            if !self.options.echo {
                query.append_pair("echo", "false");
            }
            if let Some(client_id) = &self.options.client_id {
                query.append_pair("clientId", client_id);
            }
            if let Some(key) = &self.connection_key {
                query.append_pair("resume", key);
            }
            format!("{}?{}", self.options.websocket_base(), query.finish())
        };
        let timeout = self.options.request_timeout;
        let connected = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url)).await;
        let Ok(Ok((mut socket, _))) = connected else {
            return Err(End::Dropped);
        };
        let first =
            match tokio::time::timeout(timeout, read(&mut socket, self.options.format)).await {
                Ok(Some(message)) => message,
                _ => return Err(End::Dropped),
            };
        match first.action {
            Action::Connected => {
                self.on_connected(&mut socket, first).await;
                Ok(socket)
            }
            Action::Error | Action::Disconnected => {
                let error = error_of(&first, "connection refused");
                if error.is_token_error() && self.credentials.renewable() {
                    self.renew_token = true;
                    return Err(End::Dropped);
                }
                if first.action == Action::Disconnected {
                    return Err(End::Dropped);
                }
                Err(End::Failed(Error::Ably(error)))
            }
            _ => Err(End::Dropped),
        }
    }

    async fn on_connected(&mut self, socket: &mut Socket, message: ProtocolMessage) {
        let details = message.connection_details.unwrap_or_default();
        let new_id = message.connection_id.clone();
        if new_id != self.connection_id {
            // A new connection (first connect or failed resume): msgSerials start again, and
            // unacknowledged publishes are sent again with new ones (§4.6).
            self.msg_serial = 0;
            let old = std::mem::take(&mut self.pending);
            self.queued.splice(0..0, old.into_values());
            for ch in self.channels.values_mut() {
                ch.members.clear();
            }
        }
        self.connection_id = new_id.clone();
        self.connection_key = Some(details.connection_key.clone());
        if let Some(ttl) = details.connection_state_ttl {
            self.state_ttl = Duration::from_millis(ttl);
        }
        if let Some(idle) = details.max_idle_interval.filter(|i| *i > 0) {
            self.max_idle = Duration::from_millis(idle);
        }
        self.connection
            .send_replace(new_id.map(|id| (id, details.client_id.clone())));
        for pending in self.pending.values() {
            let _ = send(socket, self.options.format, &pending.frame).await;
        }
        for mut queued in std::mem::take(&mut self.queued) {
            queued.frame.msg_serial = Some(self.msg_serial);
            let _ = send(socket, self.options.format, &queued.frame).await;
            self.pending.insert(self.msg_serial, queued);
            self.msg_serial += 1;
        }
        let wanted: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.wanted)
            .map(|(name, _)| name.clone())
            .collect();
        for ch in self.channels.values_mut() {
            ch.attached = false;
            ch.attach_sent = false;
        }
        for name in wanted {
            self.send_attach(socket, &name).await;
        }
        self.set_state(ConnectionState::Connected);
    }

    async fn send_attach(&mut self, socket: &mut Socket, name: &str) {
        let ch = self.channels.entry(name.to_owned()).or_default();
        if ch.attach_sent {
            return;
        }
        ch.attach_sent = true;
        let attach = ProtocolMessage {
            channel_serial: ch.serial.clone(),
            ..ProtocolMessage::for_channel(Action::Attach, name)
        };
        let _ = send(socket, self.options.format, &attach).await;
    }

    async fn serve(&mut self, mut socket: Socket) -> End {
        loop {
            let silence = self.max_idle + self.options.request_timeout;
            tokio::select! {
                frame = tokio::time::timeout(silence, read(&mut socket, self.options.format)) => {
                    let Ok(Some(message)) = frame else {
                        return End::Dropped;
                    };
                    if let Some(end) = self.on_message(&mut socket, message).await {
                        return end;
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        let _ = send(&mut socket, self.options.format, &ProtocolMessage::new(Action::Close)).await;
                        return End::Closed;
                    };
                    if let Some(end) = self.on_command(&mut socket, command).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn publish(
        &mut self,
        socket: &mut Socket,
        mut frame: ProtocolMessage,
        reply: oneshot::Sender<Outcome>,
    ) {
        frame.msg_serial = Some(self.msg_serial);
        let _ = send(socket, self.options.format, &frame).await;
        self.pending
            .insert(self.msg_serial, Pending { frame, reply });
        self.msg_serial += 1;
    }

    async fn on_command(&mut self, socket: &mut Socket, command: Command) -> Option<End> {
        match command {
            Command::Publish {
                channel,
                messages,
                reply,
            } => {
                let frame = ProtocolMessage {
                    messages: Some(messages),
                    ..ProtocolMessage::for_channel(Action::Message, channel)
                };
                self.publish(socket, frame, reply).await;
            }
            Command::Attach { channel, reply } => {
                let ch = self.channels.entry(channel.clone()).or_default();
                ch.wanted = true;
                if ch.attached {
                    let _ = reply.send(Ok(()));
                } else {
                    ch.attach_waiters.push(reply);
                    self.send_attach(socket, &channel).await;
                }
            }
            Command::Presence {
                channel,
                item,
                reply,
            } => {
                let attached = self.channels.get(&channel).is_some_and(|c| c.attached);
                if attached {
                    self.send_presence(socket, &channel, item, reply).await;
                } else {
                    let ch = self.channels.entry(channel.clone()).or_default();
                    ch.wanted = true;
                    ch.presence_queue.push((item, reply));
                    self.send_attach(socket, &channel).await;
                }
            }
            Command::PresenceGet { channel, reply } => {
                let ch = self.channels.entry(channel.clone()).or_default();
                ch.wanted = true;
                if ch.attached && !ch.syncing {
                    let _ = reply.send(Ok(ch.members.values().cloned().collect()));
                } else {
                    ch.get_waiters.push(reply);
                    self.send_attach(socket, &channel).await;
                }
            }
            Command::Detach { channel, reply } => {
                let Some(ch) = self.channels.get_mut(&channel) else {
                    let _ = reply.send(Ok(()));
                    return None;
                };
                // A detach ends continuity: the next attach starts live, not from here (RTL15b2).
                ch.wanted = false;
                ch.serial = None;
                ch.own.clear();
                let was_attached = std::mem::replace(&mut ch.attached, false);
                // From here on nothing counts (messages already on the wire would otherwise
                // set the serial again before DETACHED arrives).
                if was_attached || ch.attach_sent {
                    ch.detach_waiters.push(reply);
                    let detach = ProtocolMessage::for_channel(Action::Detach, &channel);
                    let _ = send(socket, self.options.format, &detach).await;
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Close { reply } => {
                self.close_waiters.push(reply);
                self.set_state(ConnectionState::Closing);
                let _ = send(
                    socket,
                    self.options.format,
                    &ProtocolMessage::new(Action::Close),
                )
                .await;
                let _ = tokio::time::timeout(self.options.request_timeout, async {
                    while let Some(m) = read(socket, self.options.format).await {
                        if m.action == Action::Closed {
                            break;
                        }
                    }
                })
                .await;
                return Some(End::Closed);
            }
            other => self.local(other),
        }
        None
    }

    async fn send_presence(
        &mut self,
        socket: &mut Socket,
        channel: &str,
        item: PresenceMessage,
        reply: oneshot::Sender<Outcome>,
    ) {
        let frame = ProtocolMessage {
            presence: Some(vec![item]),
            ..ProtocolMessage::for_channel(Action::Presence, channel)
        };
        self.publish(socket, frame, reply).await;
    }

    /// Completes every pending operation below `up_to` (an ACK for a later serial also
    /// completes earlier ones, §7.3), giving each its outcome by msgSerial.
    fn complete(&mut self, up_to: u64, outcome: impl Fn(u64) -> Outcome) {
        let done: Vec<u64> = self.pending.range(..up_to).map(|(s, _)| *s).collect();
        for serial in done {
            if let Some(p) = self.pending.remove(&serial) {
                let _ = p.reply.send(outcome(serial));
            }
        }
    }

    async fn on_message(&mut self, socket: &mut Socket, message: ProtocolMessage) -> Option<End> {
        match message.action {
            Action::Ack | Action::Nack => {
                let first = message.msg_serial.unwrap_or(0);
                let count = message.count.unwrap_or(1);
                let results = message.res.clone().unwrap_or_default();
                let error = message.error.clone();
                let nack = message.action == Action::Nack;
                self.complete(first + count, |serial| {
                    if nack && serial >= first {
                        Err(Error::Ably(error.clone().unwrap_or_else(|| {
                            ErrorInfo::new(
                                protocol::error::codes::INTERNAL_CHANNEL,
                                "publish refused",
                            )
                        })))
                    } else {
                        let index = serial.saturating_sub(first) as usize;
                        Ok(results
                            .get(index)
                            .map(|r| r.serials.clone())
                            .unwrap_or_default())
                    }
                });
            }
            Action::Connected => {
                let details = message.connection_details.unwrap_or_default();
                self.connection_key = Some(details.connection_key);
            }
            Action::Disconnected => {
                if message
                    .error
                    .as_ref()
                    .is_some_and(ErrorInfo::is_token_error)
                {
                    self.renew_token = true;
                }
                return Some(End::Dropped);
            }
            Action::Error => match &message.channel {
                Some(channel) => self.channel_failed(channel, error_of(&message, "channel error")),
                None => {
                    let error = error_of(&message, "connection error");
                    if error.is_token_error() && self.credentials.renewable() {
                        self.renew_token = true;
                        return Some(End::Dropped);
                    }
                    return Some(End::Failed(Error::Ably(error)));
                }
            },
            Action::Auth => {
                // §4.7: the server wants a fresh token on this connection.
                match self.credentials.token(true).await {
                    Ok(token) => {
                        let auth = ProtocolMessage {
                            auth: Some(protocol::AuthDetails {
                                access_token: token,
                            }),
                            ..ProtocolMessage::new(Action::Auth)
                        };
                        let _ = send(socket, self.options.format, &auth).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the token"),
                }
            }
            Action::Attached => self.on_attached(socket, message).await,
            Action::Detached => {
                let channel = message.channel.clone().unwrap_or_default();
                let ch = self.channels.get_mut(&channel)?;
                ch.attached = false;
                ch.attach_sent = false;
                for waiter in ch.detach_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                if ch.wanted {
                    // §5.3: a server-initiated DETACHED is transient; attach again.
                    self.send_attach(socket, &channel).await;
                }
            }
            Action::Message => self.on_messages(message),
            Action::Presence => self.on_presence(message, false),
            Action::Sync => self.on_presence(message, true),
            _ => {}
        }
        None
    }

    fn channel_failed(&mut self, channel: &str, error: ErrorInfo) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.wanted = false;
        ch.attached = false;
        ch.attach_sent = false;
        ch.fail_waiters(&Error::Ably(error), false);
    }

    async fn on_attached(&mut self, socket: &mut Socket, message: ProtocolMessage) {
        let channel = message.channel.clone().unwrap_or_default();
        let resumed = message.has_flag(flags::RESUMED);
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let was_attached = ch.attached;
        ch.attached = true;
        if message.channel_serial.is_some() {
            ch.serial = message.channel_serial.clone();
        }
        for waiter in ch.attach_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        if message.has_flag(flags::HAS_PRESENCE) {
            ch.syncing = true;
            ch.residual = ch.members.keys().cloned().collect();
        } else {
            ch.syncing = false;
            ch.members.clear();
            let members: Vec<PresenceMessage> = Vec::new();
            for waiter in ch.get_waiters.drain(..) {
                let _ = waiter.send(Ok(members.clone()));
            }
        }
        // §6.7: re-enter own members unless continuity was kept on an attached channel.
        let reenter: Vec<PresenceMessage> = if resumed && was_attached {
            Vec::new()
        } else {
            ch.own.values().cloned().collect()
        };
        let queued = std::mem::take(&mut ch.presence_queue);
        for mut member in reenter {
            member.action = PresenceAction::Enter;
            let (reply, _) = oneshot::channel();
            self.send_presence(socket, &channel, member, reply).await;
        }
        for (item, reply) in queued {
            self.send_presence(socket, &channel, item, reply).await;
        }
    }

    fn on_messages(&mut self, message: ProtocolMessage) {
        let channel = message.channel.clone().unwrap_or_default();
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        // §5.5: nothing counts before ATTACHED on this socket.
        if !ch.attached {
            return;
        }
        if message.channel_serial.is_some() {
            ch.serial = message.channel_serial.clone();
        }
        for (index, mut m) in message.messages.unwrap_or_default().into_iter().enumerate() {
            if m.id.is_none() {
                m.id = message.id.as_ref().map(|id| format!("{id}:{index}"));
            }
            m.connection_id = m.connection_id.or_else(|| message.connection_id.clone());
            m.timestamp = m.timestamp.or(message.timestamp);
            decode_message(&mut m);
            ch.subscribers.retain(|_, sink| sink.deliver(m.clone()));
        }
    }

    fn on_presence(&mut self, message: ProtocolMessage, sync: bool) {
        let channel = message.channel.clone().unwrap_or_default();
        let own_connection = self.connection_id.clone();
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if !ch.attached {
            return;
        }
        for (index, mut item) in message
            .presence
            .clone()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if item.id.is_none() {
                item.id = message.id.as_ref().map(|id| format!("{id}:{index}"));
            }
            item.connection_id = item.connection_id.or_else(|| message.connection_id.clone());
            item.timestamp = item.timestamp.or(message.timestamp);
            decode_presence(&mut item);
            let key = (
                item.client_id.clone().unwrap_or_default(),
                item.connection_id.clone().unwrap_or_default(),
            );
            let own = item.connection_id.is_some() && item.connection_id == own_connection;
            if item.action == PresenceAction::Leave {
                ch.members.remove(&key);
                if own {
                    ch.own.remove(&key.0);
                }
            } else {
                ch.residual.retain(|k| *k != key);
                ch.members.insert(
                    key.clone(),
                    PresenceMessage {
                        action: PresenceAction::Present,
                        ..item.clone()
                    },
                );
                if own && !sync {
                    ch.own.insert(key.0, item.clone());
                }
            }
            if !sync {
                ch.presence_subscribers
                    .retain(|_, sink| sink.deliver(item.clone()));
            }
        }
        let done = !sync
            || message.channel_serial.as_deref().is_none_or(|s| {
                s.split_once(':')
                    .is_none_or(|(_, cursor)| cursor.is_empty())
            });
        if sync && done {
            // §6.4: members not seen in the sync have left.
            for key in std::mem::take(&mut ch.residual) {
                if let Some(mut gone) = ch.members.remove(&key) {
                    gone.action = PresenceAction::Leave;
                    ch.presence_subscribers
                        .retain(|_, sink| sink.deliver(gone.clone()));
                }
            }
            ch.syncing = false;
            let members: Vec<PresenceMessage> = ch.members.values().cloned().collect();
            for waiter in ch.get_waiters.drain(..) {
                let _ = waiter.send(Ok(members.clone()));
            }
        }
    }

    fn fail_queued(&mut self, error: &Error) {
        for pending in std::mem::take(&mut self.queued) {
            let _ = pending.reply.send(Err(error.clone()));
        }
        for pending in std::mem::take(&mut self.pending).into_values() {
            let _ = pending.reply.send(Err(error.clone()));
        }
        for ch in self.channels.values_mut() {
            for (_, reply) in ch.presence_queue.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    fn fail_all(&mut self, error: &Error) {
        self.fail_queued(error);
        for ch in self.channels.values_mut() {
            ch.fail_waiters(error, true);
            ch.subscribers.clear();
            ch.presence_subscribers.clear();
        }
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish { reply, .. } | Command::Presence { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Attach { reply, .. } | Command::Detach { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::PresenceGet { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Close { reply } => self.close_waiters.push(reply),
                _ => {}
            }
        }
    }
}

/// Backoff of §4.5: the first retry at once, then `base` × min((n+2)/3, 2) × jitter 0.8–1.0.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let factor = ((attempt as f64 + 2.0) / 3.0).min(2.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.2;
    base.mul_f64(factor * jitter)
}

async fn send(socket: &mut Socket, format: Format, message: &ProtocolMessage) -> Result<(), Error> {
    let bytes = protocol::encode(format, message);
    let frame = match format {
        Format::Json => WsMessage::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|e| Error::Transport(e.to_string()))?
                .into(),
        ),
        Format::Msgpack => WsMessage::Binary(bytes),
    };
    socket
        .send(frame)
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}

/// The next ProtocolMessage; `None` when the socket is gone. Undecodable frames are skipped,
/// as ably-js does (§2).
async fn read(socket: &mut Socket, _format: Format) -> Option<ProtocolMessage> {
    loop {
        let frame = socket.next().await?.ok()?;
        let decoded = match &frame {
            WsMessage::Text(t) => protocol::decode(Format::Json, t.as_bytes()),
            WsMessage::Binary(b) => protocol::decode(Format::Msgpack, b),
            WsMessage::Close(_) => return None,
            _ => continue,
        };
        match decoded {
            Ok(message) => return Some(message),
            Err(e) => tracing::warn!(error = %e, "undecodable frame skipped"),
        }
    }
}
