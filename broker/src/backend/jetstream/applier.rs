//! A node's applier for one of the cluster's streams (`../shared/cluster.md` §3.3 A): an
//! ordered consumer from the last sequence in the node's view. For each run of committed
//! messages, in the stream's order, it writes them into the view (with the serial the stream
//! gave them), records how far the view goes, and only then hands each channel's messages to
//! that channel's sequencer on this node. A consumer that fails (its server died, a leader
//! election) is created again from the last sequence applied, so nothing is skipped or
//! applied twice.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::{FutureExt, StreamExt};
use protocol::Message;
use tokio::sync::watch;

use super::subject;
use super::{Delivery, Shard};
use crate::backend::local::Retention;
use crate::metrics::Metrics;
use crate::store::{format_serial, ChannelLog};

/// Most messages applied in one view write.
const MAX_RUN: usize = 1024;
/// Channels whose retention count the applier keeps; past this it forgets them all and
/// counts again as they come (a count reads the channel once).
const MAX_COUNTED_CHANNELS: usize = 65_536;

/// How long the consumer may stay silent before the applier asks the stream whether it holds
/// messages the consumer has not delivered: async-nats's ordered consumer notices a dead
/// server only after missing its 15 s idle heartbeats, 30 s in which the node would deliver
/// nothing of the stream.
const SILENCE_CHECK: Duration = Duration::from_secs(2);

/// The applier of one stream.
pub(super) struct Applier {
    pub(super) shard: Arc<Shard>,
    pub(super) js: jetstream::Context,
    pub(super) view: Arc<dyn ChannelLog>,
    pub(super) max_messages: u64,
    pub(super) age_sweeps: Arc<AtomicU64>,
    pub(super) metrics: Arc<Metrics>,
}

impl Applier {
    /// Applies until `stop` turns true.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut retention: HashMap<String, Retention> = HashMap::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = *self.shard.applied.borrow() + 1;
            let messages = tokio::select! {
                opened = self.open(from) => opened,
                _ = stop.wait_for(|s| *s) => return,
            };
            let mut messages = match messages {
                Ok(messages) => {
                    backoff = Duration::from_millis(100);
                    messages
                }
                Err(e) => {
                    tracing::warn!(stream = %self.shard.stream, error = %e, "cannot open the stream's consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let first = tokio::select! {
                    next = tokio::time::timeout(SILENCE_CHECK, messages.next()) => next,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok(first) = first else {
                    let behind = tokio::select! {
                        behind = self.left_behind() => behind,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    if behind {
                        tracing::warn!(stream = %self.shard.stream, "consumer silent while the stream went on; opening it again");
                        break;
                    }
                    continue;
                };
                let mut run = match first {
                    Some(Ok(m)) => vec![m],
                    Some(Err(e)) => {
                        tracing::warn!(stream = %self.shard.stream, error = %e, "consumer failed; opening it again");
                        break;
                    }
                    None => break,
                };
                // Whatever else has arrived joins this run.
                while run.len() < MAX_RUN {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(m))) => run.push(m),
                        _ => break,
                    }
                }
                self.apply(run, &mut retention).await;
            }
        }
    }

    /// Whether the stream holds a message after the last one applied, which a working
    /// consumer would have delivered by now; `false` when JetStream does not answer (during
    /// an election the consumer is not the problem).
    async fn left_behind(&self) -> bool {
        let Ok(mut stream) = self.js.get_stream(&self.shard.stream).await else {
            return false;
        };
        let Ok(info) = stream.info().await else {
            return false;
        };
        info.state.messages > 0 && info.state.last_sequence > *self.shard.applied.borrow()
    }

    async fn open(&self, from: u64) -> Result<consumer::pull::Ordered, String> {
        let stream = self
            .js
            .get_stream(&self.shard.stream)
            .await
            .map_err(|e| e.to_string())?;
        let deliver_policy = if from <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            }
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    }

    /// Writes one run into the view, then hands it to the sequencers.
    async fn apply(
        &self,
        run: Vec<jetstream::Message>,
        retention: &mut HashMap<String, Retention>,
    ) {
        let applied = *self.shard.applied.borrow();
        let mut last = applied;
        // What the stream holds past this run, as its consumer says with the last message.
        if let Some(pending) = run.last().and_then(|m| m.info().ok()).map(|i| i.pending) {
            self.metrics
                .cluster_apply_lag
                .with_label_values(&[&self.shard.stream])
                .set(pending.try_into().unwrap_or(i64::MAX));
        }
        // Per channel, in order of first appearance; each channel's messages in stream order.
        let mut channels: Vec<(String, Vec<(u64, Message)>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for m in run {
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            if seq <= last {
                continue;
            }
            last = seq;
            let Some(channel) = subject::channel_of(m.subject.as_str()) else {
                tracing::warn!(subject = %m.subject, "message on an unknown subject skipped");
                continue;
            };
            let mut message: Message = match rmp_serde::from_slice(&m.payload) {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(%channel, seq, error = %e, "undecodable message skipped");
                    continue;
                }
            };
            message.place(format_serial(&self.shard.epoch, seq));
            let at = *index.entry(channel.clone()).or_insert_with(|| {
                channels.push((channel, Vec::new()));
                channels.len() - 1
            });
            channels[at].1.push((seq, message));
        }
        if last == applied {
            return;
        }
        let count: usize = channels.iter().map(|(_, rows)| rows.len()).sum();
        // The view write is blocking; retention counts travel with it.
        let view = self.view.clone();
        let max = self.max_messages;
        let sweeps = self.age_sweeps.clone();
        let mut counts = std::mem::take(retention);
        let (channels, counts) = tokio::task::spawn_blocking(move || {
            if counts.len() > MAX_COUNTED_CHANNELS {
                counts.clear();
            }
            for (channel, rows) in &channels {
                let refs: Vec<(u64, &Message)> = rows.iter().map(|(s, m)| (*s, m)).collect();
                if let Err(e) = view.append(channel, &refs) {
                    tracing::error!(%channel, error = %e, "cluster view write failed");
                    continue;
                }
                counts
                    .entry(channel.clone())
                    .or_insert_with(|| Retention::new(channel, max, sweeps.clone()))
                    .after_append(view.as_ref(), channel, rows.len() as u64);
            }
            (channels, counts)
        })
        .await
        .expect("view write task");
        *retention = counts;
        self.shard.applied.send_replace(last);
        self.metrics.cluster_applied.inc_by(count as u64);
        // Then the sequencers on this node, taken under the feed lock (see `open`).
        let feeds: Vec<_> = {
            let state = self.shard.state.lock().expect("shard state");
            channels
                .into_iter()
                .filter_map(|(channel, rows)| {
                    state
                        .feeds
                        .get(&channel)
                        .map(|feed| (feed.sender.clone(), rows))
                })
                .collect()
        };
        for (sender, rows) in feeds {
            // A sequencer that retired meanwhile has read the view instead.
            let _ = sender.send(Delivery::Messages(rows)).await;
        }
    }
}
