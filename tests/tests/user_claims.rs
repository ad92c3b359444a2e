//! User claims (`../shared/ably-chat.md` §5.10) with a real broker on 127.0.0.1:0: a token's
//! `ably.room.<room>` claim becomes `extras.userClaim` on what its holder publishes in that
//! room (realtime and REST messages, presence, annotations, chat REST sends and reactions,
//! with the chat API's top-level `userClaim`), in live delivery and history; nowhere else; a
//! client's own `userClaim` never survives; an edit by someone else keeps the author's claim.
//! Auth0 tokens carry them too, top-level and in the configured `user_claims` object.

use protocol::{flags, Action, Annotation, Message, PresenceAction, ProtocolMessage};
use serde_json::{json, Value};
use tests::issuer::{sign, Issuer, KEYS};
use tests::{
    ably_jwt, basic_auth, history, http, json, now_secs, presence_message, send, urlencode, Client,
    TestBroker, KEY,
};

const ROOM: &str = "r1";
const CHANNEL: &str = "r1::$chat";

/// An Ably JWT for `client_id` with every right and `claims` on top.
fn token(client_id: &str, claims: Value) -> String {
    let mut all = json!({
        "iat": now_secs(),
        "exp": now_secs() + 60,
        "x-ably-clientId": client_id,
        "x-ably-capability": r#"{"*":["*"]}"#,
    });
    for (k, v) in claims.as_object().expect("an object") {
        all[k] = v.clone();
    }
    ably_jwt(KEY, all)
}

/// A realtime connection with `token`, in `format`, that does not hear its own messages.
async fn connect_with(broker: &TestBroker, token: &str, format: &str) -> Client {
    let mut client = broker
        .connect(&format!("access_token={token}&format={format}&echo=false"))
        .await;
    client.expect(Action::Connected).await;
    client
}

/// The next ACK, skipping what else arrives (the publisher's own presence events).
async fn next_ack(client: &mut Client) -> ProtocolMessage {
    loop {
        let frame = client.next().await.expect("connection still open");
        if frame.action == Action::Ack {
            return frame;
        }
        assert_ne!(frame.action, Action::Nack, "{frame:?}");
    }
}

/// Attaches `channel` asking for `modes`.
async fn attach_with(client: &mut Client, channel: &str, modes: u64) {
    client
        .send(&ProtocolMessage {
            flags: Some(modes),
            ..ProtocolMessage::for_channel(Action::Attach, channel)
        })
        .await;
    client.expect(Action::Attached).await;
}

/// The `userClaim` of `extras`, if any.
fn claim_of(extras: &Option<Value>) -> Option<&str> {
    extras.as_ref()?.get("userClaim")?.as_str()
}

/// A MESSAGE with one message whose extras forge a claim.
fn forged(channel: &str, msg_serial: u64, data: &str) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(vec![Message {
            name: Some("test".into()),
            data: Some(protocol::Data::String(data.into())),
            extras: Some(json!({"userClaim": "forged", "headers": {"h": "1"}})),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// A chat REST call as `token`; the status and the answer.
async fn chat(
    broker: &TestBroker,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = broker.url(&format!("/chat/v4/rooms/{}{path}", urlencode(ROOM)));
    let mut request = http().request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = send(request).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// Everything alice publishes in her room carries her claim, live and in history; what she
/// publishes elsewhere carries none; forged claims are replaced or removed; bob's edit keeps
/// alice's claim.
#[tokio::test]
async fn the_tokens_room_claim_is_on_everything_published_in_the_room() {
    let broker = TestBroker::start().await;
    let alice = token("alice", json!({"ably.room.r1": "alice-claim"}));
    let bob = token("bob", json!({"ably.room.r1": "bob-claim"}));
    let (mut watcher, _) = broker.connect_key("msgpack").await;
    let modes =
        flags::MODE_SUBSCRIBE | flags::MODE_PRESENCE_SUBSCRIBE | flags::MODE_ANNOTATION_SUBSCRIBE;
    attach_with(&mut watcher, CHANNEL, modes).await;
    watcher.attach("elsewhere").await;
    let mut publisher = connect_with(&broker, &alice, "json").await;
    publisher.attach(CHANNEL).await;

    // A realtime publish: the forged claim is replaced, the headers stay.
    publisher.send(&forged(CHANNEL, 0, "hello")).await;
    let acked = next_ack(&mut publisher).await;
    let serial = acked.res.unwrap()[0].serials[0].clone().expect("a serial");
    let frame = watcher.expect(Action::Message).await;
    let m = &frame.messages.expect("messages")[0];
    assert_eq!(
        m.extras,
        Some(json!({"userClaim": "alice-claim", "headers": {"h": "1"}}))
    );

    // Elsewhere there is no claim, and the forged one is gone.
    publisher.send(&forged("elsewhere", 1, "there")).await;
    next_ack(&mut publisher).await;
    let frame = watcher.expect(Action::Message).await;
    let m = &frame.messages.expect("messages")[0];
    assert_eq!(m.extras, Some(json!({"headers": {"h": "1"}})));

    // Presence.
    let mut enter = presence_message(CHANNEL, 2, PresenceAction::Enter, None, "here");
    enter.presence.as_mut().unwrap()[0].extras = Some(json!({"userClaim": "forged"}));
    publisher.send(&enter).await;
    next_ack(&mut publisher).await;
    let frame = watcher.expect(Action::Presence).await;
    let item = &frame.presence.expect("presence")[0];
    assert_eq!(claim_of(&item.extras), Some("alice-claim"));

    // A realtime annotation.
    let note = Annotation {
        message_serial: Some(serial.clone()),
        kind: Some("reaction:distinct.v1".into()),
        name: Some("👍".into()),
        extras: Some(json!({"userClaim": "forged"})),
        ..Annotation::default()
    };
    publisher
        .send(&ProtocolMessage {
            msg_serial: Some(3),
            annotations: Some(vec![note]),
            ..ProtocolMessage::for_channel(Action::Annotation, CHANNEL)
        })
        .await;
    next_ack(&mut publisher).await;
    let frame = watcher.expect(Action::Annotation).await;
    let a = &frame.annotations.expect("annotations")[0];
    assert_eq!(claim_of(&a.extras), Some("alice-claim"));
    watcher.expect(Action::Message).await; // its summary

    // A REST publish.
    let published = send(
        http()
            .post(broker.url(&format!("/channels/{}/messages", urlencode(CHANNEL))))
            .bearer_auth(&alice)
            .json(&json!({"name": "rest", "data": "x", "extras": {"userClaim": "forged"}})),
    )
    .await;
    assert_eq!(published.status().as_u16(), 201);
    let frame = watcher.expect(Action::Message).await;
    assert_eq!(
        claim_of(&frame.messages.expect("messages")[0].extras),
        Some("alice-claim")
    );

    // A chat REST send: top-level userClaim, extras.userClaim on the channel.
    let (status, sent) = chat(
        &broker,
        &alice,
        reqwest::Method::POST,
        "/messages",
        Some(json!({"text": "chat", "headers": {"userClaim": "forged"}})),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["userClaim"], "alice-claim");
    let frame = watcher.expect(Action::Message).await;
    assert_eq!(
        claim_of(&frame.messages.expect("messages")[0].extras),
        Some("alice-claim")
    );

    // A chat reaction (R7) by bob carries bob's claim.
    let chat_serial = urlencode(sent["serial"].as_str().expect("serial"));
    let (status, answer) = chat(
        &broker,
        &bob,
        reqwest::Method::POST,
        &format!("/messages/{chat_serial}/reactions"),
        Some(json!({"type": "distinct", "name": "❤"})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let frame = watcher.expect(Action::Annotation).await;
    let a = &frame.annotations.expect("annotations")[0];
    assert_eq!(claim_of(&a.extras), Some("bob-claim"));
    watcher.expect(Action::Message).await; // its summary

    // Bob (with message-update-any) edits alice's message: the claim stays alice's.
    let (status, edited) = chat(
        &broker,
        &bob,
        reqwest::Method::PUT,
        &format!("/messages/{chat_serial}"),
        Some(json!({"message": {"text": "edited"}, "description": "tidy"})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["userClaim"], "alice-claim");
    assert_eq!(edited["version"]["clientId"], "bob");
    let frame = watcher.expect(Action::Message).await;
    let m = &frame.messages.expect("messages")[0];
    assert_eq!(m.action, Some(Message::UPDATE));
    assert_eq!(claim_of(&m.extras), Some("alice-claim"));

    // History: every message of the room has alice's claim (the edit included).
    let items = history(&broker, &urlencode(CHANNEL), "").await;
    assert_eq!(items.len(), 3, "{items:?}");
    for item in &items {
        assert_eq!(item["extras"]["userClaim"], "alice-claim", "{item}");
    }
    let elsewhere = history(&broker, "elsewhere", "").await;
    assert!(elsewhere[0]["extras"].get("userClaim").is_none());
    let (status, listed) = chat(&broker, &bob, reqwest::Method::GET, "/messages", None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["text"], "edited");
    assert_eq!(listed[0]["userClaim"], "alice-claim");

    // The presence set and the annotations keep theirs.
    let members = json(
        http()
            .get(broker.url(&format!("/channels/{}/presence", urlencode(CHANNEL))))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(
        members[0]["extras"]["userClaim"], "alice-claim",
        "{members}"
    );
    let annotations = json(
        http()
            .get(broker.url(&format!(
                "/channels/{}/messages/{}/annotations",
                urlencode(CHANNEL),
                urlencode(&serial)
            )))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(
        annotations[0]["extras"]["userClaim"], "alice-claim",
        "{annotations}"
    );
}

/// An Auth0 token's claims: top-level `ably.channel.*`, and the configured `user_claims`
/// object with room and plain channel names; `/api/auth/token` carries them into the broker
/// token it mints.
#[tokio::test]
async fn auth0_tokens_carry_claims_top_level_and_in_the_configured_object() {
    let issuer = Issuer::start(&[&KEYS[0]]).await;
    let mut config = issuer.config();
    config.user_claims = Some("https://chat.example/claims".into());
    config.default_capability = r#"{"*":["*"]}"#.into();
    let broker = TestBroker::start_with(move |c| c.auth0 = config).await;
    let jwt = sign(
        &KEYS[0],
        &issuer.claims(
            "auth0|cat",
            json!({
                "ably.channel.top": "from-top",
                "https://chat.example/claims": {"ably.room.r1": "vip", "news": "reader"},
            }),
        ),
    );
    let minted = json(http().post(broker.url("/api/auth/token")).bearer_auth(&jwt)).await;
    let minted = minted["token"].as_str().expect("a broker token").to_owned();
    for (channel, expected) in [
        ("top", Some("from-top")),
        (CHANNEL, Some("vip")),
        ("news", Some("reader")),
        ("plain", None),
    ] {
        for (n, token) in [&jwt, &minted].into_iter().enumerate() {
            let published = send(
                http()
                    .post(broker.url(&format!("/channels/{}/messages", urlencode(channel))))
                    .bearer_auth(token)
                    .json(&json!({"name": "n", "data": format!("{n}")})),
            )
            .await;
            assert_eq!(published.status().as_u16(), 201, "{channel}");
        }
        let items = history(&broker, &urlencode(channel), "").await;
        assert_eq!(items.len(), 2, "{items:?}");
        for item in &items {
            assert_eq!(
                item["extras"]["userClaim"].as_str(),
                expected,
                "{channel}: {item}"
            );
        }
    }
}
