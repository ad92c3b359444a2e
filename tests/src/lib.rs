//! Helpers shared by the integration tests: start a real broker on 127.0.0.1:0 with a
//! temporary data directory, and talk to it over real WebSocket and HTTP the way ably-js does
//! (§4.1 of `../shared/ably-protocol.md`). [`issuer`] is a local OIDC issuer for the Auth0 tests;
//! [`nats`] runs real nats-server processes for the cluster tests. Every wait has a generous
//! safety timeout so a broken broker fails a test instead of hanging it; none asserts on timing.

pub mod issuer;
pub mod nats;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::config::{Config, KeyConfig};
use futures_util::{SinkExt, StreamExt};
use protocol::{Action, Format, ProtocolMessage};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The full-capability key every test broker has.
pub const KEY: &str = "test.full:fullsecret";
/// How long any single wait may take before the test fails.
pub const SAFETY: Duration = Duration::from_secs(20);

/// A broker running in this process.
pub struct TestBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    data: Option<tempfile::TempDir>,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// Starts a broker with the default test configuration.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// Starts a broker after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().to_owned();
        let mut broker = TestBroker::start_in(&dir, adjust).await;
        broker.data = Some(data);
        broker
    }

    /// Starts a broker on an existing data directory (for restarts).
    pub async fn start_in(dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config {
            data_dir: dir.to_owned(),
            keys: vec![KeyConfig::parse(KEY).expect("test key")],
            ..Config::default()
        };
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            broker::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("broker runs");
        });
        TestBroker {
            addr,
            data: None,
            dir: dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shuts the broker down gracefully and waits for it; keeps the data directory.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(SAFETY, task)
                .await
                .expect("broker stops in time")
                .expect("broker task ends cleanly");
        }
        self.data.take()
    }

    /// The base URL for REST.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Opens a realtime connection with `query` (e.g. `key=…&format=json`).
    pub async fn connect(&self, query: &str) -> Client {
        let url = format!("ws://{}/?v=6&{query}", self.addr);
        let (ws, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connects in time")
            .expect("websocket connects");
        let format = if query.contains("format=msgpack") {
            Format::Msgpack
        } else {
            Format::Json
        };
        Client { ws, format }
    }

    /// Connects with the test key in `format` and returns the client and its CONNECTED.
    pub async fn connect_key(&self, format: &str) -> (Client, ProtocolMessage) {
        let mut client = self
            .connect(&format!("key={}&format={format}", urlencode(KEY)))
            .await;
        let connected = client.expect(Action::Connected).await;
        (client, connected)
    }
}

/// URL-encodes a query value.
pub fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A raw realtime client speaking ProtocolMessages.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    format: Format,
}

impl Client {
    /// Sends one ProtocolMessage in this client's format.
    pub async fn send(&mut self, message: &ProtocolMessage) {
        let bytes = protocol::encode(self.format, message);
        let frame = match self.format {
            Format::Json => {
                WsMessage::Text(String::from_utf8(bytes.to_vec()).expect("utf8").into())
            }
            Format::Msgpack => WsMessage::Binary(bytes),
        };
        self.ws.send(frame).await.expect("send frame");
    }

    /// Sends a raw frame (for malformed-input tests).
    pub async fn send_raw(&mut self, frame: WsMessage) {
        self.ws.send(frame).await.expect("send raw frame");
    }

    /// The next ProtocolMessage, skipping HEARTBEATs without an id; `None` when the socket
    /// closed.
    pub async fn next(&mut self) -> Option<ProtocolMessage> {
        // One deadline for the whole wait: keep-alive heartbeats must not extend it.
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            let message = self.next_any_before(deadline).await?;
            if message.action == Action::Heartbeat && message.id.is_none() {
                continue;
            }
            return Some(message);
        }
    }

    /// The next ProtocolMessage of any kind, keep-alive HEARTBEATs included.
    pub async fn next_any(&mut self) -> Option<ProtocolMessage> {
        self.next_any_before(tokio::time::Instant::now() + SAFETY)
            .await
    }

    async fn next_any_before(&mut self, deadline: tokio::time::Instant) -> Option<ProtocolMessage> {
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame arrives in time")?;
            return Some(match frame.ok()? {
                WsMessage::Text(t) => {
                    protocol::decode(Format::Json, t.as_bytes()).expect("server JSON decodes")
                }
                WsMessage::Binary(b) => {
                    protocol::decode(Format::Msgpack, &b).expect("server msgpack decodes")
                }
                WsMessage::Close(_) => return None,
                _ => continue,
            });
        }
    }

    /// The next ProtocolMessage, which must have `action`.
    pub async fn expect(&mut self, action: Action) -> ProtocolMessage {
        let message = self.next().await.expect("connection still open");
        assert_eq!(message.action, action, "unexpected message: {message:?}");
        message
    }

    /// Waits until `n` msgSerials have been acknowledged, counting each ACK's `count` (the
    /// broker coalesces consecutive ACKs, §7.3); any other frame in between is skipped.
    pub async fn expect_acks(&mut self, n: u64) {
        let mut acked = 0;
        while acked < n {
            acked += acked_by(&self.next().await.expect("connection still open"));
        }
    }

    /// Attaches `channel` and returns ATTACHED.
    pub async fn attach(&mut self, channel: &str) -> ProtocolMessage {
        self.send(&ProtocolMessage::for_channel(Action::Attach, channel))
            .await;
        self.expect(Action::Attached).await
    }

    /// Publishes one string message with `msg_serial` (without waiting for the ACK).
    pub async fn publish(&mut self, channel: &str, msg_serial: u64, data: &str) {
        self.send(&publish_message(channel, msg_serial, data)).await;
    }

    /// Closes the TCP connection without a CLOSE (an abrupt drop).
    pub fn drop_abruptly(self) {
        drop(self);
    }
}

/// How many msgSerials `message` acknowledges: an ACK's `count` (1 when absent), else 0.
pub fn acked_by(message: &ProtocolMessage) -> u64 {
    if message.action == Action::Ack {
        message.count.unwrap_or(1)
    } else {
        0
    }
}

/// A MESSAGE ProtocolMessage with one string message.
pub fn publish_message(channel: &str, msg_serial: u64, data: &str) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        messages: Some(vec![protocol::Message {
            name: Some("test".into()),
            data: Some(protocol::Data::String(data.into())),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Message, channel)
    }
}

/// A PRESENCE ProtocolMessage with one item of `action` and string `data`, for `client_id`
/// (or the connection's own clientId with `None`).
pub fn presence_message(
    channel: &str,
    msg_serial: u64,
    action: protocol::PresenceAction,
    client_id: Option<&str>,
    data: &str,
) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(msg_serial),
        presence: Some(vec![protocol::PresenceMessage {
            action,
            client_id: client_id.map(str::to_owned),
            data: Some(protocol::Data::String(data.into())),
            ..Default::default()
        }]),
        ..ProtocolMessage::for_channel(Action::Presence, channel)
    }
}

/// The string data of every message in a MESSAGE.
pub fn texts(message: &ProtocolMessage) -> Vec<String> {
    message
        .messages
        .iter()
        .flatten()
        .map(|m| match &m.data {
            Some(protocol::Data::String(s)) => s.clone(),
            other => panic!("expected string data, got {other:?}"),
        })
        .collect()
}

/// An HTTP client for REST calls.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends `request`, failing the test when it cannot be sent.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("request is sent")
}

/// Sends `request` and reads its JSON body.
pub async fn json(request: reqwest::RequestBuilder) -> serde_json::Value {
    send(request).await.json().await.expect("a JSON body")
}

/// `GET /channels/{channel}/messages?{query}` with [`KEY`], as JSON.
pub async fn history(broker: &TestBroker, channel: &str, query: &str) -> Vec<serde_json::Value> {
    http()
        .get(broker.url(&format!("/channels/{channel}/messages?{query}")))
        .header("authorization", basic_auth())
        .send()
        .await
        .expect("history request")
        .json()
        .await
        .expect("history is a JSON array")
}

/// The Basic authorization header value for [`KEY`].
pub fn basic_auth() -> String {
    basic_auth_for(KEY)
}

/// The Basic authorization header value for `key` (`name:secret`, §8.1).
pub fn basic_auth_for(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Mints an Ably JWT (HS256, `kid` = key name) as an app's auth server would (§8.2).
pub fn ably_jwt(key: &str, claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::Mac;
    let (name, secret) = key.split_once(':').expect("name:secret");
    let header = serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": name});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Waits until the broker's clock (`GET /time`) is past `ms` (since the epoch), so that what
/// happens next falls in a later millisecond: token revocation compares issue times to the ms.
pub async fn clock_passes(broker: &TestBroker, ms: i64) {
    loop {
        let time = json(http().get(broker.url("/time"))).await;
        if time[0].as_i64().expect("time is a number") > ms {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// The issue time (ms since the epoch) of a token the broker made: its `iat`, which the broker
/// writes to the millisecond.
pub fn token_issued_at(token: &str) -> i64 {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let claims = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url")).expect("JSON");
    (claims["iat"].as_f64().expect("iat") * 1000.0).round() as i64
}
