//! A lean raw client of the broker's realtime protocol (§4, §5, §7): one WebSocket, msgpack
//! frames, a reader actor that records deliveries and settles ACKs and ATTACHes, and a writer
//! actor fed by a queue that takes a burst of frames at once. No SDK state machine: thousands of these fit in one
//! process. State that must outlive a socket (channel serials, sequence tracking) lives in
//! [`Session`], so a cut connection can resume (§4.6, §5.6) with the same bookkeeping.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    codec, flags, Action, Data, Format, Message, PresenceAction, PresenceMessage, ProtocolMessage,
};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::clock;
use crate::recorder::Recorder;

/// Where the broker listens and the key to present.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The broker's addresses: one, or every node of a cluster.
    pub addrs: Vec<SocketAddr>,
    /// `name:secret`.
    pub key: String,
    /// Publish with `extras.ephemeral = true` (`--ephemeral`): the broker fans such a message
    /// out but never stores it, and ACKs it with a null serial (`../shared/ably-chat.md` §5.9).
    pub ephemeral: bool,
}

impl Endpoint {
    /// Parses `ws://HOST:PORT` (or `http://`, or a bare `HOST:PORT`); several, comma-separated,
    /// for the nodes of a cluster.
    pub fn parse(urls: &str, key: &str) -> Result<Endpoint, String> {
        let addrs = urls
            .split(',')
            .map(|url| {
                let hostport = url
                    .trim()
                    .trim_start_matches("ws://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                hostport
                    .parse()
                    .map_err(|e| format!("broker address {url:?}: {e}"))
            })
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        Ok(Endpoint {
            addrs,
            key: key.to_owned(),
            ephemeral: false,
        })
    }

    /// The node client number `index` connects to: clients spread over the nodes in turn.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index % self.addrs.len()]
    }
}

/// The loopback source address of client number `index`: 127.0.0.1, .2, … one per 20,000
/// connections, so the ~28k ephemeral ports of one address never run out past 64k clients.
pub fn source_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x7f00_0001u32 + (index / 20_000) as u32)
}

/// Binds client `index`'s socket to its source address. The first 20,000 clients are not bound
/// at all: the kernel then picks the port at connect time in constant time, while binding to
/// port 0 makes it scan every bound socket (a storm of 19,000 connections spent its time there
/// and opened a sixth as fast). Clients on the other addresses bind a port chosen here.
fn bind_source(socket: &TcpSocket, index: usize) -> Result<(), String> {
    static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);
    let ip = source_ip(index);
    if ip == Ipv4Addr::LOCALHOST {
        return Ok(());
    }
    let _ = socket.set_reuseaddr(true);
    let mut last_error = None;
    for _ in 0..64 {
        let port = 1024 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 64_000) as u16;
        match socket.bind(SocketAddr::from((ip, port))) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = Some(e),
        }
    }
    Err(format!(
        "bind {ip}: {}",
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}

/// What a client remembers across sockets, and what its reader reports into.
pub struct Session {
    recorder: Arc<Recorder>,
    /// Last channelSerial seen per channel (§5.5).
    serials: Mutex<HashMap<String, String>>,
    /// Highest sequence number seen per channel, when the scenario has one publisher per
    /// channel and wants gaps and duplicates counted.
    sequences: Option<Mutex<HashMap<String, u64>>>,
    /// Messages missing from a channel's sequence.
    pub lost: AtomicU64,
    /// Messages delivered twice.
    pub duplicates: AtomicU64,
    /// PRESENCE and SYNC items received.
    pub presence_events: AtomicU64,
    acks: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    attaches: Mutex<HashMap<String, oneshot::Sender<ProtocolMessage>>>,
    closing: AtomicBool,
}

impl Session {
    /// A session reporting to `recorder`; `track_sequences` turns on gap counting.
    pub fn new(recorder: Arc<Recorder>, track_sequences: bool) -> Arc<Session> {
        Arc::new(Session {
            recorder,
            serials: Mutex::new(HashMap::new()),
            sequences: track_sequences.then(|| Mutex::new(HashMap::new())),
            lost: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            presence_events: AtomicU64::new(0),
            acks: Mutex::new(HashMap::new()),
            attaches: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        })
    }

    /// The highest sequence number seen on `channel`, if sequences are tracked.
    pub fn last_sequence(&self, channel: &str) -> Option<u64> {
        let seqs = self.sequences.as_ref()?.lock().expect("sequence lock");
        seqs.get(channel).copied()
    }

    fn on_frame(&self, frame: ProtocolMessage) {
        match frame.action {
            Action::Message => self.on_message(frame),
            Action::Ack | Action::Nack => {
                let first = frame.msg_serial.unwrap_or(0);
                let count = frame.count.unwrap_or(1);
                let outcome = if frame.action == Action::Ack {
                    Ok(())
                } else {
                    let why = frame.error.map_or("NACK".to_owned(), |e| e.message);
                    self.recorder.error(format!("NACK: {why}"));
                    Err(why)
                };
                let mut acks = self.acks.lock().expect("ack lock");
                for serial in first..first + count {
                    if let Some(waiter) = acks.remove(&serial) {
                        let _ = waiter.send(outcome.clone());
                    }
                }
            }
            Action::Attached => {
                let channel = frame.channel.clone().unwrap_or_default();
                if let Some(serial) = &frame.channel_serial {
                    self.serials
                        .lock()
                        .expect("serial lock")
                        .insert(channel.clone(), serial.clone());
                }
                let waiter = self.attaches.lock().expect("attach lock").remove(&channel);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            Action::Presence | Action::Sync => {
                let n = frame.presence.as_ref().map_or(0, Vec::len) as u64;
                self.presence_events.fetch_add(n, Ordering::Relaxed);
                self.recorder.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Action::Error | Action::Detached | Action::Disconnected => {
                let why = frame.error.map_or(String::new(), |e| e.message);
                self.recorder
                    .error(format!("{:?} {:?}: {why}", frame.action, frame.channel));
            }
            _ => {}
        }
    }

    fn on_message(&self, frame: ProtocolMessage) {
        let channel = frame.channel.unwrap_or_default();
        for m in frame.messages.iter().flatten() {
            let Some(Data::Binary(data)) = &m.data else {
                continue;
            };
            let Some((scheduled, seq)) = clock::read_payload(data) else {
                continue;
            };
            if let Some(seqs) = &self.sequences {
                let mut seqs = seqs.lock().expect("sequence lock");
                let last = seqs.entry(channel.clone()).or_insert(0);
                if seq <= *last {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.lost.fetch_add(seq - *last - 1, Ordering::Relaxed);
                *last = seq;
            }
            self.recorder.delivery(scheduled);
        }
        if let Some(serial) = frame.channel_serial {
            self.serials
                .lock()
                .expect("serial lock")
                .insert(channel, serial);
        }
    }
}

/// Frames waiting for the writer actor. A burst queued under one lock goes out in one flush
/// (one `sendto`), as a NATS client's connection task batches what piled up meanwhile.
#[derive(Default)]
struct Outgoing {
    queue: Mutex<Vec<WsMessage>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Outgoing {
    fn push(&self, frames: impl IntoIterator<Item = WsMessage>) -> Result<(), String> {
        if self.closed.load(Ordering::Relaxed) {
            return Err("connection is closed".to_owned());
        }
        self.queue.lock().expect("queue lock").extend(frames);
        self.ready.notify_one();
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }
}

/// One live connection to the broker.
pub struct Connection {
    session: Arc<Session>,
    out: Arc<Outgoing>,
    next_serial: Mutex<u64>,
    /// The `extras` every publish carries: `{"ephemeral": true}` with `--ephemeral`, built
    /// once per connection.
    extras: Option<serde_json::Value>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// The connectionId from CONNECTED.
    pub connection_id: String,
    /// The key to resume with.
    pub connection_key: String,
}

/// The socket buffers of one client: small, because most clients are idle subscribers. Frames
/// collect in the write buffer until the writer flushes (or 16 KiB pile up), so a burst is
/// one `sendto`; the buffer grows only on a client that writes.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
}

impl Connection {
    /// Connects client number `index` (which picks its source address), resuming
    /// `resume_key` if given, and waits for CONNECTED.
    pub async fn open(
        endpoint: &Endpoint,
        index: usize,
        session: Arc<Session>,
        resume_key: Option<&str>,
    ) -> Result<Connection, String> {
        let addr = endpoint.addr(index);
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        bind_source(&socket, index)?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let key: String = endpoint
            .key
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut url = format!("ws://{addr}/?key={key}&format=msgpack&v=6&heartbeats=true");
        if let Some(resume) = resume_key {
            url.push_str("&resume=");
            url.push_str(resume);
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .map_err(|e| format!("websocket handshake: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let connected = loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .map_err(|_| "no CONNECTED within 30 s".to_owned())?
                .ok_or("closed before CONNECTED")?
                .map_err(|e| format!("read: {e}"))?;
            let WsMessage::Binary(bytes) = frame else {
                continue;
            };
            let frame = codec::decode(Format::Msgpack, &bytes).map_err(|e| e.to_string())?;
            match frame.action {
                Action::Connected => break frame,
                Action::Error | Action::Disconnected => {
                    return Err(format!("refused: {:?}", frame.error.map(|e| e.message)))
                }
                _ => {}
            }
        };
        let connection_key = connected
            .connection_details
            .as_ref()
            .map(|d| d.connection_key.clone())
            .or(connected.connection_key.clone())
            .unwrap_or_default();
        let connection_id = connected.connection_id.clone().unwrap_or_default();
        session.closing.store(false, Ordering::Relaxed);

        let out = Arc::new(Outgoing::default());
        let queue = out.clone();
        let writer = tokio::spawn(async move {
            loop {
                queue.ready.notified().await;
                // Everything queued meanwhile goes out in one flush.
                let frames = std::mem::take(&mut *queue.queue.lock().expect("queue lock"));
                for frame in frames {
                    if sink.feed(frame).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                if queue.closed.load(Ordering::Relaxed)
                    && queue.queue.lock().expect("queue lock").is_empty()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_session = session.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(WsMessage::Binary(bytes)) => match codec::decode(Format::Msgpack, &bytes) {
                        Ok(frame) => reader_session.on_frame(frame),
                        Err(e) => reader_session.recorder.error(format!("decode: {e}")),
                    },
                    Ok(WsMessage::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if !reader_session.closing.load(Ordering::Relaxed) {
                reader_session
                    .recorder
                    .error("connection closed by the server");
            }
        });
        Ok(Connection {
            session,
            out,
            next_serial: Mutex::new(0),
            extras: publish_extras(endpoint.ephemeral),
            reader,
            writer,
            connection_id,
            connection_key,
        })
    }

    /// The session this connection reports into.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn send(&self, frame: &ProtocolMessage) -> Result<(), String> {
        self.out
            .push([WsMessage::Binary(codec::encode(Format::Msgpack, frame))])
    }

    /// Attaches `channel`, from its last channelSerial if one is known (§5.6), and returns
    /// the ATTACHED frame.
    pub async fn attach(&self, channel: &str) -> Result<ProtocolMessage, String> {
        let (tx, rx) = oneshot::channel();
        self.session
            .attaches
            .lock()
            .expect("attach lock")
            .insert(channel.to_owned(), tx);
        let mut frame = ProtocolMessage::for_channel(Action::Attach, channel);
        frame.channel_serial = self
            .session
            .serials
            .lock()
            .expect("serial lock")
            .get(channel)
            .cloned();
        self.send(&frame)?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| format!("no ATTACHED for {channel} within 30 s"))?
            .map_err(|_| "connection dropped during attach".to_owned())
    }

    /// Sends a frame with the next msgSerial; with `ack`, returns a receiver of its ACK.
    fn send_serial(
        &self,
        mut frame: ProtocolMessage,
        ack: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), String>>>, String> {
        // The lock spans allocation and enqueueing so serials reach the wire in order.
        let mut next = self.next_serial.lock().expect("serial lock");
        frame.msg_serial = Some(*next);
        let receiver = ack.then(|| {
            let (tx, rx) = oneshot::channel();
            self.session
                .acks
                .lock()
                .expect("ack lock")
                .insert(*next, tx);
            rx
        });
        *next += 1;
        self.send(&frame)?;
        Ok(receiver)
    }

    /// Publishes `data` on `channel` without waiting for the ACK.
    pub fn publish(&self, channel: &str, data: Bytes) -> Result<(), String> {
        self.send_serial(publish_frame(channel, data, self.extras.clone()), false)
            .map(|_| ())
    }

    /// Publishes each of `payloads` on `channel` as its own message, queued together so the
    /// burst leaves in one write; returns a receiver per publish, in order, settling on its
    /// ACK.
    pub fn publish_acked_burst(
        &self,
        channel: &str,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> Result<Vec<oneshot::Receiver<Result<(), String>>>, String> {
        let mut next = self.next_serial.lock().expect("serial lock");
        let mut receivers = Vec::new();
        let mut frames = Vec::new();
        {
            let mut acks = self.session.acks.lock().expect("ack lock");
            for data in payloads {
                let mut frame = publish_frame(channel, data, self.extras.clone());
                frame.msg_serial = Some(*next);
                let (tx, rx) = oneshot::channel();
                acks.insert(*next, tx);
                receivers.push(rx);
                frames.push(WsMessage::Binary(codec::encode(Format::Msgpack, &frame)));
                *next += 1;
            }
        }
        self.out.push(frames)?;
        Ok(receivers)
    }

    /// Sends a presence enter or leave as `client_id`; settles on its ACK.
    pub fn presence(
        &self,
        channel: &str,
        action: PresenceAction,
        client_id: &str,
    ) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        let mut frame = ProtocolMessage::for_channel(Action::Presence, channel);
        frame.presence = Some(vec![PresenceMessage {
            action,
            client_id: Some(client_id.to_owned()),
            data: Some(Data::String("load".to_owned())),
            ..Default::default()
        }]);
        self.send_serial(frame, true)
            .map(|r| r.expect("asked for an ACK receiver"))
    }

    /// Drops the socket without a CLOSE, as a network failure would: the broker keeps the
    /// connection's state for resume.
    pub fn cut(self) -> Arc<Session> {
        self.session.closing.store(true, Ordering::Relaxed);
        self.reader.abort();
        self.writer.abort();
        self.session
    }

    /// Closes the connection cleanly (CLOSE, §4.5).
    pub async fn close(self) {
        self.session.closing.store(true, Ordering::Relaxed);
        let _ = self.send(&ProtocolMessage::new(Action::Close));
        self.out.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
        self.reader.abort();
    }
}

/// True if an ATTACHED says continuity was preserved (§5.6).
pub fn resumed(attached: &ProtocolMessage) -> bool {
    attached.has_flag(flags::RESUMED)
}

/// The `extras` of every publish: `{"ephemeral": true}` when `ephemeral`, else none.
fn publish_extras(ephemeral: bool) -> Option<serde_json::Value> {
    ephemeral.then(|| serde_json::json!({ "ephemeral": true }))
}

fn publish_frame(channel: &str, data: Bytes, extras: Option<serde_json::Value>) -> ProtocolMessage {
    let mut frame = ProtocolMessage::for_channel(Action::Message, channel);
    frame.messages = Some(vec![Message {
        name: Some("load".to_owned()),
        data: Some(Data::Binary(data)),
        extras,
        ..Default::default()
    }]);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of a publish frame as the broker reads it: encoded, then decoded.
    fn on_the_wire(extras: Option<serde_json::Value>) -> Message {
        let frame = publish_frame("typing", Bytes::from_static(b"0123456789abcdef"), extras);
        let bytes = codec::encode(Format::Msgpack, &frame);
        let decoded = codec::decode(Format::Msgpack, &bytes).expect("decodes");
        assert_eq!(decoded.action, Action::Message);
        assert_eq!(decoded.channel.as_deref(), Some("typing"));
        let mut messages = decoded.messages.expect("messages");
        assert_eq!(messages.len(), 1);
        messages.remove(0)
    }

    #[test]
    fn ephemeral_publish_carries_extras_ephemeral_true() {
        let message = on_the_wire(publish_extras(true));
        assert_eq!(
            message.extras,
            Some(serde_json::json!({ "ephemeral": true }))
        );
        assert_eq!(
            message.data,
            Some(Data::Binary(Bytes::from_static(b"0123456789abcdef")))
        );
    }

    #[test]
    fn stored_publish_has_no_extras() {
        assert_eq!(publish_extras(false), None);
        assert_eq!(on_the_wire(publish_extras(false)).extras, None);
    }

    #[test]
    fn endpoint_parse_leaves_ephemeral_off() {
        let endpoint = Endpoint::parse("ws://127.0.0.1:1,127.0.0.1:2", "k:s").expect("parses");
        assert_eq!(endpoint.addrs.len(), 2);
        assert!(!endpoint.ephemeral);
    }
}
