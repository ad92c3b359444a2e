//! Capabilities as @ably/chat apps write them (`../shared/ably-chat.md` §5.1, §5.2): a grant on
//! a room's name covers the room's channel `<room>::$chat`, on realtime and REST alike, and no
//! other room's; the annotation modes a chat client asks for when attaching are granted only
//! with `annotation-publish` and `annotation-subscribe`, and ANNOTATION_SUBSCRIBE never
//! unasked.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protocol::{flags, Action, ProtocolMessage};
use serde_json::json;
use tests::{ably_jwt, http, now_secs, send, texts, urlencode, Client, TestBroker, KEY};

/// An Ably JWT for clientId `ann` with `capability`, valid for a minute.
fn token_with(capability: &str) -> String {
    ably_jwt(
        KEY,
        json!({
            "iat": now_secs(),
            "exp": now_secs() + 60,
            "x-ably-clientId": "ann",
            "x-ably-capability": capability,
        }),
    )
}

async fn connect(broker: &TestBroker, token: &str, format: &str) -> Client {
    let mut client = broker
        .connect(&format!("access_token={token}&format={format}"))
        .await;
    client.expect(Action::Connected).await;
    client
}

/// ATTACH `channel` asking for `modes`; the ATTACHED's mode bits and its `modes` param.
async fn attach_with_modes(client: &mut Client, channel: &str, modes: u64) -> (u64, String) {
    client
        .send(&ProtocolMessage {
            flags: Some(modes),
            ..ProtocolMessage::for_channel(Action::Attach, channel)
        })
        .await;
    let attached = client.expect(Action::Attached).await;
    let params = attached.params.expect("ATTACHED params");
    (
        attached.flags.unwrap_or(0) & flags::MODE_ALL,
        params["modes"].clone(),
    )
}

/// REST publish to `channel` with `token`; the HTTP status and the Ably error code, if any.
async fn rest_publish(broker: &TestBroker, token: &str, channel: &str) -> (u16, Option<i64>) {
    let response = send(
        http()
            .post(broker.url(&format!("/channels/{}/messages", urlencode(channel))))
            .header(
                "authorization",
                format!("Bearer {}", STANDARD.encode(token)),
            )
            .json(&json!({"name": "rest", "data": "hi"})),
    )
    .await;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["error"]["code"].as_i64())
}

/// §5.1: `{"my-room":[…]}` attaches, publishes and receives on `my-room::$chat`, over realtime
/// and REST; `other::$chat` and `my-room2::$chat` are refused with 40160.
#[tokio::test]
async fn a_grant_on_a_room_covers_its_chat_channel_and_no_other() {
    let broker = TestBroker::start().await;
    let token = token_with(r#"{"my-room":["publish","subscribe"]}"#);
    let mut client = connect(&broker, &token, "json").await;

    let attached = client.attach("my-room::$chat").await;
    assert_eq!(
        attached.flags.unwrap() & flags::MODE_ALL,
        flags::MODE_PUBLISH | flags::MODE_SUBSCRIBE | flags::MODE_PRESENCE_SUBSCRIBE
    );
    client.publish("my-room::$chat", 0, "hello room").await;
    let (mut acked, mut received) = (false, Vec::new());
    while !acked || received.is_empty() {
        let message = client.next().await.expect("connection open");
        match message.action {
            Action::Ack => acked = true,
            Action::Message => received.extend(texts(&message)),
            other => panic!("unexpected {other:?}: {message:?}"),
        }
    }
    assert_eq!(received, ["hello room"]);

    for (msg_serial, refused) in [(1, "other::$chat"), (2, "my-room2::$chat")] {
        client
            .send(&ProtocolMessage::for_channel(Action::Attach, refused))
            .await;
        let error = client.expect(Action::Error).await;
        assert_eq!(error.channel.as_deref(), Some(refused));
        assert_eq!(error.error.unwrap().code, 40160, "attach {refused}");
        client.publish(refused, msg_serial, "no").await;
        let nack = client.expect(Action::Nack).await;
        assert_eq!(
            (nack.msg_serial, nack.error.unwrap().code),
            (Some(msg_serial), 40160),
            "publish to {refused}"
        );
    }

    assert_eq!(
        rest_publish(&broker, &token, "my-room::$chat").await,
        (201, None)
    );
    assert_eq!(
        rest_publish(&broker, &token, "other::$chat").await,
        (401, Some(40160))
    );
    assert_eq!(
        texts(&client.expect(Action::Message).await),
        ["hi"],
        "the REST publish reached the room"
    );
}

/// §5.2: ATTACH asking for ANNOTATION_PUBLISH | ANNOTATION_SUBSCRIBE gets each only with its
/// capability, in the flags and in the `modes` param; without a request, ANNOTATION_PUBLISH
/// is among the modes granted and ANNOTATION_SUBSCRIBE is not.
#[tokio::test]
async fn annotation_modes_need_their_capabilities() {
    let broker = TestBroker::start().await;
    let asked = flags::MODE_PUBLISH
        | flags::MODE_SUBSCRIBE
        | flags::MODE_ANNOTATION_PUBLISH
        | flags::MODE_ANNOTATION_SUBSCRIBE;
    let cases = [
        (
            r#"{"my-room":["publish","subscribe","annotation-publish","annotation-subscribe"]}"#,
            asked,
            "publish,subscribe,annotation_publish,annotation_subscribe",
        ),
        (
            r#"{"my-room":["publish","subscribe","annotation-publish"]}"#,
            flags::MODE_PUBLISH | flags::MODE_SUBSCRIBE | flags::MODE_ANNOTATION_PUBLISH,
            "publish,subscribe,annotation_publish",
        ),
        (
            r#"{"my-room":["subscribe","annotation-subscribe"]}"#,
            flags::MODE_SUBSCRIBE | flags::MODE_ANNOTATION_SUBSCRIBE,
            "subscribe,annotation_subscribe",
        ),
        (
            r#"{"my-room":["publish","subscribe"]}"#,
            flags::MODE_PUBLISH | flags::MODE_SUBSCRIBE,
            "publish,subscribe",
        ),
    ];
    for (format, (capability, granted, named)) in ["json", "msgpack"].iter().cycle().zip(cases) {
        let mut client = connect(&broker, &token_with(capability), format).await;
        assert_eq!(
            attach_with_modes(&mut client, "my-room::$chat", asked).await,
            (granted, named.to_owned()),
            "{capability}"
        );
    }

    let everything = r#"{"my-room":["*"]}"#;
    let mut client = connect(&broker, &token_with(everything), "json").await;
    let (modes, named) = attach_with_modes(&mut client, "my-room::$chat", 0).await;
    assert_eq!(
        modes,
        flags::MODE_PRESENCE
            | flags::MODE_PUBLISH
            | flags::MODE_SUBSCRIBE
            | flags::MODE_PRESENCE_SUBSCRIBE
            | flags::MODE_ANNOTATION_PUBLISH
    );
    assert_eq!(
        named,
        "presence,publish,subscribe,presence_subscribe,annotation_publish"
    );
}
