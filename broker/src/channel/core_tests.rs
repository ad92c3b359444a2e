//! Unit tests of the channel core on the memory backend, under tokio's paused time: the joins
//! of an attach with live traffic (ATTACHED, backlog, live, by position), the answers to a
//! failed append, and retirement after the idle period. Time passes only when every task waits,
//! so a test of the 30 s retirement takes no wall-clock time and cannot race it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::{flags, Action, Format, Message, ProtocolMessage};
use tokio::sync::{oneshot, watch};

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::outbox::{Outbox, OutboxReceiver};

struct Core {
    channels: Arc<Channels>,
    backend: Arc<MemoryBackend>,
    _stop: watch::Sender<bool>,
}

fn core() -> Core {
    let backend = Arc::new(MemoryBackend::new("core", 100));
    let (tasks, _done) = Tasks::new();
    let (stop, shutdown) = watch::channel(false);
    let channels = Channels::new(ChannelContext {
        backend: backend.clone(),
        metrics: Arc::new(Metrics::new()),
        max_channel_name_length: 100,
        max_message_size: 10_000,
        max_rewind: 100,
        max_resume_replay: 100,
        max_presence_members: 100,
        fanout: hub::Parallelism {
            shards: 2,
            min_attachers: 2,
        },
        presence_sync_page_size: 100,
        occupancy_interval: std::time::Duration::from_secs(15),
        summary_clip: 100,
        shutdown,
        tasks,
        age_sweeps: Default::default(),
    });
    Core {
        channels,
        backend,
        _stop: stop,
    }
}

impl Core {
    /// Publishes one message and waits for its outcome.
    async fn publish(&self, channel: &str, data: &str) -> PublishOutcome {
        let (reply, outcome) = Reply::new();
        let publish = Publish {
            rights: Default::default(),
            messages: vec![Message {
                data: Some(protocol::Data::String(data.to_owned())),
                ..Default::default()
            }],
            origin: None,
            app_ids: false,
            received: Instant::now(),
            reply,
        };
        self.channels
            .send(channel, Command::Publish(publish))
            .await
            .unwrap();
        outcome.await.unwrap()
    }

    /// Queues an attach without waiting for it to be handled.
    async fn attach(&self, channel: &str, subscriber: Subscriber, from: StartFrom) {
        let attach = Attach {
            subscriber,
            from,
            params: BTreeMap::new(),
        };
        self.channels
            .send(channel, Command::Attach(attach))
            .await
            .unwrap();
    }

    /// Waits until the channel has handled everything sent to it before.
    async fn settle(&self, channel: &str) {
        let (reply, answer) = oneshot::channel();
        self.channels
            .send(channel, Command::Occupancy { reply })
            .await
            .unwrap();
        answer.await.unwrap();
    }
}

fn subscriber(id: &str) -> (Subscriber, OutboxReceiver) {
    let (outbox, receiver) = Outbox::new(Format::Json, 1 << 20, Arc::new(Metrics::new()));
    let subscriber = Subscriber {
        connection_id: Arc::from(id),
        socket_id: 1,
        outbox,
        modes: flags::MODE_SUBSCRIBE,
        echo: true,
        occupancy: false,
        last_client_sync: None,
    };
    (subscriber, receiver)
}

/// Every frame queued so far, decoded.
fn frames(receiver: &mut OutboxReceiver) -> Vec<ProtocolMessage> {
    std::iter::from_fn(|| receiver.try_recv())
        .map(|frame| protocol::decode(Format::Json, frame.as_bytes()).unwrap())
        .collect()
}

/// What a subscriber saw: ATTACHED as `attached`, each message as its data.
fn seen(frames: &[ProtocolMessage]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| match f.action {
            Action::Attached => vec!["attached".to_owned()],
            Action::Message => f
                .messages
                .iter()
                .flatten()
                .map(|m| match &m.data {
                    Some(protocol::Data::String(t)) => t.clone(),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => vec![format!("{other:?}")],
        })
        .collect()
}

/// §5.6: a re-attach from a serial gets RESUMED, exactly the messages after that serial, then
/// live ones: nothing lost or sent twice at the join.
#[tokio::test(start_paused = true)]
async fn a_resumed_attach_gets_the_messages_after_its_serial_then_live_ones() {
    let core = core();
    let first = core.publish("c", "m1").await.unwrap()[0].clone().unwrap();
    core.publish("c", "m2").await.unwrap();
    core.publish("c", "m3").await.unwrap();
    let (sub, mut rx) = subscriber("s1");
    core.attach("c", sub, StartFrom::Serial(first)).await;
    core.publish("c", "m4").await.unwrap();
    let frames = frames(&mut rx);
    assert_eq!(seen(&frames), ["attached", "m2", "m3", "m4"]);
    assert!(frames[0].has_flag(flags::RESUMED));
}

/// §5.4: a rewind queued between publishes gets the messages before it as backlog and the
/// ones after it live, each once.
#[tokio::test(start_paused = true)]
async fn a_rewind_joins_live_traffic_at_its_position() {
    let core = core();
    core.publish("c", "m1").await.unwrap();
    core.publish("c", "m2").await.unwrap();
    let (sub, mut rx) = subscriber("s1");
    core.attach("c", sub, StartFrom::Rewind(1)).await;
    core.publish("c", "m3").await.unwrap();
    let frames = frames(&mut rx);
    assert_eq!(seen(&frames), ["attached", "m2", "m3"]);
    assert!(frames[0].has_flag(flags::HAS_BACKLOG));
}

/// A serial the backend cannot continue from (another epoch, §5.5) attaches without RESUMED,
/// with the continuity-lost error, and nothing is replayed.
#[tokio::test(start_paused = true)]
async fn a_serial_of_another_epoch_attaches_with_continuity_lost() {
    let core = core();
    core.publish("c", "m1").await.unwrap();
    let (sub, mut rx) = subscriber("s1");
    let foreign = crate::store::format_serial("elsewhere", 1);
    core.attach("c", sub, StartFrom::Serial(foreign)).await;
    core.settle("c").await;
    let frames = frames(&mut rx);
    assert_eq!(seen(&frames), ["attached"]);
    assert!(!frames[0].has_flag(flags::RESUMED));
    assert_eq!(
        frames[0].error.as_ref().unwrap().code,
        codes::CONTINUITY_LOST
    );
}

/// A failed append NACKs its publisher with 50001 and delivers nothing; the channel goes on.
#[tokio::test(start_paused = true)]
async fn a_failed_append_is_nacked_and_never_delivered() {
    let core = core();
    let (sub, mut rx) = subscriber("s1");
    core.attach("c", sub, StartFrom::Live).await;
    core.backend.fail_appends(true);
    let failed = core.publish("c", "lost").await;
    assert_eq!(failed.unwrap_err().code, codes::INTERNAL_CHANNEL);
    core.backend.fail_appends(false);
    core.publish("c", "kept").await.unwrap();
    assert_eq!(seen(&frames(&mut rx)), ["attached", "kept"]);
}

/// A channel with no attachers and no members retires after 30 s idle; the next command starts
/// a new sequencer that continues the channel's serials.
#[tokio::test(start_paused = true)]
async fn an_idle_channel_retires_and_its_successor_continues_the_serials() {
    let core = core();
    let first = core.publish("c", "m1").await.unwrap()[0].clone().unwrap();
    assert_eq!(core.channels.active(), 1);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(core.channels.active(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(core.channels.active(), 0);
    let next = core.publish("c", "m2").await.unwrap()[0].clone().unwrap();
    let position = |s: &str| crate::store::parse_serial(s).unwrap().1;
    assert_eq!(position(&next), position(&first) + 1);
    assert_eq!(core.channels.active(), 1);
}

/// An attached channel does not retire, however long it is quiet.
#[tokio::test(start_paused = true)]
async fn an_attached_channel_does_not_retire() {
    let core = core();
    let (sub, _rx) = subscriber("s1");
    core.attach("c", sub, StartFrom::Live).await;
    core.settle("c").await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(core.channels.active(), 1);
}

/// A channel with at least `min_attachers` attachers splits its broadcasts over shards: every
/// attacher still gets every message once and in order, the publisher's own echo follows its
/// echo setting, and an attacher whose outbox overflows is dropped without holding up the
/// others.
#[tokio::test(start_paused = true)]
async fn a_split_broadcast_delivers_every_message_once_in_order() {
    let core = core();
    let mut receivers = Vec::new();
    for i in 0..5 {
        let (mut sub, rx) = subscriber(&format!("s{i}"));
        sub.echo = i != 0;
        core.attach("c", sub, StartFrom::Live).await;
        receivers.push(rx);
    }
    let (tiny, _tiny_rx) = Outbox::new(Format::Json, 200, Arc::new(Metrics::new()));
    let (mut small, _) = subscriber("small");
    small.outbox = tiny;
    core.attach("c", small, StartFrom::Live).await;
    for i in 0..20 {
        let (reply, outcome) = Reply::new();
        let publish = Publish {
            rights: Default::default(),
            messages: vec![Message {
                data: Some(protocol::Data::String(format!("m{i}"))),
                ..Default::default()
            }],
            origin: Some(Origin {
                connection_id: Arc::from("s0"),
                pm_id: format!("s0:{i}"),
            }),
            app_ids: false,
            received: Instant::now(),
            reply,
        };
        core.channels
            .send("c", Command::Publish(publish))
            .await
            .unwrap();
        outcome.await.unwrap().unwrap();
    }
    let expected: Vec<String> = std::iter::once("attached".to_owned())
        .chain((0..20).map(|i| format!("m{i}")))
        .collect();
    assert_eq!(
        seen(&frames(&mut receivers[0])),
        ["attached"],
        "no echo for s0"
    );
    for rx in &mut receivers[1..] {
        assert_eq!(seen(&frames(rx)), expected);
    }
    let (reply, answer) = oneshot::channel();
    core.channels
        .send("c", Command::Occupancy { reply })
        .await
        .unwrap();
    assert_eq!(
        answer.await.unwrap().connections,
        5,
        "the overflowing one was dropped"
    );
}
