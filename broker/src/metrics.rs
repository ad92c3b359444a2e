//! Prometheus metrics, registered once in a private registry and served as text on
//! `GET /metrics`. Names are prefixed `broker_`; `docs/operations.md` lists them.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::store::CheckpointHealth;

/// Every metric the broker keeps.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Channel attachments across all connections.
    pub attached_channels: IntGauge,
    /// Channels with a running sequencer.
    pub active_channels: IntGauge,
    /// Messages accepted from publishers (realtime and REST).
    pub messages_in: IntCounter,
    /// Live MESSAGE frames delivered to subscribers (one per published ProtocolMessage per
    /// subscriber; replays not counted).
    pub messages_out: IntCounter,
    /// Bytes of frames received.
    pub bytes_in: IntCounter,
    /// Bytes of frames sent.
    pub bytes_out: IntCounter,
    /// Time from receiving a publish to sending its ACK (seconds).
    pub publish_ack_latency: Histogram,
    /// Time to enqueue a batch to every subscriber (seconds).
    pub fanout_latency: Histogram,
    /// Appends made durable by one fsync.
    pub log_commit_batch: Histogram,
    /// How long one group commit's sync took (seconds).
    pub log_sync_duration: Histogram,
    /// Connections dropped because their outbox was full.
    pub slow_consumer_disconnects: IntCounter,
    /// Resume attempts by result (`succeeded`, `failed`).
    pub resumes: IntCounterVec,
    /// Publishes refused, by error code.
    pub nacks: IntCounterVec,
    /// Calls to the moderation endpoint, by outcome (`accepted`, `rejected`, `failed`).
    pub moderation_reviews: IntCounterVec,
    /// Presence members across all channels.
    pub presence_members: IntGauge,
    /// Presence events broadcast, by action (`enter`, `update`, `leave`).
    pub presence_events: IntCounterVec,
    /// Presence SYNC pages sent.
    pub sync_pages: IntCounter,
    /// Seconds since the log's last successful checkpoint (set when `/metrics` is read).
    pub log_checkpoint_age: Gauge,
    /// Seconds the last successful checkpoint took.
    pub log_checkpoint_duration: Gauge,
    /// Checkpoints failed since the last that succeeded.
    pub log_checkpoint_failures: IntGauge,
    /// Cluster mode: messages the appliers wrote into this node's view.
    pub cluster_applied: IntCounter,
    /// Cluster mode: time from sending a batch of publishes to JetStream to the last PubAck
    /// (seconds), retries included.
    pub cluster_publish_latency: Histogram,
    /// Cluster mode: JetStream publishes that failed (each retry counts).
    pub cluster_publish_errors: IntCounter,
    /// Cluster mode: messages of each stream not yet in this node's view, as the stream's
    /// consumer last reported (label `stream`).
    pub cluster_apply_lag: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let seconds = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let latency = prometheus::exponential_buckets(0.000_05, 2.0, 18).expect("valid buckets");
        Metrics {
            connections: gauge("broker_connections", "Open WebSocket connections"),
            attached_channels: gauge("broker_attached_channels", "Channel attachments"),
            active_channels: gauge(
                "broker_active_channels",
                "Channels with a running sequencer",
            ),
            messages_in: counter(
                "broker_messages_in_total",
                "Messages accepted from publishers",
            ),
            messages_out: counter(
                "broker_messages_out_total",
                "Message deliveries to subscribers",
            ),
            bytes_in: counter("broker_bytes_in_total", "Bytes of frames received"),
            bytes_out: counter("broker_bytes_out_total", "Bytes of frames sent"),
            publish_ack_latency: histogram(
                "broker_publish_ack_latency_seconds",
                "Time from receiving a publish to its ACK",
                latency.clone(),
            ),
            cluster_applied: counter(
                "broker_cluster_applied_total",
                "Cluster mode: messages the appliers wrote into this node's view",
            ),
            cluster_publish_latency: histogram(
                "broker_cluster_publish_latency_seconds",
                "Cluster mode: time from sending a batch of publishes to JetStream to the last PubAck",
                latency.clone(),
            ),
            cluster_publish_errors: counter(
                "broker_cluster_publish_errors_total",
                "Cluster mode: JetStream publishes that failed (each retry counts)",
            ),
            cluster_apply_lag: {
                let opts = Opts::new(
                    "broker_cluster_apply_lag",
                    "Cluster mode: messages of each stream not yet in this node's view",
                );
                let g = IntGaugeVec::new(opts, &["stream"]).expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            fanout_latency: histogram(
                "broker_fanout_latency_seconds",
                "Time to enqueue a batch to every subscriber",
                latency.clone(),
            ),
            log_sync_duration: histogram(
                "broker_log_sync_seconds",
                "How long one group commit's sync (fsync) took",
                latency,
            ),
            log_commit_batch: histogram(
                "broker_log_commit_batch_size",
                "Appends made durable by one fsync",
                prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
            ),
            slow_consumer_disconnects: counter(
                "broker_slow_consumer_disconnects_total",
                "Connections dropped because their outbox was full",
            ),
            resumes: counter_vec(
                "broker_resumes_total",
                "Resume attempts by result",
                "result",
            ),
            nacks: counter_vec(
                "broker_nacks_total",
                "Publishes refused, by error code",
                "code",
            ),
            moderation_reviews: counter_vec(
                "broker_moderation_reviews_total",
                "Calls to the moderation endpoint, by outcome",
                "outcome",
            ),
            presence_members: gauge(
                "broker_presence_members",
                "Presence members across all channels",
            ),
            presence_events: counter_vec(
                "broker_presence_events_total",
                "Presence events broadcast, by action",
                "action",
            ),
            sync_pages: counter(
                "broker_presence_sync_pages_total",
                "Presence SYNC pages sent",
            ),
            log_checkpoint_age: seconds(
                "broker_log_checkpoint_age_seconds",
                "Seconds since the log's last successful checkpoint",
            ),
            log_checkpoint_duration: seconds(
                "broker_log_checkpoint_duration_seconds",
                "Seconds the last successful checkpoint took",
            ),
            log_checkpoint_failures: gauge(
                "broker_log_checkpoint_failures",
                "Checkpoints failed since the last that succeeded",
            ),
            registry,
        }
    }

    /// Sets the checkpoint gauges from `health` (the log's, read when `/metrics` is served).
    pub fn observe_checkpoints(&self, health: CheckpointHealth) {
        self.log_checkpoint_age.set(health.age.as_secs_f64());
        self.log_checkpoint_duration
            .set(health.last_duration.as_secs_f64());
        self.log_checkpoint_failures
            .set(i64::try_from(health.failures_in_a_row).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
