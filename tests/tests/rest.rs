//! REST (§9): time, publish with 201 and serials, idempotent ids, history with Link pagination
//! in both directions, token requests, error bodies and headers, CORS, envelopes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::Mac;
use protocol::{Action, Format};
use tests::{basic_auth, history, http, json, send, texts, TestBroker};

async fn publish(broker: &TestBroker, channel: &str, body: serde_json::Value) -> reqwest::Response {
    send(
        http()
            .post(broker.url(&format!("/channels/{channel}/messages")))
            .header("authorization", basic_auth())
            .json(&body),
    )
    .await
}

fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().ok()?.to_owned();
    let start = link.find("<./messages?")? + "<./messages?".len();
    let end = link.find(">;")?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[start..end].to_owned())
}

#[tokio::test]
async fn time_is_a_one_element_array() {
    let broker = TestBroker::start().await;
    let body: Vec<i64> = send(http().get(broker.url("/time")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.len(), 1);
    assert!(body[0] > 1_700_000_000_000);
}

#[tokio::test]
async fn rest_publish_reaches_realtime_subscribers_and_history_pages_both_ways() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = broker.connect_key("json").await;
    sub.attach("news:today").await;
    for i in 0..25 {
        let response = publish(
            &broker,
            "news%3Atoday",
            serde_json::json!({"name": "n", "data": format!("r{i}")}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["serials"].as_array().unwrap().len(), 1);
        assert_eq!(texts(&sub.expect(Action::Message).await), [format!("r{i}")]);
    }
    for (direction, first) in [("backwards", 24), ("forwards", 0)] {
        let mut query = format!("limit=10&direction={direction}");
        let mut pages = Vec::new();
        loop {
            let response = send(
                http()
                    .get(broker.url(&format!("/channels/news%3Atoday/messages?{query}")))
                    .header("authorization", basic_auth()),
            )
            .await;
            assert_eq!(response.status(), 200);
            let link = next_link(&response);
            let items: Vec<serde_json::Value> = response.json().await.unwrap();
            pages.push(
                items
                    .iter()
                    .map(|m| m["data"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>(),
            );
            match link {
                Some(next) => query = next,
                None => break,
            }
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5],
            "{direction}"
        );
        assert_eq!(pages[0][0], format!("r{first}"));
        let all: Vec<String> = pages.concat();
        let mut expected: Vec<String> = (0..25).map(|i| format!("r{i}")).collect();
        if direction == "backwards" {
            expected.reverse();
        }
        assert_eq!(all, expected);
    }
}

#[tokio::test]
async fn idempotent_ids_publish_once() {
    let broker = TestBroker::start().await;
    let body = serde_json::json!([{"id": "abcDEF123:0", "data": "once"}]);
    let first: serde_json::Value = publish(&broker, "idem", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let second: serde_json::Value = publish(&broker, "idem", body).await.json().await.unwrap();
    assert_eq!(first["serials"], second["serials"]);
    let history = history(&broker, "idem", "").await;
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn msgpack_bodies_and_binary_data_round_trip() {
    let broker = TestBroker::start().await;
    let message = protocol::Message {
        data: Some(protocol::Data::Binary(bytes::Bytes::from_static(&[
            9, 8, 7,
        ]))),
        ..Default::default()
    };
    let body = protocol::codec::encode_value(Format::Msgpack, &vec![message]);
    let response = send(
        http()
            .post(broker.url("/channels/bin/messages"))
            .header("authorization", basic_auth())
            .header("content-type", "application/x-msgpack")
            .header("accept", "application/x-msgpack")
            .body(body),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["content-type"], "application/x-msgpack");
    let packed = send(
        http()
            .get(broker.url("/channels/bin/messages"))
            .header("authorization", basic_auth())
            .header("accept", "application/x-msgpack"),
    )
    .await
    .bytes()
    .await
    .unwrap();
    let items: Vec<protocol::Message> =
        protocol::codec::decode_value(Format::Msgpack, &packed).unwrap();
    assert_eq!(
        items[0].data,
        Some(protocol::Data::Binary(bytes::Bytes::from_static(&[
            9, 8, 7
        ])))
    );
    let json = history(&broker, "bin", "").await;
    assert_eq!(
        (json[0]["data"].as_str(), json[0]["encoding"].as_str()),
        (Some("CQgH"), Some("base64"))
    );
}

#[tokio::test]
async fn errors_have_ably_bodies_headers_and_exact_content_type() {
    let broker = TestBroker::start().await;
    let response = send(http().get(broker.url("/channels/x/messages"))).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-ably-errorcode"], "40100");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["statusCode"], 401);
    assert!(body["error"]["message"].is_string());

    let bad_limit = send(
        http()
            .get(broker.url("/channels/x/messages?limit=5000"))
            .header("authorization", basic_auth()),
    )
    .await;
    assert_eq!(bad_limit.status(), 400);
    assert_eq!(bad_limit.headers()["x-ably-errorcode"], "40003");

    let enveloped = json(http().get(broker.url("/channels/x/messages?envelope=json"))).await;
    assert_eq!(enveloped["statusCode"], 401);
    assert_eq!(enveloped["response"]["error"]["code"], 40100);

    let preflight = send(
        http()
            .request(reqwest::Method::OPTIONS, broker.url("/channels/x/messages"))
            .header("origin", "http://app.example")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );
}

#[tokio::test]
async fn signed_token_requests_issue_tokens_that_connect() {
    let broker = TestBroker::start().await;
    let (name, secret) = tests::KEY.split_once(':').unwrap();
    let now = tests::now_secs() * 1000;
    let nonce = "1234567890123456";
    let capability = r#"{"room":["subscribe"]}"#;
    let signed = format!("{name}\n60000\n{capability}\nzoe\n{now}\n{nonce}\n");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let request = serde_json::json!({"keyName": name, "ttl": 60000, "capability": capability,
        "clientId": "zoe", "timestamp": now, "nonce": nonce,
        "mac": STANDARD.encode(mac.finalize().into_bytes())});
    let response = send(
        http()
            .post(broker.url(&format!("/keys/{name}/requestToken")))
            .json(&request),
    )
    .await;
    assert_eq!(response.status(), 200);
    let details: serde_json::Value = response.json().await.unwrap();
    assert_eq!(details["clientId"], "zoe");
    let token = details["token"].as_str().unwrap();
    let mut client = broker
        .connect(&format!("access_token={token}&format=json"))
        .await;
    let connected = client.expect(Action::Connected).await;
    assert_eq!(
        connected.connection_details.unwrap().client_id.as_deref(),
        Some("zoe")
    );
    client
        .send(&protocol::ProtocolMessage::for_channel(
            Action::Attach,
            "elsewhere",
        ))
        .await;
    assert_eq!(
        client.expect(Action::Error).await.error.unwrap().code,
        40160
    );

    let replay = send(
        http()
            .post(broker.url(&format!("/keys/{name}/requestToken")))
            .json(&request),
    )
    .await;
    assert_eq!(replay.headers()["x-ably-errorcode"], "40105");
}
