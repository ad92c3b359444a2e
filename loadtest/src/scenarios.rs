//! The scenarios. Each builds its actors, runs an open-loop schedule for the measuring window
//! (or, for durable-publish, as fast as acknowledgements allow), waits for the finish
//! condition, and returns a [`RunReport`]. All but resume-storm and presence-churn, which need
//! protocol features NATS lacks, run unchanged against both targets.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};
use protocol::PresenceAction;
use tokio::task::JoinHandle;

use crate::ably;
use crate::actor::{close_all, open_many, Client, Target};
use crate::clock;
use crate::finish::Finish;
use crate::nats;
use crate::rate::Pacer;
use crate::recorder::{ProcessProbe, Recorder, Sampler};
use crate::report::RunReport;

/// What every scenario needs to know about the run.
#[derive(Clone, Debug)]
pub struct Context {
    /// The system under test.
    pub target: Target,
    /// Its process, for CPU and RSS.
    pub probe: Option<ProcessProbe>,
    /// The measuring window.
    pub window: Duration,
    /// Payload size in bytes.
    pub payload: usize,
    /// How many connections to open at once.
    pub connect_concurrency: usize,
}

/// The scale of every scenario; perf.sh picks values that fit its machine.
#[derive(Clone, Debug, clap::Args)]
pub struct Scale {
    /// fanout: subscribers of the one channel.
    #[arg(long, default_value_t = 1000)]
    pub fanout_subscribers: usize,
    /// fanout: messages per second from the one publisher.
    #[arg(long, default_value_t = 50.0)]
    pub fanout_rate: f64,
    /// chat-rooms: number of rooms.
    #[arg(long, default_value_t = 100)]
    pub chat_rooms: usize,
    /// chat-rooms: members per room, each a connection that publishes and subscribes.
    #[arg(long, default_value_t = 10)]
    pub chat_members: usize,
    /// chat-rooms: messages per second per member.
    #[arg(long, default_value_t = 1.0)]
    pub chat_rate: f64,
    /// many-channels: channels, each with one subscriber.
    #[arg(long, default_value_t = 10_000)]
    pub channels: usize,
    /// many-channels: subscriber connections the channels are spread over.
    #[arg(long, default_value_t = 100)]
    pub channel_subscribers: usize,
    /// many-channels: total messages per second, round-robin over the channels.
    #[arg(long, default_value_t = 5000.0)]
    pub channels_rate: f64,
    /// connect-storm: connections to open and hold idle.
    #[arg(long, default_value_t = 10_000)]
    pub storm_connections: usize,
    /// connect-storm: how long they stay idle before memory is read, seconds.
    #[arg(long, default_value_t = 5)]
    pub storm_idle_s: u64,
    /// resume-storm: connections cut at once.
    #[arg(long, default_value_t = 10_000)]
    pub resume_connections: usize,
    /// resume-storm: channels they subscribe to (spread evenly).
    #[arg(long, default_value_t = 100)]
    pub resume_channels: usize,
    /// resume-storm: messages per second per channel.
    #[arg(long, default_value_t = 2.0)]
    pub resume_rate: f64,
    /// presence-churn: rooms.
    #[arg(long, default_value_t = 50)]
    pub presence_rooms: usize,
    /// presence-churn: members per room, each a connection alternating enter and leave.
    #[arg(long, default_value_t = 20)]
    pub presence_members: usize,
    /// presence-churn: presence operations per second per member.
    #[arg(long, default_value_t = 1.0)]
    pub presence_rate: f64,
    /// durable-publish: publishing connections, each on its own channel.
    #[arg(long, default_value_t = 4)]
    pub durable_publishers: usize,
    /// durable-publish: unacknowledged publishes each keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub durable_window: usize,
    /// soak: number of rooms (the chat-rooms shape, held for `--duration`).
    #[arg(long, default_value_t = 100)]
    pub soak_rooms: usize,
    /// soak: members per room, each a connection that publishes and subscribes.
    #[arg(long, default_value_t = 10)]
    pub soak_members: usize,
    /// soak: messages per second per member.
    #[arg(long, default_value_t = 1.0)]
    pub soak_rate: f64,
    /// soak: seconds per reported interval (one line each: rate, latency, RSS).
    #[arg(long, default_value_t = 10)]
    pub soak_interval: u64,
    /// soak: seconds to keep reading the broker's RSS after every connection closed.
    #[arg(long, default_value_t = 30)]
    pub soak_idle: u64,
}

fn params(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// A running publisher; it hands back its client and the last number sent on each channel.
pub type PublisherTask = JoinHandle<(Client, Vec<(String, u64)>)>;

/// An open-loop publisher: `rate` messages per second round-robin over `channels`, numbered
/// per channel from 1. Returns the client and the last number sent on each channel.
fn spawn_publisher(
    client: Client,
    channels: Vec<String>,
    rate: f64,
    start: Instant,
    deadline: Instant,
    payload: usize,
    recorder: Arc<Recorder>,
) -> PublisherTask {
    tokio::spawn(async move {
        let mut pacer = Pacer::new(rate, start);
        let mut seqs = vec![0u64; channels.len()];
        let mut next = 0;
        while pacer.next_due() < deadline {
            let due = pacer.tick().await;
            let i = next % channels.len();
            next += 1;
            seqs[i] += 1;
            match client
                .publish(&channels[i], clock::payload(due, seqs[i], payload))
                .await
            {
                Ok(()) => recorder.sent(),
                Err(e) => recorder.error(e),
            }
        }
        (client, channels.into_iter().zip(seqs).collect())
    })
}

/// Starts every publisher of `publishers` (client, channels, rate) from `start` until
/// `deadline`, staggered across one interval of its rate (at most a second) so they do not
/// all fire together.
pub fn spawn_staggered(
    publishers: Vec<(Client, Vec<String>, f64)>,
    start: Instant,
    deadline: Instant,
    payload: usize,
    recorder: &Arc<Recorder>,
) -> Vec<PublisherTask> {
    let n = publishers.len().max(1) as f64;
    publishers
        .into_iter()
        .enumerate()
        .map(|(k, (client, channels, rate))| {
            let offset = Duration::from_secs_f64(k as f64 / n / rate.max(1e-9));
            let offset = offset.min(Duration::from_secs(1));
            spawn_publisher(
                client,
                channels,
                rate,
                start + offset,
                deadline,
                payload,
                recorder.clone(),
            )
        })
        .collect()
}

/// The shared tail of every delivery scenario: window, drain, report.
async fn measure_deliveries(
    ctx: &Context,
    scenario: &str,
    params: BTreeMap<String, f64>,
    recorder: Arc<Recorder>,
    publishers: Vec<(Client, Vec<String>, f64)>,
    fan: u64,
) -> (RunReport, Vec<Client>) {
    let finish = Finish::start(&format!("{scenario} / {}", ctx.target.name()), ctx.window);
    recorder.reset_latency();
    let sampler = Sampler::start(recorder.clone(), ctx.probe);
    let start = Instant::now();
    let tasks = spawn_staggered(publishers, start, finish.deadline(), ctx.payload, &recorder);
    finish.wait_window(&recorder).await;
    let mut clients = Vec::new();
    for t in tasks {
        if let Ok((client, _)) = t.await {
            clients.push(client);
        }
    }
    let window = start.elapsed();
    let sent = recorder.sent.load(Ordering::Relaxed);
    let expected = sent * fan;
    finish.say("draining");
    finish
        .drain(&recorder, expected, Duration::from_secs(3))
        .await;
    finish.done();
    let samples = sampler.finish().await;
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut report = RunReport {
        scenario: scenario.to_owned(),
        target: ctx.target.name().to_owned(),
        params,
        window_s: window.as_secs_f64(),
        sent,
        delivered,
        expected: Some(expected),
        lost: Some(expected.saturating_sub(delivered)),
        delivered_per_s: delivered as f64 / window.as_secs_f64(),
        latency: recorder.latency(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples,
        ..Default::default()
    };
    report.summarise_server();
    (report, clients)
}

/// 1 publisher → N subscribers on one channel.
pub async fn fanout(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let channel = "fanout-0".to_owned();
    let subs = open_many(
        &ctx.target,
        1,
        scale.fanout_subscribers,
        ctx.connect_concurrency,
        &recorder,
        false,
        |_| vec![channel.clone()],
    )
    .await;
    let publisher = match Client::open(&ctx.target, 0, &recorder, false).await {
        Ok(p) => vec![(p, vec![channel.clone()], scale.fanout_rate)],
        Err(e) => {
            recorder.error(e);
            Vec::new()
        }
    };
    let fan = subs.len() as u64;
    let (report, pubs) = measure_deliveries(
        ctx,
        "fanout",
        params(&[
            ("subscribers", scale.fanout_subscribers as f64),
            ("rate", scale.fanout_rate),
        ]),
        recorder,
        publisher,
        fan,
    )
    .await;
    close_all(subs.into_iter().map(|(_, c)| c)).await;
    close_all(pubs).await;
    report
}

/// R rooms × M members, every member publishing at rate r and receiving the whole room.
pub async fn chat_rooms(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let m = scale.chat_members.max(1);
    let room = move |i: usize| format!("room-{}", i / m);
    let members = open_many(
        &ctx.target,
        0,
        scale.chat_rooms * m,
        ctx.connect_concurrency,
        &recorder,
        false,
        |i| vec![room(i)],
    )
    .await;
    let publishers: Vec<(Client, Vec<String>, f64)> = members
        .into_iter()
        .map(|(i, c)| (c, vec![room(i)], scale.chat_rate))
        .collect();
    let (report, clients) = measure_deliveries(
        ctx,
        "chat-rooms",
        params(&[
            ("rooms", scale.chat_rooms as f64),
            ("members", m as f64),
            ("rate_per_member", scale.chat_rate),
        ]),
        recorder,
        publishers,
        m as u64,
    )
    .await;
    close_all(clients).await;
    report
}

/// C channels with one subscriber each, spread over S connections; four publishers
/// round-robin over them.
pub async fn many_channels(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let s = scale.channel_subscribers.max(1);
    let c = scale.channels.max(1);
    let subs = open_many(
        &ctx.target,
        10,
        s,
        ctx.connect_concurrency.min(32),
        &recorder,
        false,
        |i| {
            ((i - 10)..c)
                .step_by(s)
                .map(|j| format!("ch-{j}"))
                .collect()
        },
    )
    .await;
    let publisher_count = 4;
    let mut publishers = Vec::new();
    for p in 0..publisher_count {
        match Client::open(&ctx.target, p, &recorder, false).await {
            Ok(client) => publishers.push((
                client,
                (p..c)
                    .step_by(publisher_count)
                    .map(|j| format!("ch-{j}"))
                    .collect(),
                scale.channels_rate / publisher_count as f64,
            )),
            Err(e) => recorder.error(e),
        }
    }
    let (report, pubs) = measure_deliveries(
        ctx,
        "many-channels",
        params(&[
            ("channels", c as f64),
            ("subscriber_connections", s as f64),
            ("rate", scale.channels_rate),
        ]),
        recorder,
        publishers,
        1,
    )
    .await;
    close_all(subs.into_iter().map(|(_, c)| c)).await;
    close_all(pubs).await;
    report
}

/// Opens connections as fast as the target accepts them and holds them idle; reports
/// connections/s and the server's memory per idle connection.
pub async fn connect_storm(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let rss_before = ctx.probe.and_then(|p| p.rss_bytes());
    let finish = Finish::start(
        &format!("connect-storm / {}", ctx.target.name()),
        Duration::from_secs(scale.storm_idle_s),
    );
    finish.say(format!("opening {} connections", scale.storm_connections));
    let sampler = Sampler::start(recorder.clone(), ctx.probe);
    let start = Instant::now();
    let clients = open_many(
        &ctx.target,
        100,
        scale.storm_connections,
        ctx.connect_concurrency,
        &recorder,
        false,
        |_| Vec::new(),
    )
    .await;
    let open_time = start.elapsed();
    let idle = Finish::start(
        &format!("connect-storm / {} idle", ctx.target.name()),
        Duration::from_secs(scale.storm_idle_s),
    );
    idle.wait_window(&recorder).await;
    idle.done();
    finish.done();
    let rss_after = ctx.probe.and_then(|p| p.rss_bytes());
    let samples = sampler.finish().await;
    let opened = clients.len();
    close_all(clients.into_iter().map(|(_, c)| c)).await;
    let mut report = RunReport {
        scenario: "connect-storm".to_owned(),
        target: ctx.target.name().to_owned(),
        params: params(&[("connections", scale.storm_connections as f64)]),
        window_s: open_time.as_secs_f64(),
        sent: scale.storm_connections as u64,
        delivered: opened as u64,
        expected: Some(scale.storm_connections as u64),
        lost: Some((scale.storm_connections - opened) as u64),
        delivered_per_s: opened as f64 / open_time.as_secs_f64(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples,
        ..Default::default()
    };
    report
        .extra
        .insert("connections_per_s".into(), report.delivered_per_s);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = after.saturating_sub(before) as f64 / opened.max(1) as f64;
        report
            .extra
            .insert("server_bytes_per_idle_connection".into(), per);
    }
    report.notes.push(
        "deliveries/s here is connections opened per second; lost = connections that failed".into(),
    );
    report.summarise_server();
    report
}

/// Cuts K subscribed connections at once while publishing continues; every one resumes
/// (§4.6, §5.6). Reports the time until all re-attached and the messages lost (must be 0).
pub async fn resume_storm(ctx: &Context, scale: &Scale) -> RunReport {
    let Target::Broker(endpoint) = &ctx.target else {
        return RunReport::default();
    };
    let recorder = Recorder::shared();
    let k = scale.resume_connections;
    let ch = scale.resume_channels.max(1);
    let channel = move |i: usize| format!("resume-{}", i % ch);
    let subs = open_many(
        &ctx.target,
        100,
        k,
        ctx.connect_concurrency,
        &recorder,
        true,
        |i| vec![channel(i)],
    )
    .await;
    let names: Vec<String> = (0..ch).map(channel).collect();
    let publisher = match Client::open(&ctx.target, 0, &recorder, false).await {
        Ok(p) => p,
        Err(e) => {
            recorder.error(e);
            return RunReport::default();
        }
    };
    let window = ctx.window.max(Duration::from_secs(10));
    let finish = Finish::start(&format!("resume-storm / {}", ctx.target.name()), window);
    let sampler = Sampler::start(recorder.clone(), ctx.probe);
    let start = Instant::now();
    let publishing = spawn_publisher(
        publisher,
        names,
        scale.resume_rate * ch as f64,
        start,
        finish.deadline(),
        ctx.payload,
        recorder.clone(),
    );
    tokio::time::sleep(window / 3).await;
    finish.say(format!("cutting {k} connections"));
    // Cut every connection first, then resume them all: the broker sees K drops at once.
    let cut: Vec<(usize, String, String, Arc<ably::Session>)> = subs
        .into_iter()
        .filter_map(|(i, c)| match c {
            Client::Ably(c) => {
                let id = c.connection_id.clone();
                let key = c.connection_key.clone();
                Some((i, id, key, c.cut()))
            }
            Client::Nats(..) => None,
        })
        .collect();
    let cut_at = Instant::now();
    finish.say(format!("resuming {k} connections"));
    let resumed: Vec<Result<(ably::Connection, bool), String>> = stream::iter(cut)
        .map(|(i, id, key, session)| {
            let name = channel(i);
            async move {
                let conn = ably::Connection::open(endpoint, i, session, Some(&key)).await?;
                let attached = conn.attach(&name).await?;
                let ok = conn.connection_id == id && ably::resumed(&attached);
                Ok((conn, ok))
            }
        })
        .buffer_unordered(ctx.connect_concurrency)
        .collect()
        .await;
    let resume_time = cut_at.elapsed();
    let mut conns = Vec::new();
    let mut not_resumed = 0u64;
    for r in resumed {
        match r {
            Ok((c, ok)) => {
                if !ok {
                    not_resumed += 1;
                }
                conns.push(c);
            }
            Err(e) => {
                recorder.error(e);
                not_resumed += 1;
            }
        }
    }
    finish.wait_window(&recorder).await;
    let (publisher, last) = match publishing.await {
        Ok(v) => v,
        Err(_) => return RunReport::default(),
    };
    let sent = recorder.sent.load(Ordering::Relaxed);
    let per_channel = (k / ch) as u64;
    let expected = sent * per_channel;
    finish.say("draining");
    finish
        .drain(&recorder, expected, Duration::from_secs(5))
        .await;
    finish.done();
    let samples = sampler.finish().await;
    // Lost = gaps inside each sequence plus whatever never arrived at the end.
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    for c in &conns {
        let s = c.session();
        lost += s.lost.load(Ordering::Relaxed);
        duplicates += s.duplicates.load(Ordering::Relaxed);
    }
    for c in &conns {
        let s = c.session();
        for (name, last_sent) in &last {
            if let Some(seen) = s.last_sequence(name) {
                lost += last_sent.saturating_sub(seen);
            }
        }
    }
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut report = RunReport {
        scenario: "resume-storm".to_owned(),
        target: ctx.target.name().to_owned(),
        params: params(&[
            ("connections", k as f64),
            ("channels", ch as f64),
            ("rate_per_channel", scale.resume_rate),
        ]),
        window_s: start.elapsed().as_secs_f64(),
        sent,
        delivered,
        expected: Some(expected),
        lost: Some(lost),
        delivered_per_s: delivered as f64 / window.as_secs_f64(),
        latency: recorder.latency(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples,
        ..Default::default()
    };
    report.extra.insert(
        "seconds_until_all_resumed".into(),
        resume_time.as_secs_f64(),
    );
    report
        .extra
        .insert("connections_not_resumed".into(), not_resumed as f64);
    report.extra.insert("duplicates".into(), duplicates as f64);
    report.notes.push(
        "lost counts sequence gaps per subscriber plus messages never delivered; latency includes the replay after resume".into(),
    );
    report.summarise_server();
    stream::iter(conns)
        .for_each_concurrent(256, |c| c.close())
        .await;
    publisher.close().await;
    report
}

/// R rooms × M members, each alternating presence enter and leave at a fixed rate; latency
/// is scheduled time → ACK, deliveries are presence events received.
pub async fn presence_churn(ctx: &Context, scale: &Scale) -> RunReport {
    if !matches!(ctx.target, Target::Broker(_)) {
        return RunReport::default();
    }
    let recorder = Recorder::shared();
    let m = scale.presence_members.max(1);
    let room = move |i: usize| format!("presence-{}", i / m);
    let members = open_many(
        &ctx.target,
        100,
        scale.presence_rooms * m,
        ctx.connect_concurrency,
        &recorder,
        false,
        |i| vec![room(i - 100)],
    )
    .await;
    let finish = Finish::start(
        &format!("presence-churn / {}", ctx.target.name()),
        ctx.window,
    );
    recorder.reset_latency();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = Sampler::start(recorder.clone(), ctx.probe);
    let start = Instant::now();
    let n = members.len().max(1);
    let deadline = finish.deadline();
    let tasks: Vec<JoinHandle<Client>> = members
        .into_iter()
        .map(|(i, client)| {
            let recorder = recorder.clone();
            let acked = acked.clone();
            let rate = scale.presence_rate;
            let offset = Duration::from_secs_f64((i % n) as f64 / n as f64 / rate.max(1e-9));
            tokio::spawn(async move {
                let Client::Ably(conn) = &client else {
                    return client;
                };
                let mut pacer = Pacer::new(rate, start + offset.min(Duration::from_secs(1)));
                let client_id = format!("member-{i}");
                let channel = room(i - 100);
                let mut entered = false;
                let mut pending = FuturesUnordered::new();
                while pacer.next_due() < deadline {
                    let due = tokio::select! {
                        due = pacer.tick() => due,
                        Some(()) = pending.next() => continue,
                    };
                    let action = if entered {
                        PresenceAction::Leave
                    } else {
                        PresenceAction::Enter
                    };
                    entered = !entered;
                    recorder.sent();
                    match conn.presence(&channel, action, &client_id) {
                        Ok(rx) => {
                            let recorder = recorder.clone();
                            let acked = acked.clone();
                            let scheduled = clock::micros_at(due);
                            pending.push(async move {
                                match rx.await {
                                    Ok(Ok(())) => {
                                        recorder.latency_us(
                                            clock::now_micros().saturating_sub(scheduled),
                                        );
                                        acked.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok(Err(e)) => recorder.error(e),
                                    Err(_) => recorder.error("presence: connection dropped"),
                                }
                            });
                        }
                        Err(e) => recorder.error(e),
                    }
                }
                while pending.next().await.is_some() {}
                client
            })
        })
        .collect();
    finish.wait_window(&recorder).await;
    let mut clients = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await {
            clients.push(c);
        }
    }
    let window = start.elapsed();
    finish.done();
    let samples = sampler.finish().await;
    let sent = recorder.sent.load(Ordering::Relaxed);
    let acked = acked.load(Ordering::Relaxed);
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut report = RunReport {
        scenario: "presence-churn".to_owned(),
        target: ctx.target.name().to_owned(),
        params: params(&[
            ("rooms", scale.presence_rooms as f64),
            ("members", m as f64),
            ("ops_per_member_per_s", scale.presence_rate),
        ]),
        window_s: window.as_secs_f64(),
        sent,
        delivered,
        expected: Some(sent),
        lost: Some(sent.saturating_sub(acked)),
        delivered_per_s: delivered as f64 / window.as_secs_f64(),
        latency: recorder.latency(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples,
        ..Default::default()
    };
    report.extra.insert(
        "acked_ops_per_s".into(),
        acked as f64 / window.as_secs_f64(),
    );
    report.notes.push(
        "deliveries/s = presence events received by members; latency = scheduled op → ACK; lost = ops not ACKed".into(),
    );
    report.summarise_server();
    close_all(clients).await;
    report
}

/// P publishers, each keeping W publishes in flight and sending the next as soon as one is
/// acknowledged: the broker ACKs after fsync; the peer is JetStream with file storage.
pub async fn durable_publish(ctx: &Context, scale: &Scale) -> RunReport {
    let recorder = Recorder::shared();
    let p = scale.durable_publishers.max(1);
    let w = scale.durable_window.max(1);
    let target_name = match ctx.target {
        Target::Broker(_) => "broker",
        Target::Nats(_) => "jetstream",
    };
    let finish = Finish::start(&format!("durable-publish / {target_name}"), ctx.window);
    let sampler = Sampler::start(recorder.clone(), ctx.probe);
    let start = Instant::now();
    let deadline = finish.deadline();
    let mut tasks = Vec::new();
    let mut js_setup = None;
    if let Target::Nats(url) = &ctx.target {
        match nats::connect(url).await {
            Ok(c) => match nats::durable_stream(&c).await {
                Ok(js) => js_setup = Some((c, js)),
                Err(e) => recorder.error(e),
            },
            Err(e) => recorder.error(e),
        }
    }
    for i in 0..p {
        let recorder = recorder.clone();
        let target = ctx.target.clone();
        let size = ctx.payload;
        let js_ok = js_setup.is_some();
        tasks.push(tokio::spawn(async move {
            match target {
                Target::Broker(endpoint) => {
                    let session = ably::Session::new(recorder.clone(), false);
                    let conn = match ably::Connection::open(&endpoint, i, session, None).await {
                        Ok(c) => c,
                        Err(e) => return recorder.error(e),
                    };
                    let channel = format!("durable-{i}");
                    let mut in_flight = FuturesUnordered::new();
                    let mut seq = 0;
                    while Instant::now() < deadline {
                        // Refill the window in one burst: the ACKs of a group commit come
                        // together, and so do the publishes that replace them.
                        let sent_at = Instant::now();
                        let room = w - in_flight.len();
                        let payloads = (0..room).map(|_| {
                            seq += 1;
                            clock::payload(sent_at, seq, size)
                        });
                        match conn.publish_acked_burst(&channel, payloads) {
                            Ok(receivers) => {
                                for rx in receivers {
                                    recorder.sent();
                                    in_flight.push(async move { (sent_at, rx.await) });
                                }
                            }
                            Err(e) => return recorder.error(e),
                        }
                        let mut settled = in_flight.next().await;
                        while let Some((sent_at, outcome)) = settled {
                            ack_outcome(
                                &recorder,
                                sent_at,
                                outcome.map_err(|_| "dropped".into()).and_then(|r| r),
                            );
                            settled = in_flight.next().now_or_never().flatten();
                        }
                    }
                    while let Some((sent_at, outcome)) = in_flight.next().await {
                        ack_outcome(
                            &recorder,
                            sent_at,
                            outcome.map_err(|_| "dropped".into()).and_then(|r| r),
                        );
                    }
                    conn.close().await;
                }
                Target::Nats(url) => {
                    if !js_ok {
                        return;
                    }
                    let client = match nats::connect(&url).await {
                        Ok(c) => c,
                        Err(e) => return recorder.error(e),
                    };
                    let js = async_nats::jetstream::new(client);
                    let subject = format!("durable.{i}");
                    let mut in_flight = FuturesUnordered::new();
                    let mut seq = 0;
                    while Instant::now() < deadline {
                        while in_flight.len() < w {
                            seq += 1;
                            let sent_at = Instant::now();
                            match js
                                .publish(subject.clone(), clock::payload(sent_at, seq, size))
                                .await
                            {
                                Ok(ack) => {
                                    recorder.sent();
                                    in_flight.push(async move { (sent_at, ack.await) });
                                }
                                Err(e) => return recorder.error(format!("jetstream publish: {e}")),
                            }
                        }
                        if let Some((sent_at, outcome)) = in_flight.next().await {
                            ack_outcome(
                                &recorder,
                                sent_at,
                                outcome.map(|_| ()).map_err(|e| e.to_string()),
                            );
                        }
                    }
                    while let Some((sent_at, outcome)) = in_flight.next().await {
                        ack_outcome(
                            &recorder,
                            sent_at,
                            outcome.map(|_| ()).map_err(|e| e.to_string()),
                        );
                    }
                }
            }
        }));
    }
    finish.wait_window(&recorder).await;
    for t in tasks {
        let _ = t.await;
    }
    let window = start.elapsed();
    finish.done();
    let samples = sampler.finish().await;
    let sent = recorder.sent.load(Ordering::Relaxed);
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let mut report = RunReport {
        scenario: "durable-publish".to_owned(),
        target: target_name.to_owned(),
        params: params(&[("publishers", p as f64), ("window", w as f64)]),
        window_s: window.as_secs_f64(),
        sent,
        delivered,
        expected: Some(sent),
        lost: Some(sent.saturating_sub(delivered)),
        delivered_per_s: delivered as f64 / window.as_secs_f64(),
        latency: recorder.latency(),
        errors: recorder.errors.load(Ordering::Relaxed),
        first_errors: recorder.first_errors(),
        samples,
        ..Default::default()
    };
    report.notes.push(
        "closed loop by design: deliveries/s = acknowledged publishes per second; latency = send → ACK".into(),
    );
    report.summarise_server();
    if let Some((client, js)) = js_setup {
        let _ = js.delete_stream("DURABLE").await;
        drop(client);
    }
    report
}

fn ack_outcome(recorder: &Recorder, sent_at: Instant, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            recorder.latency_us(sent_at.elapsed().as_micros() as u64);
            recorder.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => recorder.error(e),
    }
}
