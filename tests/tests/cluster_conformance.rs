//! The backend conformance suite (`broker/src/backend/conformance`) on the cluster backend:
//! a JetStream backend on a real nats-server, with its node's view in a temporary directory.
//! Each check gets its own server. The failure check of the single-node backends is not run:
//! a JetStream publish that fails may still be stored, and is answered with its first serial
//! when it is sent again with the same id, which the cluster failure tests check instead.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use broker::backend::conformance::{self as checks, Fixture, KEEP};
use broker::backend::jetstream::{self, JetStreamBackend};
use broker::backend::Backend;
use broker::config::{ClusterSettings, Retention};
use broker::metrics::Metrics;
use broker::store::sled_log::SledLog;
use broker::store::Database;
use tests::nats::NatsCluster;

/// A cluster node's backend on its own nats-server cluster.
struct Cluster {
    backend: Arc<JetStreamBackend>,
    _nats: NatsCluster,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(servers: usize) -> Cluster {
        let nats = NatsCluster::start(servers).await;
        let data = tempfile::tempdir().unwrap();
        let dir = jetstream::prepare_view(data.path()).unwrap();
        let (messages, presence) =
            SledLog::open_logs_on(&Database::open(&dir, 1 << 20).unwrap()).unwrap();
        let settings = ClusterSettings {
            nats: nats.urls(),
            shards: 1,
            ..ClusterSettings::default()
        };
        let retention = Retention {
            max_messages_per_channel: KEEP,
            ..Retention::default()
        };
        let view = jetstream::View {
            dir,
            messages: Arc::new(messages),
            presence: Arc::new(presence),
        };
        let backend = JetStreamBackend::start(
            settings,
            view,
            &retention,
            Arc::new(AtomicU64::new(0)),
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap();
        Cluster {
            backend,
            _nats: nats,
            _data: data,
        }
    }
}

impl Fixture for Cluster {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    fn fail_appends(&self, _failing: bool) {
        // Presence is kept on the node; nothing of it goes through JetStream yet.
    }
}

#[tokio::test]
async fn messages_come_back_in_order_with_increasing_serials() {
    checks::messages_come_back_in_order_with_increasing_serials(Cluster::start(1).await).await;
}

#[tokio::test]
async fn messages_come_back_in_order_on_three_replicas() {
    checks::messages_come_back_in_order_with_increasing_serials(Cluster::start(3).await).await;
}

#[tokio::test]
async fn an_app_id_is_stored_once_and_answered_with_its_first_serial() {
    checks::an_app_id_is_stored_once_and_answered_with_its_first_serial(Cluster::start(1).await)
        .await;
}

#[tokio::test]
async fn history_pages_both_ways() {
    checks::history_pages_both_ways(Cluster::start(1).await).await;
}

#[tokio::test]
async fn a_reopened_stream_resumes_where_it_was() {
    checks::a_reopened_stream_resumes_where_it_was(Cluster::start(1).await).await;
}

#[tokio::test]
async fn channels_are_independent() {
    checks::channels_are_independent(Cluster::start(1).await).await;
}

#[tokio::test]
async fn the_member_set_follows_presence_changes() {
    checks::the_member_set_follows_presence_changes(Cluster::start(1).await).await;
}

#[tokio::test]
async fn presence_history_is_kept_apart_in_order_and_to_retention() {
    checks::presence_history_is_kept_apart_in_order_and_to_retention(Cluster::start(1).await).await;
}
