//! Trust and correctness (issue 15): what a client cannot do to other clients (edits stored as
//! new messages, forged server-set fields, operations outside its attach modes), and the
//! everyday cases ably-js expects Ably to get right (numeric channel params, recover beside a
//! live original, empty namespaces, presence SYNC on request, REST publish on behalf of a
//! realtime connection). References are to `../shared/ably-protocol.md`.

use protocol::{flags, Action, Message, PresenceAction, PresenceMessage, ProtocolMessage};
use tests::{basic_auth, history, http, json, send, texts, urlencode, TestBroker, KEY};

fn message_with(extras: serde_json::Value) -> Message {
    Message {
        name: Some("m".into()),
        data: Some(protocol::Data::String("d".into())),
        extras: Some(extras),
        ..Default::default()
    }
}

fn publish_of(channel: &str, msg_serial: u64, messages: Vec<Message>) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(messages),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// Item 1: ably-js `updateMessage()`/`deleteMessage()` send action 1/2 with the original
/// serial; they change that message, never store a second one (`tests/tests/chat.rs` has the
/// rest of mutable messages). An explicit create (action 0) is an ordinary publish, and the
/// actions only the server sends (meta 3, summary 4) are refused.
#[tokio::test]
async fn an_edit_is_never_stored_as_a_new_message() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("json").await;
    client.attach("edits").await;
    client.publish("edits", 0, "original").await;
    let original = client.expect(Action::Message).await;
    client.expect(Action::Ack).await;
    let serial = original.messages.unwrap()[0].serial.clone();
    let edit = Message {
        action: Some(1),
        serial: serial.clone(),
        data: Some(protocol::Data::String("edited".into())),
        ..Default::default()
    };
    client.send(&publish_of("edits", 1, vec![edit])).await;
    let update = client.expect(Action::Message).await;
    assert_eq!(
        update.messages.unwrap()[0].serial,
        serial,
        "the original's serial"
    );
    client.expect(Action::Ack).await;
    for (msg_serial, action) in [(2, 3), (3, 4)] {
        let server_only = Message {
            action: Some(action),
            data: Some(protocol::Data::String("forged".into())),
            ..Default::default()
        };
        client
            .send(&publish_of("edits", msg_serial, vec![server_only]))
            .await;
        let nack = client.expect(Action::Nack).await;
        assert_eq!(nack.error.unwrap().code, 40003);
    }
    let stored = history(&broker, "edits", "").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["data"], "edited");
    let create = Message {
        action: Some(0),
        data: Some(protocol::Data::String("created".into())),
        ..Default::default()
    };
    client.send(&publish_of("edits", 4, vec![create])).await;
    assert_eq!(texts(&client.expect(Action::Message).await), ["created"]);
    assert_eq!(client.expect(Action::Ack).await.msg_serial, Some(4));
}

/// Item 2: `extras.userClaim` is server-set (CHA-M2h): a client's own never reaches a
/// subscriber, history or a presence subscriber; `extras.headers` is the app's and stays.
/// A made-up `annotations` summary is dropped as well.
#[tokio::test]
async fn client_set_user_claims_are_stripped_and_headers_kept() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("msgpack").await;
    let (mut subscriber, _) = broker.connect_key("json").await;
    subscriber.attach("claims").await;
    publisher.attach("claims").await;
    let forged = serde_json::json!({"userClaim": "moderator", "headers": {"a": "b"}});
    publisher
        .send(&publish_of("claims", 0, vec![message_with(forged.clone())]))
        .await;
    let delivered = subscriber.expect(Action::Message).await.messages.unwrap();
    assert_eq!(
        delivered[0].extras,
        Some(serde_json::json!({"headers": {"a": "b"}}))
    );
    let only_claim = serde_json::json!({"userClaim": "admin"});
    send(
        http()
            .post(broker.url("/channels/claims/messages"))
            .header("authorization", basic_auth())
            // A summary is the server's too (§7.9): one the client makes up is dropped.
            .json(
                &serde_json::json!({"name": "rest", "data": "r", "extras": only_claim,
                "annotations": {"summary": {"like:total.v1": {"total": 999}}}}),
            ),
    )
    .await;
    let delivered = subscriber.expect(Action::Message).await.messages.unwrap();
    assert_eq!(delivered[0].extras, None);
    assert_eq!(delivered[0].annotations, None, "a forged summary");
    for stored in history(&broker, "claims", "").await {
        assert!(stored["extras"].get("userClaim").is_none(), "{stored}");
        assert!(
            stored["annotations"]["summary"]
                .get("like:total.v1")
                .is_none(),
            "{stored}"
        );
    }
    let enter = PresenceMessage {
        action: PresenceAction::Enter,
        client_id: Some("eve".into()),
        extras: Some(forged),
        ..Default::default()
    };
    publisher
        .send(&ProtocolMessage {
            msg_serial: Some(1),
            presence: Some(vec![enter]),
            ..ProtocolMessage::for_channel(Action::Presence, "claims")
        })
        .await;
    let mut event = subscriber.expect(Action::Presence).await;
    let member = event.presence.take().unwrap().remove(0);
    assert_eq!(member.client_id.as_deref(), Some("eve"));
    assert_eq!(
        member.extras,
        Some(serde_json::json!({"headers": {"a": "b"}}))
    );
}

/// Item 7: ably-js passes `params: { rewind: 1 }` through as a number (and flags as
/// booleans); both wire formats take them as their text instead of failing the channel.
#[tokio::test]
async fn numeric_and_boolean_channel_params_are_taken_as_text() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = broker.connect_key("json").await;
    for i in 0..3 {
        publisher.publish("numbers", i, &format!("m{i}")).await;
        publisher.expect(Action::Ack).await;
    }
    for format in ["json", "msgpack"] {
        let (mut client, _) = broker.connect_key(format).await;
        let attach = serde_json::json!({
            "action": 10, "channel": "numbers", "params": {"rewind": 1, "echo": true}
        });
        let frame = match format {
            "json" => tokio_tungstenite::tungstenite::Message::Text(attach.to_string().into()),
            _ => tokio_tungstenite::tungstenite::Message::Binary(
                rmp_serde::to_vec_named(&attach).unwrap().into(),
            ),
        };
        client.send_raw(frame).await;
        let attached = client.expect(Action::Attached).await;
        let params = attached.params.unwrap();
        assert_eq!(params["rewind"], "1", "{format}");
        assert_eq!(params["echo"], "true", "{format}");
        assert_eq!(texts(&client.expect(Action::Message).await), ["m2"]);
    }
}

/// Item 8: every resume or recover gives the connection a new connectionKey, so an original
/// still holding the old key cannot take the connection back: its resume fails (80008) with
/// a new connectionId, and the two settle as two connections. A key without `!` is 80018.
#[tokio::test]
async fn a_recover_beside_a_live_original_settles_as_two_connections() {
    let broker = TestBroker::start().await;
    let (_original, connected) = broker.connect_key("json").await;
    let id = connected.connection_id.clone().unwrap();
    let old_key = connected.connection_details.unwrap().connection_key;
    let mut recovered = broker
        .connect(&format!(
            "key={}&format=json&recover={}",
            urlencode(KEY),
            urlencode(&old_key)
        ))
        .await;
    let connected = recovered.expect(Action::Connected).await;
    assert_eq!(connected.connection_id.as_deref(), Some(id.as_str()));
    assert!(connected.error.is_none(), "{:?}", connected.error);
    let new_key = connected.connection_details.unwrap().connection_key;
    assert_ne!(new_key, old_key, "a recover hands out a new connectionKey");
    // The original comes back with the key it had: refused, on a connection of its own.
    let mut original = broker
        .connect(&format!(
            "key={}&format=json&resume={}",
            urlencode(KEY),
            urlencode(&old_key)
        ))
        .await;
    let again = original.expect(Action::Connected).await;
    assert_eq!(again.error.unwrap().code, 80008);
    assert_ne!(again.connection_id.as_deref(), Some(id.as_str()));
    // The recovered connection was not taken away: it still publishes and receives.
    recovered.attach("settled").await;
    recovered.publish("settled", 0, "still mine").await;
    assert_eq!(
        texts(&recovered.expect(Action::Message).await),
        ["still mine"]
    );
    let mut malformed = broker
        .connect(&format!(
            "key={}&format=json&recover=nobang",
            urlencode(KEY)
        ))
        .await;
    let connected = malformed.expect(Action::Connected).await;
    assert_eq!(connected.error.unwrap().code, 80018);
}

/// Item 9 (§8.8): an attachment publishes and enters presence only in the modes it was
/// granted (40160 otherwise), and ATTACHED's params confirm the granted modes.
#[tokio::test]
async fn operations_outside_the_attached_modes_are_refused() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("json").await;
    client
        .send(&ProtocolMessage {
            flags: Some(flags::MODE_SUBSCRIBE),
            ..ProtocolMessage::for_channel(Action::Attach, "watch")
        })
        .await;
    let attached = client.expect(Action::Attached).await;
    assert_eq!(attached.params.unwrap()["modes"], "subscribe");
    client.publish("watch", 0, "no").await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40160);
    client
        .send(&ProtocolMessage {
            msg_serial: Some(1),
            presence: Some(vec![PresenceMessage {
                action: PresenceAction::Enter,
                client_id: Some("x".into()),
                ..Default::default()
            }]),
            ..ProtocolMessage::for_channel(Action::Presence, "watch")
        })
        .await;
    assert_eq!(client.expect(Action::Nack).await.error.unwrap().code, 40160);
    assert!(history(&broker, "watch", "").await.is_empty());
    // Without requested modes every permitted one but ANNOTATION_SUBSCRIBE (which must be
    // asked for) is granted and named.
    let attached = client.attach("talk").await;
    assert_eq!(
        attached.params.unwrap()["modes"],
        "presence,publish,subscribe,presence_subscribe,annotation_publish"
    );
    client.publish("talk", 2, "yes").await;
    assert_eq!(texts(&client.expect(Action::Message).await), ["yes"]);
}

/// Item 10: a name whose namespace (before the first `:`) is empty is refused with 40010.
#[tokio::test]
async fn channel_names_with_an_empty_namespace_are_refused() {
    let broker = TestBroker::start().await;
    let (mut client, _) = broker.connect_key("json").await;
    for name in [":hell", "::"] {
        client
            .send(&ProtocolMessage::for_channel(Action::Attach, name))
            .await;
        let error = client.expect(Action::Error).await;
        assert_eq!(error.channel.as_deref(), Some(name));
        assert_eq!(error.error.unwrap().code, 40010);
    }
    // `room::$chat` (an @ably/chat room) has a namespace and stays valid.
    client.attach("room::$chat").await;
}

/// Item 13 (RTP19): a client SYNC gets the presence set afresh.
#[tokio::test]
async fn a_client_sync_gets_a_fresh_presence_sync() {
    let broker = TestBroker::start().await;
    let (mut member, _) = broker.connect_key("json").await;
    member.attach("room").await;
    member
        .send(&ProtocolMessage {
            msg_serial: Some(0),
            presence: Some(vec![PresenceMessage {
                action: PresenceAction::Enter,
                client_id: Some("ann".into()),
                ..Default::default()
            }]),
            ..ProtocolMessage::for_channel(Action::Presence, "room")
        })
        .await;
    member.expect(Action::Presence).await;
    member.expect(Action::Ack).await;
    member
        .send(&ProtocolMessage::for_channel(Action::Sync, "room"))
        .await;
    let sync = member.expect(Action::Sync).await;
    let members = sync.presence.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].client_id.as_deref(), Some("ann"));
    assert_eq!(
        members[0].action,
        PresenceAction::Present,
        "members are sent as present"
    );
    // A burst of SYNCs is not a way to keep the channel busy: the next ones, right after,
    // are ignored, and the publish behind them is the next frame.
    for _ in 0..3 {
        member
            .send(&ProtocolMessage::for_channel(Action::Sync, "room"))
            .await;
    }
    member.publish("room", 1, "after the burst").await;
    assert_eq!(
        texts(&member.expect(Action::Message).await),
        ["after the burst"]
    );
}

/// Item 14: a REST publish whose messages carry a realtime connection's `connectionKey` is
/// attributed to that connection, and that connection's `echo=false` applies to it.
#[tokio::test]
async fn a_rest_publish_with_a_connection_key_is_that_connections() {
    let broker = TestBroker::start().await;
    let mut quiet = broker
        .connect(&format!("key={}&format=json&echo=false", urlencode(KEY)))
        .await;
    let connected = quiet.expect(Action::Connected).await;
    let (id, key) = (
        connected.connection_id.unwrap(),
        connected.connection_details.unwrap().connection_key,
    );
    quiet.attach("behalf").await;
    let (mut other, _) = broker.connect_key("json").await;
    other.attach("behalf").await;
    let post = |body: serde_json::Value| {
        http()
            .post(broker.url("/channels/behalf/messages"))
            .header("authorization", basic_auth())
            .json(&body)
    };
    let accepted = json(post(
        serde_json::json!({"name": "n", "data": "on behalf", "connectionKey": key}),
    ))
    .await;
    assert_eq!(accepted["serials"].as_array().unwrap().len(), 1);
    let delivered = other.expect(Action::Message).await.messages.unwrap();
    assert_eq!(delivered[0].connection_id.as_deref(), Some(id.as_str()));
    // `quiet` said echo=false: its own message does not come back; the next one does.
    send(post(serde_json::json!({"name": "n", "data": "plain"}))).await;
    assert_eq!(texts(&quiet.expect(Action::Message).await), ["plain"]);
    let refused = send(post(
        serde_json::json!({"data": "x", "connectionKey": format!("{id}!wrong")}),
    ))
    .await;
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], 40006);
}
