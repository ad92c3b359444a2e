//! The Rust client SDK against a real broker: ordered publishes with ACK and NACK codes,
//! subscriptions, presence, history pages, resume through a cut connection without loss or
//! duplicates, and token renewal on a live connection.

use std::time::Duration;

use client_sdk::{Client, ConnectionState, Data, Format, HistoryQuery, PresenceAction};
use futures_util::StreamExt;
use tests::proxy::Proxy;
use tests::{ably_jwt, http, now_secs, send, TestBroker, KEY, SAFETY};

async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(SAFETY, stream.next())
        .await
        .expect("an item arrives in time")
        .expect("the stream is open")
}

fn endpoint(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test]
async fn publishes_resolve_in_order_and_subscribers_get_them_intact() {
    let broker = TestBroker::start().await;
    for format in [Format::Msgpack, Format::Json] {
        let client = Client::builder(endpoint(broker.addr))
            .key(KEY)
            .format(format)
            .connect()
            .await
            .unwrap();
        let channel = client.channel(format!("sdk:{format:?}"));
        let mut subscription = channel.subscribe();
        channel.attach().await.unwrap();
        let mut serials = Vec::new();
        for i in 0..50 {
            serials.push(
                channel
                    .publish("n", format!("m{i}"))
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(serials.windows(2).all(|w| w[0] < w[1]));
        channel.publish("bin", vec![0u8, 1, 255]).await.unwrap();
        channel
            .publish("obj", serde_json::json!({"a": [1, 2]}))
            .await
            .unwrap();
        for i in 0..50 {
            assert_eq!(
                next(&mut subscription).await.data,
                Some(Data::String(format!("m{i}")))
            );
        }
        assert_eq!(
            next(&mut subscription).await.data,
            Some(Data::Binary(vec![0u8, 1, 255].into()))
        );
        assert_eq!(
            next(&mut subscription).await.data,
            Some(Data::Json(serde_json::json!({"a": [1, 2]})))
        );
        client.close().await;
        assert_eq!(*client.connection_state().borrow(), ConnectionState::Closed);
    }
}

#[tokio::test]
async fn refusals_carry_the_ably_code() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_message_size = 100;
        c.keys.push(broker::config::KeyConfig {
            name: "test.sub".into(),
            secret: "sub".into(),
            capability: r#"{"open":["subscribe","publish"]}"#.into(),
        });
    })
    .await;
    let client = Client::builder(endpoint(broker.addr))
        .key("test.sub:sub")
        .connect()
        .await
        .unwrap();
    let error = client
        .channel("closed")
        .publish("x", "y")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(40160));
    let error = client.channel("closed").attach().await.unwrap_err();
    assert_eq!(error.code(), Some(40160));
    let error = client
        .channel("open")
        .publish("x", "z".repeat(200))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(40009));
    assert!(client.channel("open").publish("x", "fine").await.is_ok());
    let bad = Client::builder(endpoint(broker.addr))
        .key("test.sub:wrong")
        .connect()
        .await;
    assert_eq!(bad.err().and_then(|e| e.code()), Some(40101));
    let unreachable = Client::builder("http://127.0.0.1:1")
        .key(KEY)
        .connect()
        .await;
    assert!(
        unreachable.is_err(),
        "connect reports a first failed attempt"
    );
}

#[tokio::test]
async fn presence_enter_get_and_events() {
    let broker = TestBroker::start().await;
    let token = |id: &str| {
        ably_jwt(
            KEY,
            serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": id}),
        )
    };
    let ann = Client::builder(endpoint(broker.addr))
        .token(token("ann"))
        .connect()
        .await
        .unwrap();
    let bob = Client::builder(endpoint(broker.addr))
        .token(token("bob"))
        .format(Format::Json)
        .connect()
        .await
        .unwrap();
    let ann_room = ann.channel("room");
    let bob_room = bob.channel("room");
    let mut events = bob_room.presence().subscribe();
    bob_room.attach().await.unwrap();
    ann_room.presence().enter("here").await.unwrap();
    let event = next(&mut events).await;
    assert_eq!(
        (event.action, event.client_id.as_deref()),
        (PresenceAction::Enter, Some("ann"))
    );
    bob_room
        .presence()
        .enter(serde_json::json!({"mood": "ok"}))
        .await
        .unwrap();
    let members = ann_room.presence().get().await.unwrap();
    let mut names: Vec<_> = members.iter().filter_map(|m| m.client_id.clone()).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
    ann_room.presence().update("away").await.unwrap();
    let mut seen = next(&mut events).await;
    while seen.client_id.as_deref() != Some("ann") {
        seen = next(&mut events).await;
    }
    assert_eq!(
        (seen.action, seen.data),
        (PresenceAction::Update, Some(Data::String("away".into())))
    );
    ann.close().await;
    let leave = next(&mut events).await;
    assert_eq!(
        (leave.action, leave.client_id.as_deref()),
        (PresenceAction::Leave, Some("ann"))
    );
}

#[tokio::test]
async fn history_pages_both_ways() {
    let broker = TestBroker::start().await;
    let client = Client::builder(endpoint(broker.addr))
        .key(KEY)
        .connect()
        .await
        .unwrap();
    let channel = client.channel("hist");
    for i in 0..25 {
        channel.publish("h", format!("h{i}")).await.unwrap();
    }
    for forwards in [false, true] {
        let mut page = channel
            .history(HistoryQuery {
                forwards,
                limit: Some(10),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        loop {
            sizes.push(page.items.len());
            all.extend(page.items.iter().map(|m| m.data.clone()));
            match page.next().await.unwrap() {
                Some(next) => page = next,
                None => break,
            }
        }
        assert_eq!(sizes, [10, 10, 5]);
        let mut expected: Vec<_> = (0..25)
            .map(|i| Some(Data::String(format!("h{i}"))))
            .collect();
        if !forwards {
            expected.reverse();
        }
        assert_eq!(all, expected);
    }
}

#[tokio::test]
async fn a_cut_connection_resumes_without_loss_or_duplicates() {
    let broker = TestBroker::start().await;
    let proxy = Proxy::start(broker.addr).await;
    let subscriber = Client::builder(endpoint(proxy.addr))
        .key(KEY)
        .disconnected_retry(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let id = subscriber.connection_id();
    let channel = subscriber.channel("resume");
    let mut messages = channel.subscribe();
    channel.attach().await.unwrap();
    let publisher = Client::builder(endpoint(broker.addr))
        .key(KEY)
        .connect()
        .await
        .unwrap();
    let feed = publisher.channel("resume");
    for i in 0..30 {
        feed.publish("n", format!("{i}")).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            next(&mut messages).await.data,
            Some(Data::String(format!("{i}")))
        );
    }
    proxy.cut();
    for i in 30..60 {
        feed.publish("n", format!("{i}")).await.unwrap();
    }
    // The subscriber's own publish made while cut off is queued, resent and ACKed once.
    let own = tokio::spawn({
        let channel = channel.clone();
        async move { channel.publish("n", "60").await }
    });
    for i in 10..61 {
        assert_eq!(
            next(&mut messages).await.data,
            Some(Data::String(format!("{i}"))),
            "message {i}"
        );
    }
    own.await.unwrap().unwrap();
    assert_eq!(subscriber.connection_id(), id, "the connection was resumed");
    let metrics = send(http().get(broker.url("/metrics")))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"broker_resumes_total{result="succeeded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_are_renewed_on_a_live_connection() {
    let broker = TestBroker::start_with(|c| c.connection.token_renewal_lead_ms = 2500).await;
    let (calls, mut renewals) = tokio::sync::mpsc::unbounded_channel();
    let client = Client::builder(endpoint(broker.addr))
        .auth_callback(move || {
            let calls = calls.clone();
            async move {
                let _ = calls.send(());
                Ok(ably_jwt(
                    KEY,
                    serde_json::json!({"exp": now_secs() + 4, "x-ably-clientId": "rene"}),
                ))
            }
        })
        .connect()
        .await
        .unwrap();
    let id = client.connection_id();
    for _ in 0..3 {
        tokio::time::timeout(SAFETY, renewals.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(client.connection_id(), id);
    assert_eq!(client.client_id().as_deref(), Some("rene"));
    assert!(client.channel("after").publish("x", "y").await.is_ok());
}

/// A detach ends continuity: attaching again starts live, without replaying what was
/// published meanwhile (that is what history is for).
#[tokio::test]
async fn attaching_again_after_a_detach_starts_live() {
    let broker = TestBroker::start().await;
    let client = Client::builder(endpoint(broker.addr))
        .key(KEY)
        .connect()
        .await
        .unwrap();
    let other = Client::builder(endpoint(broker.addr))
        .key(KEY)
        .connect()
        .await
        .unwrap();
    let channel = client.channel("away");
    let mut messages = channel.subscribe();
    channel.attach().await.unwrap();
    other.channel("away").publish("n", "before").await.unwrap();
    assert_eq!(
        next(&mut messages).await.data,
        Some(Data::String("before".into()))
    );
    channel.detach().await.unwrap();
    other.channel("away").publish("n", "missed").await.unwrap();
    channel.attach().await.unwrap();
    other.channel("away").publish("n", "live").await.unwrap();
    assert_eq!(
        next(&mut messages).await.data,
        Some(Data::String("live".into()))
    );
}
