//! The before-publish moderation hook (`[moderation]`, `docs/configuration.md`): a real HTTP
//! server written here plays the operator's endpoint. It sees realtime, REST and chat
//! publishes as they will be stored; a rejection NACKs (realtime) or answers 422 (REST, chat)
//! with the endpoint's code and `detail` and stores nothing; an endpoint that does not answer
//! fails open or closed as configured; ephemeral messages and unfiltered channels skip it; and
//! a connection's publishes are stored in msgSerial order however long each review takes, a
//! resume and resend included.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use broker::config::{Config, ModerationSettings, OnFailure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::{Action, Data, Message, ProtocolMessage};
use serde_json::{json, Value};
use tests::{basic_auth, history, http, send, texts, urlencode, TestBroker, SAFETY};
use tokio::sync::{mpsc, watch};

/// The secret the broker presents to the endpoint.
const SECRET: &str = "hook-secret";

/// `X-Ably-ClientId` as ably-js sends it: base64.
fn client_id(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id)
}

/// What the endpoint answers a review with: an HTTP status and a JSON body.
type Answer = Pin<Box<dyn Future<Output = (u16, Value)> + Send>>;

/// The operator's moderation endpoint: answers each review with `answer`, and reports every
/// review it receives (its `Authorization` header as `authorization`, its body as `body`).
struct Endpoint {
    url: String,
    reviews: mpsc::UnboundedReceiver<Value>,
}

impl Endpoint {
    async fn start(answer: impl Fn(Value) -> Answer + Send + Sync + 'static) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/review", listener.local_addr().expect("addr"));
        let (seen, reviews) = mpsc::unbounded_channel();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), seen.clone());
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (answer, seen) = (answer.clone(), seen.clone());
                    async move {
                        let authorization = request
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().expect("ASCII").to_owned());
                        let body = request.into_body().collect().await.expect("a body");
                        let body: Value =
                            serde_json::from_slice(&body.to_bytes()).expect("a JSON review");
                        let _ = seen.send(json!({"authorization": authorization, "body": body}));
                        let (status, verdict) = answer(body).await;
                        let mut response = Response::new(Full::new(Bytes::from(
                            serde_json::to_vec(&verdict).expect("JSON"),
                        )));
                        *response.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Endpoint { url, reviews }
    }

    /// The next review received.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(SAFETY, self.reviews.recv())
            .await
            .expect("a review arrives in time")
            .expect("the endpoint runs")
    }
}

/// Accepts everything.
fn accept(_: Value) -> Answer {
    Box::pin(async { (200, json!({"action": "accept"})) })
}

/// Rejects a message whose data is "bad" with 42211 and a detail, accepts the rest.
fn reject_bad(review: Value) -> Answer {
    Box::pin(async move {
        if review["messages"][0]["data"] == "bad" {
            let verdict = json!({
                "action": "reject",
                "code": 42211,
                "message": "not in this room",
                "detail": {"reason": "profanity", "score": 0.97},
            });
            (200, verdict)
        } else {
            (200, json!({"action": "accept"}))
        }
    })
}

/// A broker whose moderation hook calls `url`, on channels `mod:*` and chat rooms, failing as
/// `on_failure` says after `timeout_ms`.
async fn broker_with(url: &str, on_failure: OnFailure, timeout_ms: u64) -> TestBroker {
    let settings = ModerationSettings {
        url: Some(url.to_owned()),
        timeout_ms,
        on_failure,
        channels: vec!["mod:*".to_owned(), "*::$chat".to_owned()],
        secret: Some(SECRET.to_owned()),
    };
    TestBroker::start_with(|config: &mut Config| config.moderation = settings).await
}

/// A MESSAGE of one message named `name` with string `data` and `extras`.
fn message(channel: &str, msg_serial: u64, data: &str, extras: Option<Value>) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(vec![Message {
            name: Some("greeting".into()),
            data: Some(Data::String(data.into())),
            extras,
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// The string data of each message in `channel`'s history, oldest first.
async fn stored(broker: &TestBroker, channel: &str) -> Vec<String> {
    let page = history(broker, &urlencode(channel), "direction=forwards").await;
    page.iter()
        .map(|m| m["data"].as_str().expect("string data").to_owned())
        .collect()
}

/// The value of counter `broker_moderation_reviews_total{outcome}` on `/metrics`.
async fn reviews_counted(broker: &TestBroker, outcome: &str) -> u64 {
    let text = send(http().get(broker.url("/metrics")))
        .await
        .text()
        .await
        .expect("metrics text");
    let prefix = format!("broker_moderation_reviews_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn an_accepted_publish_is_reviewed_as_stored_then_delivered_and_kept() {
    let mut endpoint = Endpoint::start(accept).await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 2_000).await;
    let (mut subscriber, _) = broker.connect_key("json").await;
    subscriber.attach("mod:lobby").await;
    let (mut publisher, connected) = broker.connect_key("msgpack").await;
    let connection_id = connected.connection_id.expect("a connectionId");

    publisher
        .send(&message("mod:lobby", 0, "hello", None))
        .await;
    let review = endpoint.next().await;
    assert_eq!(review["authorization"], format!("Bearer {SECRET}"));
    let body = &review["body"];
    assert_eq!(body["source"], "realtime");
    assert_eq!(body["channel"], "mod:lobby");
    assert_eq!(body["connectionId"], connection_id.as_str());
    let reviewed = &body["messages"][0];
    assert_eq!(reviewed["name"], "greeting");
    assert_eq!(reviewed["data"], "hello");
    assert_eq!(reviewed["connectionId"], connection_id.as_str());
    assert_eq!(reviewed["id"], format!("{connection_id}:0:0"));
    publisher.expect_acks(1).await;
    let delivered = subscriber.expect(Action::Message).await;
    assert_eq!(texts(&delivered), ["hello"]);
    assert_eq!(stored(&broker, "mod:lobby").await, ["hello"]);

    // Ephemeral messages (typing, room reactions) and channels outside the filter are not
    // reviewed: the next review the endpoint gets is the publish after them.
    let typing = Some(json!({"ephemeral": true}));
    publisher
        .send(&message("mod:lobby", 1, "typing", typing))
        .await;
    publisher
        .send(&message("news:today", 2, "unfiltered", None))
        .await;
    publisher
        .send(&message("mod:lobby", 3, "again", None))
        .await;
    publisher.expect_acks(3).await;
    assert_eq!(
        endpoint.next().await["body"]["messages"][0]["data"],
        "again"
    );
    assert_eq!(stored(&broker, "news:today").await, ["unfiltered"]);
    assert_eq!(reviews_counted(&broker, "accepted").await, 2);
}

#[tokio::test]
async fn a_rejected_realtime_publish_is_nacked_with_the_code_and_detail_and_not_stored() {
    let endpoint = Endpoint::start(reject_bad).await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 2_000).await;
    for format in ["json", "msgpack"] {
        let channel = format!("mod:{format}");
        let (mut publisher, _) = broker.connect_key(format).await;
        publisher.send(&message(&channel, 0, "bad", None)).await;
        let nack = publisher.expect(Action::Nack).await;
        assert_eq!(nack.msg_serial, Some(0));
        let error = nack.error.expect("the NACK's error");
        assert_eq!((error.code, error.status_code), (42211, 422));
        assert_eq!(error.message, "not in this room");
        let detail = error.detail.expect("the endpoint's detail");
        assert_eq!(detail["reason"], "profanity");
        assert_eq!(detail["score"], "0.97");
        // The connection goes on: the next publish is reviewed, accepted and stored alone.
        publisher.send(&message(&channel, 1, "good", None)).await;
        publisher.expect_acks(1).await;
        assert_eq!(stored(&broker, &channel).await, ["good"]);
    }
    assert_eq!(reviews_counted(&broker, "rejected").await, 2);
}

#[tokio::test]
async fn a_rejected_rest_publish_is_answered_422_with_the_detail() {
    let mut endpoint = Endpoint::start(reject_bad).await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 2_000).await;
    let response = send(
        http()
            .post(broker.url("/channels/mod:rest/messages"))
            .header("authorization", basic_auth())
            .header("x-ably-clientid", client_id("carol"))
            .json(&json!({"name": "greeting", "data": "bad"})),
    )
    .await;
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(response.headers()["x-ably-errorcode"], "42211");
    let answer: Value = response.json().await.expect("a JSON error");
    assert_eq!(answer["error"]["code"], 42211);
    assert_eq!(answer["error"]["detail"]["reason"], "profanity");
    let review = endpoint.next().await["body"].clone();
    assert_eq!(review["source"], "rest");
    assert_eq!(review["clientId"], "carol");
    assert_eq!(review["messages"][0]["clientId"], "carol");
    assert!(stored(&broker, "mod:rest").await.is_empty());
}

/// A chat REST call as `alice` (the key with `X-Ably-ClientId`): status and JSON answer.
async fn chat(
    broker: &TestBroker,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = send(
        http()
            .request(method, broker.url(&format!("/chat/v4/rooms/lobby{path}")))
            .header("authorization", basic_auth())
            .header("x-ably-clientid", client_id("alice"))
            .header("x-ably-version", "4")
            .json(&body),
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[tokio::test]
async fn a_chat_send_or_edit_the_endpoint_rejects_is_answered_422_with_the_detail() {
    let mut endpoint = Endpoint::start(|review: Value| -> Answer {
        Box::pin(async move {
            // A chat message's data is stored as JSON text with `encoding: "json"`.
            let message = &review["messages"][0];
            assert_eq!(message["encoding"], "json");
            let data = message["data"].as_str().expect("JSON text");
            let data: Value = serde_json::from_str(data).expect("JSON");
            if data["text"] == "bad" {
                let detail = json!({"reason": "profanity"});
                (200, json!({"action": "reject", "detail": detail}))
            } else {
                (200, json!({"action": "accept"}))
            }
        })
    })
    .await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 2_000).await;
    let (status, error) = chat(
        &broker,
        reqwest::Method::POST,
        "/messages",
        json!({"text": "bad"}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(error["error"]["code"], 42213, "the default code");
    assert_eq!(error["error"]["statusCode"], 422);
    assert_eq!(error["error"]["detail"]["reason"], "profanity");
    let review = endpoint.next().await["body"].clone();
    assert_eq!(
        (review["source"].clone(), review["channel"].clone()),
        (json!("chat"), json!("lobby::$chat"))
    );
    assert_eq!(review["messages"][0]["name"], "chat.message");
    assert_eq!(review["clientId"], "alice");

    let (status, sent) = chat(
        &broker,
        reqwest::Method::POST,
        "/messages",
        json!({"text": "fine"}),
    )
    .await;
    assert_eq!(status, 201);
    endpoint.next().await;
    let serial = sent["serial"].as_str().expect("a serial");
    let path = format!("/messages/{}", urlencode(serial));
    let edit = json!({"message": {"text": "bad"}});
    let (status, error) = chat(&broker, reqwest::Method::PUT, &path, edit).await;
    assert_eq!(
        (status, error["error"]["code"].clone()),
        (422, json!(42213))
    );
    let review = endpoint.next().await["body"].clone();
    assert_eq!(review["messages"][0]["action"], Message::UPDATE);
    assert_eq!(review["messages"][0]["serial"], serial);
    // The message stays as sent; a delete is not reviewed and goes through.
    let (_, got) = chat(&broker, reqwest::Method::GET, &path, Value::Null).await;
    assert_eq!(got["text"], "fine");
    let (status, _) = chat(
        &broker,
        reqwest::Method::POST,
        &format!("{path}/delete"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
}

/// An endpoint that never answers.
fn never(_: Value) -> Answer {
    Box::pin(std::future::pending())
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_fails_open_when_configured_so() {
    let endpoint = Endpoint::start(never).await;
    let broker = broker_with(&endpoint.url, OnFailure::Accept, 100).await;
    let (mut publisher, _) = broker.connect_key("json").await;
    publisher
        .send(&message("mod:open", 0, "unreviewed", None))
        .await;
    publisher.expect_acks(1).await;
    assert_eq!(stored(&broker, "mod:open").await, ["unreviewed"]);
    assert_eq!(reviews_counted(&broker, "failed").await, 1);
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_or_fails_is_closed_by_default() {
    let endpoint = Endpoint::start(never).await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 100).await;
    let (mut publisher, _) = broker.connect_key("json").await;
    publisher
        .send(&message("mod:closed", 0, "unreviewed", None))
        .await;
    let error = publisher
        .expect(Action::Nack)
        .await
        .error
        .expect("an error");
    assert_eq!((error.code, error.status_code), (50003, 504));
    assert_eq!(
        error.detail.expect("detail")["moderationFailure"],
        "timeout"
    );
    assert!(stored(&broker, "mod:closed").await.is_empty());

    let failing = Endpoint::start(|_| -> Answer { Box::pin(async { (503, json!({})) }) }).await;
    let second = broker_with(&failing.url, OnFailure::Reject, 2_000).await;
    let (mut publisher, _) = second.connect_key("json").await;
    publisher
        .send(&message("mod:closed", 0, "unreviewed", None))
        .await;
    let error = publisher
        .expect(Action::Nack)
        .await
        .error
        .expect("an error");
    assert_eq!(error.code, 50000);
    assert_eq!(
        error.detail.expect("detail")["moderationFailure"],
        "status 503"
    );
}

#[tokio::test]
async fn a_later_publish_does_not_overtake_an_earlier_one_under_a_slower_review() {
    // The review of "slow" waits until the test lets it go; "fast" is accepted at once.
    let (release, released) = watch::channel(false);
    let mut endpoint = Endpoint::start(move |review: Value| -> Answer {
        let mut released = released.clone();
        Box::pin(async move {
            if review["messages"][0]["data"] == "slow" {
                let _ = released.wait_for(|go| *go).await;
            }
            (200, json!({"action": "accept"}))
        })
    })
    .await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 60_000).await;
    let (mut subscriber, _) = broker.connect_key("json").await;
    subscriber.attach("mod:order").await;
    let (mut publisher, _) = broker.connect_key("json").await;
    publisher.send(&message("mod:order", 0, "slow", None)).await;
    publisher.send(&message("mod:order", 1, "fast", None)).await;
    // Both are under review at once, and "fast" has its verdict while "slow" waits.
    let mut seen = [endpoint.next().await, endpoint.next().await].map(|r| {
        r["body"]["messages"][0]["data"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    seen.sort();
    assert_eq!(seen, ["fast", "slow"]);
    release.send(true).expect("the endpoint waits");
    publisher.expect_acks(2).await;
    let first = subscriber.expect(Action::Message).await;
    let second = subscriber.expect(Action::Message).await;
    assert_eq!([texts(&first), texts(&second)], [["slow"], ["fast"]]);
    assert_eq!(stored(&broker, "mod:order").await, ["slow", "fast"]);
}

#[tokio::test]
async fn a_publish_resent_on_resume_while_under_review_is_reviewed_and_stored_once() {
    let (release, released) = watch::channel(false);
    let mut endpoint = Endpoint::start(move |review: Value| -> Answer {
        let mut released = released.clone();
        Box::pin(async move {
            if review["messages"][0]["data"] == "held" {
                let _ = released.wait_for(|go| *go).await;
            }
            (200, json!({"action": "accept"}))
        })
    })
    .await;
    let broker = broker_with(&endpoint.url, OnFailure::Reject, 60_000).await;
    let (mut publisher, connected) = broker.connect_key("json").await;
    let key = connected.connection_key.expect("a connectionKey");
    publisher
        .send(&message("mod:resent", 0, "held", None))
        .await;
    assert_eq!(endpoint.next().await["body"]["messages"][0]["data"], "held");
    publisher.drop_abruptly();

    let query = format!(
        "key={}&format=json&resume={}",
        urlencode(tests::KEY),
        urlencode(&key)
    );
    let mut resumed = broker.connect(&query).await;
    let again = resumed.expect(Action::Connected).await;
    assert_eq!(
        again.connection_id, connected.connection_id,
        "the same connection"
    );
    resumed.send(&message("mod:resent", 0, "held", None)).await;
    resumed.send(&message("mod:resent", 1, "after", None)).await;
    // The resend waits for the review under way instead of asking again; the next publish is
    // reviewed and waits for its turn.
    assert_eq!(
        endpoint.next().await["body"]["messages"][0]["data"],
        "after"
    );
    release.send(true).expect("the endpoint waits");
    resumed.expect_acks(2).await;
    assert_eq!(stored(&broker, "mod:resent").await, ["held", "after"]);
}
