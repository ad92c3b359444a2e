//! Presence (§6, checklist 12b): enter/update/leave with ACK and broadcast, SYNC on attach,
//! leaves on CLOSE and after the grace period of an abrupt drop, none on a timely resume, the
//! REST views, and the refusals.

use protocol::{flags, Action, Data, PresenceAction, ProtocolMessage};
use tests::{
    ably_jwt, acked_by, http, now_secs, presence_message as presence, send, urlencode, Client,
    TestBroker, KEY,
};

const ENTER: PresenceAction = PresenceAction::Enter;
const LEAVE: PresenceAction = PresenceAction::Leave;
const UPDATE: PresenceAction = PresenceAction::Update;

async fn user(broker: &TestBroker, client_id: &str) -> (Client, ProtocolMessage) {
    let token = ably_jwt(
        KEY,
        serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": client_id}),
    );
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    let connected = client.expect(Action::Connected).await;
    (client, connected)
}

/// The next PRESENCE, skipping other actions (ACKs, SYNCs already checked elsewhere).
async fn next_presence(client: &mut Client) -> ProtocolMessage {
    loop {
        let m = client.next().await.expect("open");
        if m.action == Action::Presence {
            return m;
        }
    }
}

async fn enter(client: &mut Client, channel: &str, serial: u64, data: &str) {
    client
        .send(&presence(channel, serial, ENTER, None, data))
        .await;
}

#[tokio::test]
async fn members_see_each_other_by_event_and_by_sync() {
    let broker = TestBroker::start().await;
    let (mut alice, a) = user(&broker, "alice").await;
    let (mut bob, _) = user(&broker, "bob").await;
    alice.attach("room").await;
    bob.attach("room").await;
    enter(&mut alice, "room", 0, "hi").await;
    // The originator gets its own event (RTP17a) and the ACK.
    let own = next_presence(&mut alice).await;
    let item = &own.presence.as_ref().unwrap()[0];
    assert_eq!(
        (item.action, item.client_id.as_deref()),
        (ENTER, Some("alice"))
    );
    let alice_id = a.connection_id.clone().unwrap();
    assert_eq!(item.id.as_deref(), Some(format!("{alice_id}:0:0").as_str()));
    assert_eq!(
        next_presence(&mut bob).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("alice")
    );
    enter(&mut bob, "room", 0, "yo").await;
    assert_eq!(
        next_presence(&mut alice).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("bob")
    );
    assert_eq!(
        next_presence(&mut bob).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("bob")
    );

    alice.send(&presence("room", 1, UPDATE, None, "away")).await;
    let update = next_presence(&mut bob).await.presence.unwrap().remove(0);
    assert_eq!(
        (update.action, update.data),
        (UPDATE, Some(Data::String("away".into())))
    );

    let (mut carol, _) = user(&broker, "carol").await;
    carol
        .send(&ProtocolMessage::for_channel(Action::Attach, "room"))
        .await;
    let attached = carol.expect(Action::Attached).await;
    assert!(attached.has_flag(flags::HAS_PRESENCE));
    let sync = carol.expect(Action::Sync).await;
    let serial = sync.channel_serial.unwrap();
    assert!(serial.ends_with(':'), "single page ends the sync: {serial}");
    let mut members: Vec<(PresenceAction, String)> = sync
        .presence
        .unwrap()
        .into_iter()
        .map(|m| (m.action, m.client_id.unwrap()))
        .collect();
    members.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        members,
        [
            (PresenceAction::Present, "alice".to_owned()),
            (PresenceAction::Present, "bob".to_owned())
        ]
    );
}

#[tokio::test]
async fn close_leaves_at_once_and_a_dropped_connection_leaves_after_the_grace_period() {
    let broker = TestBroker::start_with(|c| c.presence.leave_grace_ms = 300).await;
    let (mut watcher, _) = user(&broker, "watcher").await;
    watcher.attach("lobby").await;
    let (mut quitter, q) = user(&broker, "quitter").await;
    quitter.attach("lobby").await;
    enter(&mut quitter, "lobby", 0, "").await;
    assert_eq!(
        next_presence(&mut watcher).await.presence.unwrap()[0].action,
        ENTER
    );
    quitter.send(&ProtocolMessage::new(Action::Close)).await;
    let leave = next_presence(&mut watcher).await;
    assert!(leave.id.is_none(), "server-made leaves carry no id (§6.5)");
    let item = &leave.presence.unwrap()[0];
    assert_eq!(
        (item.action, item.client_id.as_deref()),
        (LEAVE, Some("quitter"))
    );
    assert_eq!(item.connection_id, q.connection_id);
    assert!(item.id.is_none() && item.timestamp.is_some());

    let (mut dropper, _) = user(&broker, "dropper").await;
    dropper.attach("lobby").await;
    enter(&mut dropper, "lobby", 0, "").await;
    assert_eq!(
        next_presence(&mut watcher).await.presence.unwrap()[0].action,
        ENTER
    );
    dropper.drop_abruptly();
    let gone = next_presence(&mut watcher)
        .await
        .presence
        .unwrap()
        .remove(0);
    assert_eq!(
        (gone.action, gone.client_id.as_deref()),
        (LEAVE, Some("dropper"))
    );
}

#[tokio::test]
async fn a_resume_within_the_grace_period_causes_no_event() {
    let broker = TestBroker::start_with(|c| c.presence.leave_grace_ms = 1000).await;
    let (mut watcher, _) = user(&broker, "watcher").await;
    watcher.attach("stay").await;
    let (mut amy, connected) = user(&broker, "amy").await;
    amy.attach("stay").await;
    enter(&mut amy, "stay", 0, "here").await;
    let entered = next_presence(&mut amy).await.presence.unwrap().remove(0);
    assert_eq!(
        next_presence(&mut watcher).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("amy")
    );
    amy.drop_abruptly();

    let key = connected.connection_details.unwrap().connection_key;
    let token = ably_jwt(
        KEY,
        serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": "amy"}),
    );
    let mut back = broker
        .connect(&format!(
            "access_token={token}&format=json&resume={}",
            urlencode(&key)
        ))
        .await;
    assert_eq!(
        back.expect(Action::Connected).await.connection_id,
        connected.connection_id
    );
    back.send(&ProtocolMessage::for_channel(Action::Attach, "stay"))
        .await;
    assert!(back
        .expect(Action::Attached)
        .await
        .has_flag(flags::HAS_PRESENCE));
    assert_eq!(
        back.expect(Action::Sync).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("amy")
    );
    // The automatic re-enter (§6.7) carries the old id: ACKed, not announced.
    let mut reenter = presence("stay", 1, ENTER, None, "here");
    reenter.presence.as_mut().unwrap()[0].id = entered.id.clone();
    back.send(&reenter).await;
    assert_eq!(back.expect(Action::Ack).await.msg_serial, Some(1));

    // A second member drops after amy resumed and never returns: its leave comes after amy's
    // grace period has passed, so anything about amy would have arrived first.
    let (mut ben, _) = user(&broker, "ben").await;
    ben.attach("stay").await;
    enter(&mut ben, "stay", 0, "").await;
    assert_eq!(
        next_presence(&mut watcher).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("ben")
    );
    ben.drop_abruptly();
    let next = next_presence(&mut watcher)
        .await
        .presence
        .unwrap()
        .remove(0);
    assert_eq!(
        (next.action, next.client_id.as_deref()),
        (LEAVE, Some("ben"))
    );
}

#[tokio::test]
async fn a_thousand_members_of_one_wildcard_connection_reach_a_new_attacher_in_pages() {
    let broker = TestBroker::start().await;
    let (mut crowd, _) = broker.connect_key("msgpack").await;
    crowd.attach("big").await;
    for i in 0..1000u64 {
        crowd
            .send(&presence(
                "big",
                i,
                ENTER,
                Some(&format!("user-{i:04}")),
                "",
            ))
            .await;
    }
    crowd.expect_acks(1000).await;
    let (mut late, _) = broker.connect_key("json").await;
    late.send(&ProtocolMessage::for_channel(Action::Attach, "big"))
        .await;
    assert!(late
        .expect(Action::Attached)
        .await
        .has_flag(flags::HAS_PRESENCE));
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = 0;
    loop {
        let page = late.expect(Action::Sync).await;
        pages += 1;
        let items = page.presence.unwrap();
        assert!(items.len() <= 100);
        seen.extend(items.into_iter().map(|m| m.client_id.unwrap()));
        let serial = page.channel_serial.unwrap();
        let (_, cursor) = serial.split_once(':').unwrap();
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!((seen.len(), pages), (1000, 10));
    let members: Vec<serde_json::Value> = send(
        http()
            .get(broker.url("/channels/big/presence?limit=1000"))
            .header("authorization", tests::basic_auth()),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(members.len(), 1000);
}

#[tokio::test]
async fn rest_presence_history_and_occupancy_agree_with_what_happened() {
    let broker = TestBroker::start().await;
    let (mut zed, z) = user(&broker, "zed").await;
    zed.attach("hall").await;
    enter(&mut zed, "hall", 0, "in").await;
    zed.send(&presence("hall", 1, UPDATE, None, "busy")).await;
    zed.send(&presence("hall", 2, LEAVE, None, "")).await;
    enter(&mut zed, "hall", 3, "back").await;
    zed.expect_acks(4).await;
    let get = |path: &str| {
        let url = broker.url(path);
        async move {
            send(http().get(url).header("authorization", tests::basic_auth()))
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let members = get("/channels/hall/presence").await;
    assert_eq!(members.as_array().unwrap().len(), 1);
    assert_eq!(members[0]["action"], 1);
    assert_eq!(members[0]["data"], "back");
    assert_eq!(
        members[0]["connectionId"].as_str(),
        z.connection_id.as_deref()
    );
    let filtered = get("/channels/hall/presence?clientId=nobody").await;
    assert_eq!(filtered.as_array().unwrap().len(), 0);

    let events = get("/channels/hall/presence/history?direction=forwards").await;
    let actions: Vec<PresenceAction> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| PresenceAction::from_code(e["action"].as_u64().unwrap()))
        .collect();
    assert_eq!(actions, [ENTER, UPDATE, LEAVE, ENTER]);

    let status = get("/channels/hall").await;
    let metrics = &status["status"]["occupancy"]["metrics"];
    assert_eq!(
        (
            metrics["presenceMembers"].as_u64(),
            metrics["connections"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn presence_refusals_have_precise_codes() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_message_size = 100;
        c.presence.max_members_per_channel = 2;
        c.keys.push(broker::config::KeyConfig {
            name: "test.nopresence".into(),
            secret: "np".into(),
            capability: r#"{"*":["subscribe","publish"]}"#.into(),
        });
    })
    .await;
    let (mut anon, _) = broker.connect_key("json").await;
    enter(&mut anon, "p", 0, "").await;
    assert_eq!(
        anon.expect(Action::Nack).await.error.unwrap().code,
        90001,
        "not attached"
    );
    anon.attach("p").await;
    enter(&mut anon, "p", 1, "").await;
    assert_eq!(
        anon.expect(Action::Nack).await.error.unwrap().code,
        91000,
        "no clientId"
    );

    let (mut dana, _) = user(&broker, "dana").await;
    dana.attach("p").await;
    dana.send(&presence("p", 0, ENTER, Some("eve"), "")).await;
    assert_eq!(dana.expect(Action::Nack).await.error.unwrap().code, 40012);
    enter(&mut dana, "p", 1, &"x".repeat(200)).await;
    assert_eq!(dana.expect(Action::Nack).await.error.unwrap().code, 40009);

    let mut limited = broker
        .connect(&format!(
            "key={}&format=json&clientId=lim",
            urlencode("test.nopresence:np")
        ))
        .await;
    limited.expect(Action::Connected).await;
    limited.attach("p").await;
    enter(&mut limited, "p", 0, "").await;
    assert_eq!(
        limited.expect(Action::Nack).await.error.unwrap().code,
        40160
    );

    for (i, who) in ["a", "b", "c"].iter().enumerate() {
        anon.send(&presence("p", 2 + i as u64, ENTER, Some(who), ""))
            .await;
    }
    let mut codes = Vec::new();
    while codes.len() < 3 {
        let m = anon.next().await.unwrap();
        match m.action {
            Action::Ack => codes.extend((0..acked_by(&m)).map(|_| 0)),
            Action::Nack => codes.push(m.error.unwrap().code),
            _ => {}
        }
    }
    assert_eq!(codes, [0, 0, 91003]);
}

/// A member entered on one socket leaves when the connection closes on a later socket that
/// never re-attached that channel.
#[tokio::test]
async fn members_leave_even_when_the_last_socket_never_reattached_their_channel() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = user(&broker, "watcher").await;
    watcher.attach("hall").await;
    let (mut gus, connected) = user(&broker, "gus").await;
    gus.attach("hall").await;
    enter(&mut gus, "hall", 0, "").await;
    assert_eq!(
        next_presence(&mut watcher).await.presence.unwrap()[0]
            .client_id
            .as_deref(),
        Some("gus")
    );
    gus.drop_abruptly();
    let key = connected.connection_details.unwrap().connection_key;
    let token = ably_jwt(
        KEY,
        serde_json::json!({"exp": now_secs() + 600, "x-ably-clientId": "gus"}),
    );
    let mut back = broker
        .connect(&format!(
            "access_token={token}&format=json&resume={}",
            urlencode(&key)
        ))
        .await;
    back.expect(Action::Connected).await;
    back.send(&ProtocolMessage::new(Action::Close)).await;
    back.expect(Action::Closed).await;
    let leave = next_presence(&mut watcher)
        .await
        .presence
        .unwrap()
        .remove(0);
    assert_eq!(
        (leave.action, leave.client_id.as_deref()),
        (LEAVE, Some("gus"))
    );
}
