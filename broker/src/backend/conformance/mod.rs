//! The conformance suite every backend must pass: order, idempotent publish, history both ways
//! with pagination, resume positions across a reopened stream, epochs, count retention, the
//! presence member set and its history, durability answers and failure answers. Each check is
//! written once against a [`Fixture`]; `fixtures.rs` runs them all for the memory and local
//! backends, and the integration tests (`tests/tests/cluster_conformance.rs`, with the
//! `conformance` feature) run them for the JetStream backend on real nats-servers.
//!
//! A backend that delivers through [`Stream::committed`] (cluster mode) has its appends' messages
//! come back through that feed; the checks wait for it ([`settle`]) before they read.

#[cfg(test)]
mod fixtures;

use std::sync::Arc;

use protocol::{Data, Message, PresenceAction, PresenceMessage};
use tokio::sync::oneshot;

use super::presence::from_record;
use super::{Backend, Direction, Draft, PresenceChange, Query, Stream};
use crate::store::{parse_serial, StoreError};

/// Most messages each fixture keeps per channel.
pub const KEEP: u64 = 5;

/// A backend under test, and how to make its appends fail.
pub trait Fixture {
    /// The backend, fresh for this check.
    fn backend(&self) -> Arc<dyn Backend>;
    /// Makes every append fail (`true`) or succeed again.
    fn fail_appends(&self, failing: bool);
}

/// Waits until the stream's head has reached every serial in `serials`: at once for a
/// backend whose appends hand their messages back, through [`Stream::committed`] for one
/// that delivers through its feed.
pub async fn settle(stream: &mut dyn Stream, serials: &[Option<String>]) {
    let want = serials
        .iter()
        .flatten()
        .filter_map(|s| parse_serial(s))
        .map(|(_, position)| position)
        .max()
        .unwrap_or(0);
    while stream.head().last < want {
        let _ = stream.committed().await;
    }
}

fn named(name: &str) -> Message {
    Message {
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn with_id(name: &str, id: &str) -> Message {
    Message {
        id: Some(id.to_owned()),
        ..named(name)
    }
}

fn draft(messages: Vec<Message>) -> Draft {
    Draft {
        messages,
        app_ids: true,
    }
}

fn all(direction: Direction) -> Query {
    Query {
        from: 0,
        to: u64::MAX,
        start_ms: None,
        end_ms: None,
        direction,
        limit: 1000,
    }
}

fn names(rows: &[(u64, Message)]) -> Vec<String> {
    rows.iter()
        .map(|(_, m)| m.name.clone().unwrap_or_default())
        .collect()
}

/// Publishes each name as its own draft, in one append; returns their serials.
async fn publish(stream: &mut dyn Stream, names: &[&str]) -> Vec<String> {
    let drafts = names.iter().map(|n| draft(vec![named(n)])).collect();
    let appended = stream.append(drafts).await.unwrap();
    let serials: Vec<Option<String>> = appended
        .stored
        .into_iter()
        .flat_map(|s| s.serials)
        .collect();
    settle(stream, &serials).await;
    serials.into_iter().map(Option::unwrap).collect()
}

/// Waits for the durability answer of everything appended so far.
async fn durable(stream: &mut dyn Stream, count: u64) -> Result<(), StoreError> {
    let (tx, rx) = oneshot::channel();
    stream.when_durable(
        count,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.await.unwrap()
}

/// Appended messages read back in order, with the serials their ACKs gave.
pub async fn messages_come_back_in_order_with_increasing_serials(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("order").unwrap();
    let mut serials = publish(stream.as_mut(), &["a", "b"]).await;
    serials.extend(publish(stream.as_mut(), &["c"]).await);
    durable(stream.as_mut(), 1).await.unwrap();
    let positions: Vec<u64> = serials.iter().map(|s| parse_serial(s).unwrap().1).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(stream.head().last, positions[2]);
    let rows = backend.read("order", &all(Direction::Forwards)).unwrap();
    assert_eq!(names(&rows), ["a", "b", "c"]);
    let stored: Vec<String> = rows
        .iter()
        .map(|(_, m)| m.serial.clone().unwrap())
        .collect();
    assert_eq!(stored, serials, "history carries the serials the ACKs gave");
    let times: Vec<i64> = rows.iter().map(|(_, m)| m.timestamp.unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(rows.iter().all(|(_, m)| m.action == Some(0)));
}

/// Idempotent publishing (§7.3): an app-set id is stored once; broker-set ids never collide with it.
pub async fn an_app_id_is_stored_once_and_answered_with_its_first_serial(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("idem").unwrap();
    let first = stream
        .append(vec![draft(vec![
            with_id("x", "id-1"),
            with_id("y", "id-2"),
        ])])
        .await
        .unwrap();
    assert_eq!(first.count, 2);
    // A retry of the same publish, and the same id again within one batch.
    let again = stream
        .append(vec![
            draft(vec![with_id("x", "id-1"), with_id("y", "id-2")]),
            draft(vec![with_id("z", "id-3"), with_id("z", "id-3")]),
        ])
        .await
        .unwrap();
    assert_eq!(again.count, 1);
    assert_eq!(again.stored[0].serials, first.stored[0].serials);
    assert!(again.stored[0].fresh.is_empty());
    let z = &again.stored[1].serials;
    assert_eq!(z[0], z[1]);
    settle(stream.as_mut(), z).await;
    let rows = backend.read("idem", &all(Direction::Forwards)).unwrap();
    assert_eq!(names(&rows), ["x", "y", "z"]);
    // Ids the broker set itself (not the app's) are never de-duplicated.
    let broker_ids = stream
        .append(vec![Draft {
            messages: vec![with_id("w", "id-1")],
            app_ids: false,
        }])
        .await
        .unwrap();
    assert_eq!(broker_ids.count, 1);
}

/// History pages forwards and backwards, and the head follows retention.
pub async fn history_pages_both_ways(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("pages").unwrap();
    // More than retention keeps: only the newest KEEP remain.
    publish(stream.as_mut(), &["m1", "m2", "m3", "m4", "m5", "m6", "m7"]).await;
    let page = |direction, from, to, limit| {
        let query = Query {
            from,
            to,
            start_ms: None,
            end_ms: None,
            direction,
            limit,
        };
        backend.read("pages", &query).unwrap()
    };
    let newest = page(Direction::Backwards, 0, u64::MAX, 2);
    assert_eq!(names(&newest), ["m7", "m6"]);
    let next = page(Direction::Backwards, 0, newest[1].0 - 1, 2);
    assert_eq!(names(&next), ["m5", "m4"]);
    let oldest = page(Direction::Forwards, 0, u64::MAX, 2);
    assert_eq!(names(&oldest), ["m3", "m4"]);
    let rest = page(Direction::Forwards, oldest[1].0 + 1, u64::MAX, 10);
    assert_eq!(names(&rest), ["m5", "m6", "m7"]);
    stream.refresh().unwrap();
    assert_eq!(stream.head().first, oldest[0].0, "head follows retention");
}

/// A reopened stream continues its serials and remembers ids (resume positions, §5.6).
pub async fn a_reopened_stream_resumes_where_it_was(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("resume").unwrap();
    let before = publish(stream.as_mut(), &["a", "b"]).await;
    durable(stream.as_mut(), 2).await.unwrap();
    let head = stream.head().clone();
    drop(stream);
    let mut stream = backend.open("resume").unwrap();
    assert_eq!(stream.head(), &head);
    assert_eq!(head.epoch, backend.epoch("resume"));
    let after = publish(stream.as_mut(), &["c"]).await;
    let (epoch, position) = parse_serial(&after[0]).unwrap();
    assert_eq!(epoch, backend.epoch("resume"));
    assert_eq!(position, head.last + 1);
    // What a client that saw `b` misses: everything after b's position.
    let (_, seen) = parse_serial(&before[1]).unwrap();
    let query = Query {
        from: seen + 1,
        ..all(Direction::Forwards)
    };
    assert_eq!(names(&backend.read("resume", &query).unwrap()), ["c"]);
    // Ids are remembered across the reopen.
    let retry = stream
        .append(vec![draft(vec![with_id("a2", "same")])])
        .await
        .unwrap();
    drop(stream);
    let mut stream = backend.open("resume").unwrap();
    let again = stream
        .append(vec![draft(vec![with_id("a2", "same")])])
        .await
        .unwrap();
    assert_eq!(again.count, 0);
    assert_eq!(again.stored[0].serials, retry.stored[0].serials);
}

/// Channels do not see each other's messages.
pub async fn channels_are_independent(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut one = backend.open("one").unwrap();
    let mut two = backend.open("two").unwrap();
    publish(one.as_mut(), &["1a", "1b"]).await;
    publish(two.as_mut(), &["2a"]).await;
    assert_eq!(
        names(&backend.read("one", &all(Direction::Forwards)).unwrap()),
        ["1a", "1b"]
    );
    assert_eq!(
        names(&backend.read("two", &all(Direction::Forwards)).unwrap()),
        ["2a"]
    );
    assert!(backend
        .read("three", &all(Direction::Forwards))
        .unwrap()
        .is_empty());
}

/// A failed append stores nothing and its serial is never given out again.
pub async fn a_failed_append_stores_nothing_and_reuses_no_serial(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("fail").unwrap();
    let ok = publish(stream.as_mut(), &["kept"]).await;
    fixture.fail_appends(true);
    let failed = stream
        .append(vec![draft(vec![with_id("lost", "retry-me")])])
        .await;
    assert!(failed.is_err());
    fixture.fail_appends(false);
    // The retry is stored afresh: the failed id was not remembered, and its serial is new.
    let retried = stream
        .append(vec![draft(vec![with_id("lost", "retry-me")])])
        .await
        .unwrap();
    assert_eq!(retried.count, 1);
    let position = |s: &str| parse_serial(s).unwrap().1;
    let retried_serial = retried.stored[0].serials[0].clone().unwrap();
    assert!(
        position(&retried_serial) > position(&ok[0]) + 1,
        "no serial reused"
    );
    durable(stream.as_mut(), 1).await.unwrap();
    let rows = backend.read("fail", &all(Direction::Forwards)).unwrap();
    assert_eq!(names(&rows), ["kept", "lost"]);
}

/// A client's presence item, as the channel service hands it over.
fn member(action: PresenceAction, client: &str, connection: &str, data: &str) -> PresenceMessage {
    PresenceMessage {
        action,
        id: Some(format!("{connection}:{client}:{data}")),
        client_id: Some(client.into()),
        connection_id: Some(connection.into()),
        data: Some(Data::String(data.into())),
        timestamp: Some(1),
        ..Default::default()
    }
}

/// Applies a change and returns the events as `action clientId`.
async fn change(stream: &mut dyn Stream, change: PresenceChange) -> Vec<String> {
    let events = stream.presence(change).await.expect("presence change");
    events
        .iter()
        .map(|e| format!("{:?} {}", e.action, e.client_id.as_deref().unwrap_or("")))
        .collect()
}

/// Presence history rows as `action clientId`.
fn presence_rows(rows: Vec<(u64, Message)>) -> Vec<String> {
    rows.into_iter()
        .map(|(_, m)| from_record(m))
        .map(|e| format!("{:?} {}", e.action, e.client_id.as_deref().unwrap_or("")))
        .collect()
}

/// §6.3: enter, update, silent re-enter, leave and a connection's leaves (§6.5), with the
/// member set following each change.
pub async fn the_member_set_follows_presence_changes(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("members").unwrap();
    let s = stream.as_mut();
    let enter = |c: &str, conn: &str, d: &str| member(PresenceAction::Enter, c, conn, d);
    assert_eq!(
        change(
            s,
            PresenceChange::Apply(vec![enter("a", "c1", "x"), enter("b", "c1", "x")])
        )
        .await,
        ["Enter a", "Enter b"]
    );
    assert!(
        change(s, PresenceChange::Apply(vec![enter("a", "c1", "x")]))
            .await
            .is_empty(),
        "a re-enter with the same data is silent"
    );
    assert_eq!(
        change(s, PresenceChange::Apply(vec![enter("a", "c1", "y")])).await,
        ["Update a"]
    );
    change(s, PresenceChange::Apply(vec![enter("a", "c2", "z")])).await;
    assert_eq!(s.members().len(), 3);
    let present = s.members().all().next().unwrap();
    assert_eq!(present.action, PresenceAction::Present);
    assert_eq!(present.data, Some(Data::String("y".into())));
    assert!(
        change(
            s,
            PresenceChange::Apply(vec![member(PresenceAction::Leave, "nobody", "c1", "")])
        )
        .await
        .is_empty(),
        "the leave of a non-member says nothing"
    );
    let leaves = s
        .presence(PresenceChange::LeaveConnection {
            connection_id: "c1".into(),
            at: 42,
        })
        .await
        .unwrap();
    assert_eq!(leaves.len(), 2);
    assert!(leaves
        .iter()
        .all(|l| l.action == PresenceAction::Leave && l.id.is_none() && l.timestamp == Some(42)));
    assert_eq!(s.members().len(), 1);
    assert!(s.members().contains("a", "c2"));
}

/// Presence history is its own log, in order, numbered on across a reopen, kept to retention.
pub async fn presence_history_is_kept_apart_in_order_and_to_retention(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("presence").unwrap();
    publish(stream.as_mut(), &["message"]).await;
    for (action, data) in [
        (PresenceAction::Enter, "1"),
        (PresenceAction::Update, "2"),
        (PresenceAction::Leave, ""),
    ] {
        let item = member(action, "a", "c1", data);
        change(stream.as_mut(), PresenceChange::Apply(vec![item])).await;
    }
    assert_eq!(
        presence_rows(
            backend
                .read_presence("presence", &all(Direction::Forwards))
                .unwrap()
        ),
        ["Enter a", "Update a", "Leave a"]
    );
    assert_eq!(
        names(&backend.read("presence", &all(Direction::Forwards)).unwrap()),
        ["message"],
        "presence history is not in the message history"
    );
    // Numbering goes on across a reopened stream, and retention keeps the newest.
    drop(stream);
    let mut stream = backend.open("presence").unwrap();
    let entering = ["b", "c", "d"].map(|c| member(PresenceAction::Enter, c, "c2", ""));
    change(stream.as_mut(), PresenceChange::Apply(entering.into())).await;
    let newest = backend
        .read_presence("presence", &all(Direction::Backwards))
        .unwrap();
    let positions: Vec<u64> = newest.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        presence_rows(newest),
        ["Enter d", "Enter c", "Enter b", "Leave a", "Update a"]
    );
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "{positions:?}");
    let older = Query {
        to: positions[1] - 1,
        limit: 2,
        ..all(Direction::Backwards)
    };
    assert_eq!(
        presence_rows(backend.read_presence("presence", &older).unwrap()),
        ["Enter b", "Leave a"]
    );
}

/// A store that cannot take writes loses no member: the change and its events stand, as
/// presence is the stream's state and its history is kept on the side.
pub async fn a_failing_store_keeps_presence_changes(fixture: impl Fixture) {
    let backend = fixture.backend();
    let mut stream = backend.open("members-failing").unwrap();
    fixture.fail_appends(true);
    let entered = change(
        stream.as_mut(),
        PresenceChange::Apply(vec![member(PresenceAction::Enter, "a", "c1", "")]),
    )
    .await;
    fixture.fail_appends(false);
    assert_eq!(entered, ["Enter a"]);
    assert!(stream.members().contains("a", "c1"));
}
