//! Cluster mode (issue 17, `../shared/cluster.md`): broker nodes on one NATS JetStream serve
//! the same channels. Real brokers on 127.0.0.1:0, each with its own data directory, and real
//! nats-servers from `tests::nats`.

use protocol::{flags, Action, Data, PresenceAction, PresenceMessage, ProtocolMessage};
use tests::nats::NatsCluster;
use tests::{history, publish_message, texts, urlencode, Client, TestBroker, KEY};

/// A broker node of the cluster on `nats`.
async fn node(nats: &NatsCluster) -> TestBroker {
    let urls = nats.urls();
    TestBroker::start_with(move |c| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
    })
    .await
}

/// Collects the string data of MESSAGE frames until `n` have arrived.
async fn receive(client: &mut Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let message = client.expect(Action::Message).await;
        seen.extend(texts(&message));
    }
    seen
}

/// Two publishers on two nodes, subscribers on both: every subscriber gets every message once,
/// all in the same order, each publisher's messages in the order it sent them, and history on
/// each node is that order too (§7.3, cluster.md §3.2).
#[tokio::test]
async fn every_node_delivers_a_channel_in_one_order() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut sub_one, _) = one.connect_key("json").await;
    let (mut sub_two, _) = two.connect_key("msgpack").await;
    sub_one.attach("shared").await;
    sub_two.attach("shared").await;
    let (mut pub_one, _) = one.connect_key("msgpack").await;
    let (mut pub_two, _) = two.connect_key("json").await;
    for i in 0..20 {
        pub_one.publish("shared", i, &format!("a{i}")).await;
        pub_two.publish("shared", i, &format!("b{i}")).await;
    }
    pub_one.expect_acks(20).await;
    pub_two.expect_acks(20).await;
    let seen_one = receive(&mut sub_one, 40).await;
    let seen_two = receive(&mut sub_two, 40).await;
    assert_eq!(seen_one, seen_two, "both nodes deliver one order");
    for prefix in ["a", "b"] {
        let own: Vec<&String> = seen_one.iter().filter(|m| m.starts_with(prefix)).collect();
        let sent: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(
            own,
            sent.iter().collect::<Vec<_>>(),
            "{prefix} in its order"
        );
    }
    for broker in [&one, &two] {
        let stored: Vec<String> = history(broker, "shared", "direction=forwards&limit=100")
            .await
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, seen_one, "history is the delivered order");
    }
}

/// A client that saw part of a channel on one node attaches on another with its
/// channelSerial and gets exactly what it missed (§5.6, cluster.md §3.4).
#[tokio::test]
async fn a_channel_resumes_on_another_node() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut sub, _) = one.connect_key("json").await;
    sub.attach("feed").await;
    let (mut publisher, _) = one.connect_key("json").await;
    for i in 0..5 {
        publisher.publish("feed", i, &format!("m{i}")).await;
    }
    let mut seen = Vec::new();
    let mut last_serial = None;
    while seen.len() < 5 {
        let m = sub.expect(Action::Message).await;
        last_serial = m.channel_serial.clone();
        seen.extend(texts(&m));
    }
    sub.drop_abruptly();
    for i in 5..10 {
        publisher.publish("feed", i, &format!("m{i}")).await;
    }
    publisher.expect_acks(10).await;

    let (mut back, _) = two.connect_key("msgpack").await;
    let mut attach = ProtocolMessage::for_channel(Action::Attach, "feed");
    attach.channel_serial = last_serial;
    back.send(&attach).await;
    let attached = back.expect(Action::Attached).await;
    assert!(attached.has_flag(flags::RESUMED), "{attached:?}");
    seen.extend(receive(&mut back, 5).await);
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

/// A node that was stopped while others went on publishing catches up from JetStream when it
/// starts again on its data directory.
#[tokio::test]
async fn a_restarted_node_catches_up() {
    let nats = NatsCluster::start(1).await;
    let one = node(&nats).await;
    let two = node(&nats).await;
    let (mut publisher, _) = one.connect_key("json").await;
    publisher.publish("log", 0, "before").await;
    publisher.expect_acks(1).await;
    let dir = two.dir().to_owned();
    let keep = two.stop().await;
    publisher.publish("log", 1, "while down").await;
    publisher.expect_acks(1).await;
    let urls = nats.urls();
    let two = TestBroker::start_in(&dir, move |c| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
    })
    .await;
    let stored: Vec<String> = history(&two, "log", "direction=forwards")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["before", "while down"]);
    // It went on from where its clean stop left the view: only the new message was applied.
    let metrics = tests::send(tests::http().get(two.url("/metrics")))
        .await
        .text()
        .await
        .unwrap();
    let applied = metrics
        .lines()
        .find_map(|l| l.strip_prefix("broker_cluster_applied_total "))
        .expect("applied counter");
    assert_eq!(applied, "1");
    let lag: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("broker_cluster_apply_lag{"))
        .collect();
    assert!(
        !lag.is_empty() && lag.iter().all(|l| l.ends_with(" 0")),
        "{lag:?}"
    );
    two.stop().await;
    drop(keep);
}

async fn resume_on(broker: &TestBroker, key: &str) -> (Client, ProtocolMessage) {
    let mut client = broker
        .connect(&format!(
            "key={}&format=json&resume={}",
            urlencode(KEY),
            urlencode(key)
        ))
        .await;
    let connected = client.expect(Action::Connected).await;
    (client, connected)
}

/// §4.6 across nodes (cluster.md §3.5): a connection dropped on one node resumes on another
/// with its connectionId, and a publish it sends again with the same msgSerial is stored once
/// and acknowledged with its first serial.
#[tokio::test]
async fn a_connection_resumes_on_another_node_and_its_resends_are_stored_once() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut client, connected) = one.connect_key("json").await;
    let key = connected.connection_details.unwrap().connection_key;
    client.publish("moved", 0, "once").await;
    client.expect_acks(1).await;
    client.publish("moved", 1, "maybe").await;
    client.drop_abruptly();

    let (mut back, again) = resume_on(&two, &key).await;
    assert_eq!(again.connection_id, connected.connection_id);
    assert!(again.error.is_none(), "{again:?}");
    // The client does not know whether msgSerial 1 was stored, so it sends both again.
    back.send(&publish_message("moved", 0, "once")).await;
    back.send(&publish_message("moved", 1, "maybe")).await;
    back.expect_acks(2).await;
    let stored: Vec<String> = history(&two, "moved", "direction=forwards")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["once", "maybe"]);
    // The first node has let go: its old key resumes nothing there.
    let (_, refused) = resume_on(&one, &key).await;
    assert_ne!(refused.connection_id, connected.connection_id);
    assert_eq!(refused.error.unwrap().code, 80008);
}

/// A closed connection resumes on no node (§4.6: CLOSE ends it for good).
#[tokio::test]
async fn a_closed_connection_resumes_nowhere() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut client, connected) = one.connect_key("json").await;
    let key = connected.connection_details.unwrap().connection_key;
    client.send(&ProtocolMessage::new(Action::Close)).await;
    client.expect(Action::Closed).await;
    let (_, refused) = resume_on(&two, &key).await;
    assert_ne!(refused.connection_id, connected.connection_id);
    assert_eq!(refused.error.unwrap().code, 80008);
}

/// A node that stops tells its clients to resume later (§4.5); they resume on another node
/// with their connectionId while the first is gone.
#[tokio::test]
async fn clients_of_a_stopped_node_resume_on_another() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut client, connected) = one.connect_key("json").await;
    let key = connected.connection_details.unwrap().connection_key;
    let keep = one.stop().await;
    client.expect(Action::Disconnected).await;
    let (_, again) = resume_on(&two, &key).await;
    assert_eq!(again.connection_id, connected.connection_id);
    assert!(again.error.is_none(), "{again:?}");
    drop(keep);
}

/// A client of the test key with `client_id`, on `broker`.
async fn user(broker: &TestBroker, client_id: &str) -> Client {
    let token = tests::ably_jwt(
        KEY,
        serde_json::json!({"exp": tests::now_secs() + 600, "x-ably-clientId": client_id}),
    );
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    client.expect(Action::Connected).await;
    client
}

fn presence_op(
    channel: &str,
    msg_serial: u64,
    action: PresenceAction,
    data: &str,
) -> ProtocolMessage {
    tests::presence_message(channel, msg_serial, action, None, data)
}

/// The next PRESENCE event, skipping ACKs and SYNCs.
async fn next_presence(client: &mut Client) -> PresenceMessage {
    loop {
        let m = client.next().await.expect("open");
        if m.action == Action::Presence {
            return m.presence.unwrap().remove(0);
        }
    }
}

/// The clientIds REST lists as present on `broker`.
async fn present(broker: &TestBroker, channel: &str) -> Vec<String> {
    let members = tests::json(
        tests::http()
            .get(broker.url(&format!("/channels/{channel}/presence")))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    let mut ids: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["clientId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Presence across nodes (cluster.md §3.6): a member entered on one node is announced to
/// subscribers on another, synced to a client attaching there, listed by REST there, and its
/// update and leave follow.
#[tokio::test]
async fn members_entered_on_one_node_are_seen_on_another() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut watcher, _) = two.connect_key("json").await;
    watcher.attach("room").await;
    let mut alice = user(&one, "alice").await;
    alice.attach("room").await;
    alice
        .send(&presence_op("room", 0, PresenceAction::Enter, "hi"))
        .await;
    alice.expect_acks(1).await;
    let entered = next_presence(&mut watcher).await;
    assert_eq!(entered.action, PresenceAction::Enter);
    assert_eq!(entered.client_id.as_deref(), Some("alice"));
    assert_eq!(present(&two, "room").await, ["alice"]);

    // A client attaching on the other node gets her in its SYNC.
    let mut late = two.connect_key("json").await.0;
    late.send(&ProtocolMessage::for_channel(Action::Attach, "room"))
        .await;
    let attached = late.expect(Action::Attached).await;
    assert!(attached.has_flag(flags::HAS_PRESENCE));
    let sync = late.expect(Action::Sync).await;
    let synced: Vec<_> = sync
        .presence
        .unwrap()
        .into_iter()
        .map(|m| m.client_id)
        .collect();
    assert_eq!(synced, [Some("alice".to_owned())]);

    alice
        .send(&presence_op("room", 1, PresenceAction::Update, "away"))
        .await;
    let updated = next_presence(&mut watcher).await;
    assert_eq!(updated.action, PresenceAction::Update);
    assert_eq!(updated.data, Some(Data::String("away".into())));
    alice
        .send(&presence_op("room", 2, PresenceAction::Leave, ""))
        .await;
    let left = next_presence(&mut watcher).await;
    assert_eq!(left.action, PresenceAction::Leave);
    assert!(present(&two, "room").await.is_empty());
    assert!(present(&one, "room").await.is_empty());
    // Presence history is the same on both nodes, positions included.
    let history = |broker: &TestBroker| {
        let url = broker.url("/channels/room/presence/history?direction=forwards");
        async move {
            tests::json(
                tests::http()
                    .get(url)
                    .header("authorization", tests::basic_auth()),
            )
            .await
        }
    };
    let seen_one = history(&one).await;
    let actions: Vec<(u64, String)> = seen_one
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["action"].as_u64().unwrap(),
                m["clientId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let alice = || "alice".to_owned();
    // enter 2, update 4, leave 3 (§6.1 numbering).
    assert_eq!(actions, [(2, alice()), (4, alice()), (3, alice())]);
    assert_eq!(history(&two).await, seen_one);
}

/// `/health` says whether the node can serve and which NATS server it reaches; a node that
/// lost NATS answers 503, so a load balancer sends its clients elsewhere.
#[tokio::test]
async fn health_reports_the_node_and_its_nats_server() {
    let mut nats = NatsCluster::start(1).await;
    let one = node(&nats).await;
    let health = |broker: &TestBroker| {
        let url = broker.url("/health");
        async move {
            let response = tests::send(tests::http().get(url)).await;
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = health(&one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cluster"]["ready"], true);
    assert_eq!(body["cluster"]["nats"]["connected"], true);
    assert_eq!(body["cluster"]["nats"]["server"], "n1");
    nats.kill(0).await;
    // The client notices the closed socket at once; bounded by the test's safety timeout.
    let deadline = tokio::time::Instant::now() + tests::SAFETY;
    loop {
        let (status, body) = health(&one).await;
        if status == 503 {
            assert_eq!(body["status"], "unavailable");
            assert_eq!(body["cluster"]["nats"]["connected"], false);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// §6.6 across nodes (cluster.md §3.6): when a node goes silent, the members of its
/// connections leave on the other nodes once it has been silent for 10 s plus the leave
/// grace, as they would had the connections dropped.
#[tokio::test]
async fn members_of_a_silent_node_leave_everywhere() {
    let nats = NatsCluster::start(1).await;
    let urls = nats.urls();
    let short_grace = move |c: &mut broker::config::Config| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
        c.presence.leave_grace_ms = 200;
    };
    let one = TestBroker::start_with(short_grace.clone()).await;
    let two = TestBroker::start_with(short_grace).await;
    let (mut watcher, _) = two.connect_key("json").await;
    watcher.attach("lobby").await;
    let mut bob = user(&one, "bob").await;
    bob.attach("lobby").await;
    bob.send(&presence_op("lobby", 0, PresenceAction::Enter, "here"))
        .await;
    assert_eq!(
        next_presence(&mut watcher).await.action,
        PresenceAction::Enter
    );
    let keep = one.stop().await;
    let left = next_presence(&mut watcher).await;
    assert_eq!(left.action, PresenceAction::Leave);
    assert_eq!(left.client_id.as_deref(), Some("bob"));
    assert!(present(&two, "lobby").await.is_empty());
    drop(keep);
}

/// Tokens the broker mints (here the development login's) are signed with the cluster's one
/// signing key, so a token from one node opens a connection on another.
#[tokio::test]
async fn a_token_minted_on_one_node_works_on_another() {
    let nats = NatsCluster::start(1).await;
    let urls = nats.urls();
    let with_login = move |c: &mut broker::config::Config| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
        c.dev_login = Some(true);
    };
    let one = TestBroker::start_with(with_login.clone()).await;
    let two = TestBroker::start_with(with_login).await;
    let login = tests::json(
        tests::http()
            .post(one.url("/api/dev/login"))
            .json(&serde_json::json!({"username": "carol"})),
    )
    .await;
    let token = login["token"].as_str().expect("a token");
    let mut client = two
        .connect(&format!("access_token={}&format=json", urlencode(token)))
        .await;
    let connected = client.expect(Action::Connected).await;
    assert!(connected.error.is_none(), "{connected:?}");
    assert_eq!(
        connected.connection_details.unwrap().client_id.as_deref(),
        Some("carol")
    );
    // And the other node knows the name the first one issued.
    let profile = tests::json(
        tests::http()
            .get(two.url("/api/users/carol/profile"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(profile["username"], "carol");
}

/// `revokeTokens` on one node (§8.5 of the protocol notes: 40141) closes the revoked client's
/// connections on every node and refuses its older tokens there.
#[tokio::test]
async fn a_revocation_on_one_node_holds_on_every_node() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let minted = tests::json(
        tests::http()
            .post(one.url("/keys/test.full/requestToken"))
            .header("authorization", tests::basic_auth())
            .json(&serde_json::json!({"clientId": "mallory"})),
    )
    .await;
    let token = minted["token"].as_str().expect("a token").to_owned();
    let query = format!("access_token={}&format=json", urlencode(&token));
    let mut live = two.connect(&query).await;
    live.expect(Action::Connected).await;
    tests::clock_passes(&one, tests::token_issued_at(&token)).await;
    let revoked = tests::send(
        tests::http()
            .post(one.url("/keys/test.full/revokeTokens"))
            .header("authorization", tests::basic_auth())
            .json(&serde_json::json!({"targets": ["clientId:mallory"]})),
    )
    .await;
    assert_eq!(revoked.status(), 200);
    let farewell = live.expect(Action::Disconnected).await;
    assert_eq!(farewell.error.unwrap().code, 40141);
    let mut again = two.connect(&query).await;
    assert_eq!(again.expect(Action::Error).await.error.unwrap().code, 40141);
}

/// A node of the cluster on `nats` with Auth0 logins from `issuer`.
async fn auth0_node(nats: &NatsCluster, issuer: &tests::issuer::Issuer) -> TestBroker {
    let (urls, auth0) = (nats.urls(), issuer.config());
    TestBroker::start_with(move |c| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
        c.auth0 = auth0;
    })
    .await
}

fn auth0_token(issuer: &tests::issuer::Issuer, sub: &str, nickname: &str) -> String {
    let claims = issuer.claims(sub, serde_json::json!({ "nickname": nickname }));
    tests::issuer::sign(&tests::issuer::KEYS[0], &claims)
}

/// `GET /api/users/me` on `broker`: the user behind `token`, logged in on first sight.
async fn me(broker: &TestBroker, token: &str) -> serde_json::Value {
    tests::json(
        tests::http()
            .get(broker.url("/api/users/me"))
            .bearer_auth(token),
    )
    .await
}

/// The Auth0 user table is the cluster's (issue 17, "the user table is shared"): a user
/// created on one node is the same user on another, with the profile edited there; two first
/// logins of one person on two nodes at once make one user; one username is never given to
/// two users on two nodes; the admin list on any node holds everyone.
#[tokio::test]
async fn every_node_reads_and_writes_one_user_table() {
    let nats = NatsCluster::start(1).await;
    let issuer = tests::issuer::Issuer::start(&[&tests::issuer::KEYS[0]]).await;
    let (one, two) = (
        auth0_node(&nats, &issuer).await,
        auth0_node(&nats, &issuer).await,
    );
    let ada = auth0_token(&issuer, "auth0|ada", "ada");
    let created = me(&one, &ada).await;
    let edited = tests::json(
        tests::http()
            .patch(two.url("/api/users/me"))
            .bearer_auth(&ada)
            .json(&serde_json::json!({"firstName": "Ada", "username": "countess"})),
    )
    .await;
    assert_eq!(edited["id"], created["id"], "one user on both nodes");
    let seen = me(&one, &ada).await;
    assert_eq!(
        (&seen["firstName"], &seen["username"]),
        (&serde_json::json!("Ada"), &serde_json::json!("countess"))
    );

    let twin = auth0_token(&issuer, "auth0|twin", "twin");
    let (first, second) = tokio::join!(me(&one, &twin), me(&two, &twin));
    assert_eq!(
        first["id"], second["id"],
        "concurrent first logins, one user"
    );

    let sams = [
        auth0_token(&issuer, "auth0|sam1", "sam"),
        auth0_token(&issuer, "google-oauth2|sam2", "sam"),
    ];
    let (a, b) = tokio::join!(me(&one, &sams[0]), me(&two, &sams[1]));
    let mut names = [a["username"].clone(), b["username"].clone()];
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, [serde_json::json!("sam"), serde_json::json!("sam2")]);
    let taken = tests::send(
        tests::http()
            .patch(one.url("/api/users/me"))
            .bearer_auth(&ada)
            .json(&serde_json::json!({ "username": "sam" })),
    )
    .await;
    assert_eq!(taken.status(), 409, "a name taken through the other node");

    let listed = tests::json(
        tests::http()
            .get(two.url("/api/users?limit=10"))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    let mut ids: Vec<&str> = listed["users"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|u| u["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 4, "{listed}");
    let listed_order = ids.clone();
    ids.sort();
    assert_eq!(listed_order, ids, "in id order");
    let profile = tests::json(
        tests::http()
            .get(two.url(&format!(
                "/api/users/{}/profile",
                created["id"].as_str().unwrap()
            )))
            .bearer_auth(&twin),
    )
    .await;
    assert_eq!(profile["username"], "countess");
}

/// Deleting a user on one node bans them on every node: their connections on another node
/// end with 40300, their Auth0 logins and the broker tokens any node minted them are refused
/// there, until an admin restores them on any node.
#[tokio::test]
async fn a_user_deleted_on_one_node_is_banned_on_every_node() {
    let nats = NatsCluster::start(1).await;
    let issuer = tests::issuer::Issuer::start(&[&tests::issuer::KEYS[0]]).await;
    let (one, two) = (
        auth0_node(&nats, &issuer).await,
        auth0_node(&nats, &issuer).await,
    );
    let fay = auth0_token(&issuer, "auth0|fay", "fay");
    let id = me(&one, &fay).await["id"].as_str().unwrap().to_owned();
    let minted = tests::json(
        tests::http()
            .get(two.url("/api/auth/token"))
            .bearer_auth(&fay),
    )
    .await;
    let broker_token = minted["token"].as_str().expect("a token").to_owned();
    tests::clock_passes(&one, tests::token_issued_at(&broker_token)).await;
    let mut with_auth0 = two
        .connect(&format!("access_token={fay}&format=json"))
        .await;
    with_auth0.expect(Action::Connected).await;

    let deleted = tests::send(
        tests::http()
            .delete(one.url(&format!("/api/users/{id}")))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    assert_eq!(deleted.status(), 200);
    let error = with_auth0.expect(Action::Error).await.error.unwrap();
    assert_eq!((error.code, error.status_code), (40300, 403));
    let mut login = two
        .connect(&format!("access_token={fay}&format=json"))
        .await;
    assert_eq!(login.expect(Action::Error).await.error.unwrap().code, 40300);
    let query = format!("access_token={}&format=json", urlencode(&broker_token));
    let mut with_old = two.connect(&query).await;
    let refused = with_old.expect(Action::Error).await.error.unwrap();
    assert!([40141, 40300].contains(&refused.code), "{refused:?}");

    let restored = tests::send(
        tests::http()
            .post(two.url(&format!("/api/users/{id}/restore")))
            .header("authorization", tests::basic_auth()),
    )
    .await;
    assert_eq!(restored.status(), 200);
    let fresh = auth0_token(&issuer, "auth0|fay", "fay-again");
    assert_eq!(me(&one, &fresh).await["id"].as_str(), Some(id.as_str()));
}

/// `GET /channels/{name}` (§9.2) on any node counts the attachers of every node: each node
/// adds up the others' answers, and the presence members are the channel's one set.
#[tokio::test]
async fn channel_status_counts_the_attachers_of_every_node() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut here, _) = one.connect_key("json").await;
    here.attach("busy").await;
    let mut alice = user(&two, "alice").await;
    alice.attach("busy").await;
    alice
        .send(&presence_op("busy", 0, PresenceAction::Enter, "hi"))
        .await;
    alice.expect_acks(1).await;
    for broker in [&two, &one] {
        let mut polls = 0;
        let metrics = loop {
            let status = tests::json(
                tests::http()
                    .get(broker.url("/channels/busy"))
                    .header("authorization", tests::basic_auth()),
            )
            .await;
            let metrics = status["status"]["occupancy"]["metrics"].clone();
            // A node counts another from its first heartbeat on (every 2 s).
            polls += 1;
            if metrics["connections"] == 2 || polls == 100 {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(
            (
                &metrics["connections"],
                &metrics["presenceMembers"],
                &metrics["subscribers"]
            ),
            (
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(2)
            ),
            "{metrics}"
        );
    }
}

/// Retention is a node setting that the streams follow: a node restarted with a lower
/// per-channel limit brings the existing streams to it, and JetStream drops what is over it.
#[tokio::test]
async fn a_node_restarted_with_new_retention_changes_the_streams() {
    use broker::backend::jetstream::subject;
    let nats = NatsCluster::start(1).await;
    let one = node(&nats).await;
    let (mut publisher, _) = one.connect_key("json").await;
    for i in 0..5 {
        publisher.publish("kept", i, &format!("m{i}")).await;
    }
    publisher.expect_acks(5).await;
    drop(publisher);
    let dir = one.dir().to_owned();
    let keep = one.stop().await;
    let urls = nats.urls();
    let one = TestBroker::start_in(&dir, move |c| {
        c.cluster.nats = urls;
        c.cluster.shards = 2;
        c.retention.max_messages_per_channel = 2;
    })
    .await;
    // The node answers once it has started, and it starts by opening the streams.
    let health = tests::send(tests::http().get(one.url("/health"))).await;
    assert_eq!(health.status(), 200);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url(0)).await.unwrap());
    let name = subject::stream_name("ably", subject::shard_of("kept", 2));
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_messages_per_subject, 2);
    assert_eq!(info.state.messages, 2, "the older messages are dropped");
    one.stop().await;
    drop(keep);
}

/// An ephemeral message (`extras.ephemeral`, ably-chat.md §5.9: typing, room reactions)
/// published on one node reaches subscribers on another, and is stored on neither.
#[tokio::test]
async fn ephemeral_messages_reach_every_node_and_are_stored_nowhere() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut far, _) = two.connect_key("msgpack").await;
    far.attach("typing").await;
    // Not attached, so its ACKs are the only frames it gets.
    let (mut typist, _) = one.connect_key("json").await;
    let mut message = publish_message("typing", 0, "alice is typing");
    message.messages.as_mut().unwrap()[0].extras = Some(serde_json::json!({"ephemeral": true}));
    typist.send(&message).await;
    assert_eq!(
        typist.expect(Action::Ack).await.res.unwrap()[0].serials,
        [None]
    );
    let seen = far.expect(Action::Message).await;
    assert_eq!(texts(&seen), ["alice is typing"]);
    assert_eq!(seen.channel_serial, None);
    assert_eq!(seen.messages.unwrap()[0].serial, None);
    typist.publish("typing", 1, "stored").await;
    typist.expect_acks(1).await;
    assert_eq!(texts(&far.expect(Action::Message).await), ["stored"]);
    for broker in [&one, &two] {
        let stored: Vec<_> = history(broker, "typing", "")
            .await
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, ["stored"]);
    }
}

/// A message edited on one node (ably-chat.md §2) is edited on every node: subscribers
/// elsewhere get the update with the original's serial, and history on each node shows the
/// message once, in its latest version.
#[tokio::test]
async fn an_edit_on_one_node_is_the_edit_everywhere() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut far, _) = two.connect_key("json").await;
    far.attach("edited").await;
    // History reads the node's view, which applies the stream a moment after JetStream's
    // ACK; a subscriber on node one gets the edit once node one's view holds it.
    let (mut near, _) = one.connect_key("json").await;
    near.attach("edited").await;
    let (mut author, _) = one.connect_key("json").await;
    author.publish("edited", 0, "draft").await;
    let serial = author.expect(Action::Ack).await.res.unwrap()[0].serials[0]
        .clone()
        .unwrap();
    let edit = ProtocolMessage {
        msg_serial: Some(1),
        messages: Some(vec![protocol::Message {
            action: Some(protocol::Message::UPDATE),
            serial: Some(serial.clone()),
            data: Some(Data::String("final".into())),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Message, "edited")
    };
    author.send(&edit).await;
    author.expect_acks(1).await;
    assert_eq!(texts(&far.expect(Action::Message).await), ["draft"]);
    let update = far.expect(Action::Message).await;
    let changed = &update.messages.as_ref().unwrap()[0];
    assert_eq!(
        (changed.action, changed.serial.as_deref()),
        (Some(protocol::Message::UPDATE), Some(serial.as_str()))
    );
    assert_eq!(texts(&near.expect(Action::Message).await), ["draft"]);
    let update = near.expect(Action::Message).await;
    assert_eq!(texts(&update), ["final"]);
    for broker in [&one, &two] {
        let stored = history(broker, "edited", "").await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0]["data"], "final");
    }
}

/// Annotations made on two nodes (ably-chat.md §5.6) add up everywhere: each node's
/// subscribers get the raw annotations and the summaries, the second node's summary counts
/// the first node's annotation, and history on each node carries the whole summary.
#[tokio::test]
async fn annotations_on_two_nodes_add_up_everywhere() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let (mut far, _) = two.connect_key("json").await;
    far.send(&ProtocolMessage {
        flags: Some(protocol::flags::MODE_SUBSCRIBE | protocol::flags::MODE_ANNOTATION_SUBSCRIBE),
        ..ProtocolMessage::for_channel(Action::Attach, "liked")
    })
    .await;
    far.expect(Action::Attached).await;
    // Node one's view holds the last summary once a subscriber there has it (see above).
    let (mut watch, _) = one.connect_key("json").await;
    watch.attach("liked").await;
    let (mut author, _) = one.connect_key("json").await;
    author.publish("liked", 0, "photo").await;
    let serial = author.expect(Action::Ack).await.res.unwrap()[0].serials[0]
        .clone()
        .unwrap();
    assert_eq!(texts(&far.expect(Action::Message).await), ["photo"]);
    let like = |msg_serial, client: &str| ProtocolMessage {
        msg_serial: Some(msg_serial),
        annotations: Some(vec![protocol::Annotation {
            message_serial: Some(serial.clone()),
            kind: Some("like:distinct.v1".into()),
            name: Some("👍".into()),
            client_id: Some(client.into()),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Annotation, "liked")
    };
    // The test key allows any clientId: each annotation names its own.
    author.send(&like(1, "ann")).await;
    author.expect_acks(1).await;
    // Node two holds ann's annotation before bob's is made there: a summary counts what its
    // node has seen (concurrent annotations on two nodes are a documented limit).
    assert_eq!(
        far.expect(Action::Annotation)
            .await
            .annotations
            .unwrap()
            .len(),
        1
    );
    far.expect(Action::Message).await;
    let (mut near, _) = two.connect_key("msgpack").await;
    near.send(&like(0, "bob")).await;
    near.expect_acks(1).await;
    let mut clients = Vec::new();
    while clients.len() < 2 {
        let frame = far.next().await.expect("open");
        if frame.action == Action::Annotation {
            continue;
        }
        let m = &frame.messages.unwrap()[0];
        assert_eq!(m.action, Some(protocol::Message::SUMMARY), "{m:?}");
        clients = m.annotations.as_ref().unwrap()["summary"]["like:distinct.v1"]["👍"]["clientIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
    }
    assert_eq!(
        clients,
        ["ann", "bob"],
        "node two's summary counts node one's"
    );
    loop {
        let frame = watch.expect(Action::Message).await;
        let m = &frame.messages.unwrap()[0];
        if m.action == Some(protocol::Message::SUMMARY)
            && m.annotations.as_ref().unwrap()["summary"]["like:distinct.v1"]["👍"]["total"] == 2
        {
            break;
        }
    }
    for broker in [&one, &two] {
        let stored = history(broker, "liked", "").await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            stored[0]["annotations"]["summary"]["like:distinct.v1"]["👍"]["total"],
            2
        );
    }
}

/// A chat REST call on room `room` of `broker` as `token`; the status and the answer.
async fn chat_call(
    broker: &TestBroker,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = broker.url(&format!("/chat/v4/rooms/claims{path}"));
    let request = tests::http()
        .request(method, url)
        .bearer_auth(token)
        .json(&body);
    let response = tests::send(request).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// User claims and chat idempotency keys across nodes: alice's claim, set on one node, is on
/// the message another node delivers and lists, and on bob's edit there; a send or an edit
/// repeated with its idempotency key on the other node answers the first one and delivers
/// nothing more (JetStream's duplicate window holds the ids for the whole cluster).
#[tokio::test]
async fn user_claims_and_idempotency_keys_hold_across_nodes() {
    let nats = NatsCluster::start(1).await;
    let (one, two) = (node(&nats).await, node(&nats).await);
    let token = |client_id: &str, claim: &str| {
        tests::ably_jwt(
            KEY,
            serde_json::json!({"exp": tests::now_secs() + 600, "x-ably-clientId": client_id,
                "x-ably-capability": r#"{"*":["*"]}"#, "ably.room.claims": claim}),
        )
    };
    let (alice, bob) = (token("alice", "a-claim"), token("bob", "b-claim"));
    let (mut watcher, _) = two.connect_key("json").await;
    watcher.attach("claims::$chat").await;
    // Node one has what node two delivered once its own watcher has it too.
    let (mut watcher_one, _) = one.connect_key("json").await;
    watcher_one.attach("claims::$chat").await;
    let claim_of = |frame: &ProtocolMessage| {
        let extras = frame.messages.as_ref().expect("messages")[0].extras.clone();
        extras.and_then(|e| e.get("userClaim").cloned())
    };

    let body = serde_json::json!({"text": "hi"});
    let send = "/messages?idempotencyKey=k";
    let (status, sent) = chat_call(&one, &alice, reqwest::Method::POST, send, body.clone()).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["userClaim"], "a-claim");
    let frame = watcher.expect(Action::Message).await;
    assert_eq!(claim_of(&frame), Some("a-claim".into()));
    let (status, again) = chat_call(&two, &alice, reqwest::Method::POST, send, body).await;
    // (Node two delivered the message, so it holds it to answer with.)
    assert_eq!((status, &again), (201, &sent));

    let serial = urlencode(sent["serial"].as_str().expect("serial"));
    let edit = format!("/messages/{serial}?idempotencyKey=e");
    let body = serde_json::json!({"message": {"text": "edited"}});
    let (status, edited) = chat_call(&two, &bob, reqwest::Method::PUT, &edit, body.clone()).await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["userClaim"], "a-claim", "the author's claim");
    let frame = watcher.expect(Action::Message).await;
    assert_eq!(claim_of(&frame), Some("a-claim".into()));
    watcher_one.expect(Action::Message).await;
    watcher_one.expect(Action::Message).await;
    let (status, again) = chat_call(&one, &bob, reqwest::Method::PUT, &edit, body).await;
    assert_eq!((status, &again), (200, &edited));

    // Nothing more was delivered: the next message on the channel is this one.
    let (status, _) = chat_call(
        &one,
        &bob,
        reqwest::Method::POST,
        "/messages",
        serde_json::json!({"text": "marker"}),
    )
    .await;
    assert_eq!(status, 201);
    let frame = watcher.expect(Action::Message).await;
    assert_eq!(claim_of(&frame), Some("b-claim".into()));
    watcher_one.expect(Action::Message).await;
    for broker in [&one, &two] {
        let (_, listed) = chat_call(
            broker,
            &alice,
            reqwest::Method::GET,
            "/messages",
            serde_json::Value::Null,
        )
        .await;
        let listed: Vec<(String, String)> = listed
            .as_array()
            .expect("an array")
            .iter()
            .map(|m| (m["text"].to_string(), m["userClaim"].to_string()))
            .collect();
        assert_eq!(
            listed,
            [
                ("\"marker\"".into(), "\"b-claim\"".into()),
                ("\"edited\"".into(), "\"a-claim\"".into())
            ]
        );
    }
}
