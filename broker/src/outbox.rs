//! A connection's outbox: the only way frames reach a socket. Anyone (the connection task, any
//! channel's sequencer) does a non-blocking [`Outbox::try_push`] of an already-encoded frame;
//! one writer task per socket drains it. The queue is bounded in bytes: a subscriber that falls
//! that far behind is disconnected with a resumable DISCONNECTED and catches up from the
//! channel log when it resumes (§4.5, habit 7 of `../shared/style.md`). It lives beside
//! `connection/` rather than inside it, so the channel core depends on the outbox and never on
//! the connection module. Frames are [`Frame`]s, not WebSocket messages: the conversion to
//! the socket's message type happens only in the writer here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use protocol::error::codes;
use protocol::{Action, ErrorInfo, Format, ProtocolMessage};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::metrics::Metrics;

/// An encoded ProtocolMessage for one wire format: JSON text or msgpack binary. Cloning shares
/// the encoded bytes (reference-counted), so one encoding serves every subscriber (habit 6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Payload);

/// The text is checked as UTF-8 once, at encoding, so the writer's conversion copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Payload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    /// The wire format the frame is encoded in.
    pub fn format(&self) -> Format {
        match self.0 {
            Payload::Text(_) => Format::Json,
            Payload::Binary(_) => Format::Msgpack,
        }
    }

    /// Its length in bytes, as the outbox counts it.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for a frame of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Payload::Text(text) => text.as_bytes(),
            Payload::Binary(bytes) => bytes,
        }
    }
}

impl From<Frame> for WsMessage {
    fn from(frame: Frame) -> WsMessage {
        match frame.0 {
            Payload::Text(text) => WsMessage::Text(text),
            Payload::Binary(bytes) => WsMessage::Binary(bytes),
        }
    }
}

/// What the queue holds: frames, and the close that [`Outbox::finish_with`] puts after them.
enum Queued {
    Frame(Frame),
    Close,
}

/// Why a push did not enqueue.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The byte bound was reached; the connection is being disconnected.
    Overflow,
    /// The socket is gone.
    Closed,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// Queued frames stay in a plain deque under a short lock: it allocates nothing until the
/// first frame and gives memory back after a burst, so an idle connection costs no buffer.
struct Inner {
    queue: Mutex<VecDeque<Queued>>,
    /// Wakes the writer: a frame was queued.
    queued: Notify,
    /// The writer is gone; pushes fail.
    receiver_gone: AtomicBool,
    queued_bytes: AtomicUsize,
    limit: usize,
    format: Format,
    metrics: Arc<Metrics>,
    closing: AtomicBool,
    /// Boxed: a ProtocolMessage is large and nearly every outbox never has one.
    farewell: Mutex<Option<Box<ProtocolMessage>>>,
    close_now: Notify,
}

/// The receiving side, owned by the writer task.
pub struct OutboxReceiver {
    inner: Arc<Inner>,
}

/// A deque that grew past this many slots is shrunk once drained.
const KEEP_SLOTS: usize = 64;

impl Inner {
    fn enqueue(&self, item: Queued) -> Result<(), Queued> {
        if self.receiver_gone.load(Ordering::Acquire) {
            return Err(item);
        }
        self.queue.lock().expect("outbox lock").push_back(item);
        self.queued.notify_one();
        Ok(())
    }

    fn dequeue(&self) -> Option<Queued> {
        let mut queue = self.queue.lock().expect("outbox lock");
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_SLOTS {
            queue.shrink_to(0);
        }
        item
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().expect("outbox lock").is_empty()
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.inner.receiver_gone.store(true, Ordering::Release);
    }
}

/// Encodes `message` as the frame a client of `format` expects (§2).
pub fn encode_frame(format: Format, message: &ProtocolMessage) -> Frame {
    let bytes = protocol::encode(format, message);
    Frame(match format {
        Format::Json => {
            Payload::Text(Utf8Bytes::try_from(bytes).expect("serde_json always writes UTF-8"))
        }
        Format::Msgpack => Payload::Binary(bytes),
    })
}

impl Outbox {
    /// A new outbox for a client of `format`, holding at most `limit` bytes.
    pub fn new(format: Format, limit: usize, metrics: Arc<Metrics>) -> (Outbox, OutboxReceiver) {
        let inner = Arc::new(Inner {
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            receiver_gone: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            limit,
            format,
            metrics,
            closing: AtomicBool::new(false),
            farewell: Mutex::new(None),
            close_now: Notify::new(),
        });
        (
            Outbox {
                inner: inner.clone(),
            },
            OutboxReceiver { inner },
        )
    }

    /// The byte bound of this outbox.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// The wire format of this connection.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// True once the outbox is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
            || self.inner.receiver_gone.load(Ordering::Acquire)
    }

    /// Enqueues an encoded frame without waiting. On overflow the connection is told
    /// DISCONNECTED (resumable) and closed.
    pub fn try_push(&self, frame: Frame) -> Result<(), PushError> {
        if self.is_closed() {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let queued = self.inner.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.inner.limit {
            self.inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.inner.metrics.slow_consumer_disconnects.inc();
            self.close(Some(ProtocolMessage {
                error: Some(ErrorInfo::new(
                    codes::DISCONNECTED,
                    "Connection disconnected: the client is not reading fast enough (outbox full); resume to catch up",
                )),
                ..ProtocolMessage::new(Action::Disconnected)
            }));
            return Err(PushError::Overflow);
        }
        self.inner.enqueue(Queued::Frame(frame)).map_err(|_| {
            self.inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            PushError::Closed
        })
    }

    /// Encodes and enqueues one message.
    pub fn push(&self, message: &ProtocolMessage) -> Result<(), PushError> {
        self.try_push(encode_frame(self.inner.format, message))
    }

    /// Stops the writer after sending `farewell` (if any) ahead of anything still queued, and
    /// closes the socket. Later pushes fail with [`PushError::Closed`].
    pub fn close(&self, farewell: Option<ProtocolMessage>) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        *self.inner.farewell.lock().expect("farewell lock") = farewell.map(Box::new);
        self.inner.close_now.notify_one();
    }

    /// Sends everything already queued, then `last`, then closes (a graceful goodbye such as
    /// CLOSED or an ERROR that must follow earlier replies).
    pub fn finish_with(&self, last: &ProtocolMessage) {
        let _ = self.push(last);
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.enqueue(Queued::Close);
    }
}

impl OutboxReceiver {
    /// Takes the next queued frame without waiting (benchmarks and tests drain with this;
    /// the writer task uses [`write_loop`]). The close queued by [`Outbox::finish_with`] is
    /// passed over: it is not a frame.
    pub fn try_recv(&mut self) -> Option<Frame> {
        loop {
            if let Queued::Frame(frame) = self.inner.dequeue()? {
                self.inner
                    .queued_bytes
                    .fetch_sub(frame.len(), Ordering::AcqRel);
                return Some(frame);
            }
        }
    }

    /// Waits for the next queued frame or close.
    async fn recv(&self) -> Queued {
        loop {
            // A push between the check and the wait leaves a permit, so no wake-up is lost.
            if let Some(frame) = self.inner.dequeue() {
                return frame;
            }
            self.inner.queued.notified().await;
        }
    }
}

/// Why the writer stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Closed on purpose (overflow, superseded, shutdown, CLOSE, fatal error).
    Closed,
    /// The socket failed.
    SocketError,
}

/// Drains the outbox into the socket until it is closed. Sends a HEARTBEAT after `idle` of
/// silence, for browsers that cannot see ping frames (§4.4), and a WebSocket ping every `idle`
/// whatever the traffic, so the read side can tell a dead peer by its missing pongs. Writes
/// are batched (flushed only when the queue is momentarily empty), bounded in time, and
/// abandoned when the outbox is closed, so a peer that stops reading cannot pin this task.
pub async fn write_loop<S>(
    mut sink: S,
    receiver: OutboxReceiver,
    idle: Duration,
    metrics: Arc<Metrics>,
) -> WriterEnd
where
    S: Sink<WsMessage> + Unpin,
{
    let inner = receiver.inner.clone();
    let heartbeat = encode_frame(inner.format, &ProtocolMessage::new(Action::Heartbeat));
    let write_timeout = idle * 2;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Browsers see only protocol messages, so silence is measured without the pings.
    let mut last_message = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            // Boxed (twice): the goodbye is needed once and would size every idle writer.
            _ = inner.close_now.notified() => return Box::pin(farewell(&mut sink, &inner)).await,
            _ = ping.tick() => Some((WsMessage::Ping(Default::default()), false)),
            _ = tokio::time::sleep_until(last_message + idle) => {
                Some((heartbeat.clone().into(), false))
            }
            queued = receiver.recv() => Some((ws_message(queued), true)),
        };
        let Some((frame, counted)) = next else {
            return WriterEnd::Closed;
        };
        let len = frame.len();
        if !matches!(frame, WsMessage::Ping(_)) {
            last_message = tokio::time::Instant::now();
        }
        if counted {
            inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        }
        metrics.bytes_out.inc_by(len as u64);
        let is_close = matches!(frame, WsMessage::Close(_));
        let flush = is_close || receiver.inner.is_empty();
        let write = async {
            sink.feed(frame).await?;
            if flush {
                sink.flush().await?;
            }
            Ok::<(), S::Error>(())
        };
        tokio::select! {
            biased;
            written = tokio::time::timeout(write_timeout, write) => match written {
                Ok(Ok(())) if is_close => {
                    let _ = sink.close().await;
                    return WriterEnd::Closed;
                }
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return WriterEnd::SocketError,
            },
            _ = inner.close_now.notified() => return Box::pin(farewell(&mut sink, &inner)).await,
        }
    }
}

/// The socket's message for a queued frame or close.
fn ws_message(queued: Queued) -> WsMessage {
    match queued {
        Queued::Frame(frame) => frame.into(),
        Queued::Close => WsMessage::Close(None),
    }
}

/// Sends the farewell frame ahead of anything still queued and closes, giving up quickly on a
/// socket that does not take it.
async fn farewell<S>(sink: &mut S, inner: &Inner) -> WriterEnd
where
    S: Sink<WsMessage> + Unpin,
{
    let message = inner.farewell.lock().expect("farewell lock").take();
    let goodbye = async {
        if let Some(message) = message {
            let _ = sink.send(encode_frame(inner.format, &message).into()).await;
        }
        let _ = sink.send(WsMessage::Close(None)).await;
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    WriterEnd::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_refuses_and_closes() {
        let (outbox, _rx) = Outbox::new(Format::Json, 100, Arc::new(Metrics::new()));
        let frame = Frame(Payload::Text("x".repeat(60).into()));
        assert_eq!(outbox.try_push(frame.clone()), Ok(()));
        assert_eq!(outbox.try_push(frame.clone()), Err(PushError::Overflow));
        assert!(outbox.is_closed());
        assert_eq!(outbox.try_push(frame), Err(PushError::Closed));
    }

    #[test]
    fn a_frame_becomes_the_socket_message_of_its_format() {
        let message = ProtocolMessage::new(Action::Heartbeat);
        for format in [Format::Json, Format::Msgpack] {
            let frame = encode_frame(format, &message);
            assert_eq!(frame.format(), format);
            assert_eq!(frame.as_bytes(), &protocol::encode(format, &message)[..]);
            let ws = WsMessage::from(frame.clone());
            assert_eq!(ws.len(), frame.len());
            assert_eq!(ws.is_text(), format == Format::Json);
            assert_eq!(ws.into_data().as_ref(), frame.as_bytes());
        }
    }
}
