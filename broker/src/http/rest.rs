//! REST endpoints (§9.2): time, health, metrics, token requests and revocations, and channel
//! publish and history with Link pagination exactly as ably-js parses it (§9.1). Channels are
//! reached only through the channel service (`channel/service.rs`), which checks names and
//! capabilities; this module authenticates, parses and shapes the answers.

use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use protocol::codec::decode_value;
use protocol::error::codes;
use protocol::{Capability, ErrorInfo, Format, Message};
use serde::{Deserialize, Serialize};

use super::annotations;
use super::response::{HttpResponse, Negotiated};
use crate::auth::{now_ms, ClientIdClaim, Credential, Grant, Identity, TokenRequest};
use crate::backend::presence::from_record;
use crate::broker::Broker;
use crate::channel::service::{Direction, HistoryLog, HistoryRequest, PresenceQuery, Publisher};
use crate::moderation::{self, Source};

/// Default and largest page of history (§9.2).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Routes a request whose body has been read.
pub async fn route(
    broker: &Broker,
    parts: &Parts,
    query: &[(String, String)],
    body: Bytes,
    negotiated: &Negotiated,
) -> HttpResponse {
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let (Some(root), &Method::GET) = (&broker.config.web_root, &parts.method) {
        let first = segments.first().copied().unwrap_or("");
        if !matches!(
            first,
            "api" | "channels" | "chat" | "keys" | "time" | "health" | "metrics"
        ) {
            if let Some(response) = super::web::serve(root, path).await {
                return response;
            }
        }
    }
    let result = match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["time"]) => Ok(negotiated.ok(StatusCode::OK, &[now_ms()], Vec::new())),
        (&Method::GET, ["health"]) => {
            let mut health = serde_json::json!({
                "status": "ok",
                "connections": broker.connection_count(),
                "channels": broker.channels.active(),
            });
            let mut status = StatusCode::OK;
            if let Some(cluster) = &broker.cluster {
                // A node that cannot reach NATS cannot publish or learn of others' messages:
                // a load balancer should send its clients elsewhere.
                let (ready, detail) = cluster.health();
                if !ready {
                    status = StatusCode::SERVICE_UNAVAILABLE;
                    health["status"] = "unavailable".into();
                }
                health["cluster"] = detail;
            }
            Ok(negotiated.text(status, "application/json", health.to_string()))
        }
        (&Method::GET, ["metrics"]) => {
            if let Some(health) = broker.log.checkpoint_health() {
                broker.metrics.observe_checkpoints(health);
            }
            Ok(negotiated.text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                broker.metrics.render(),
            ))
        }
        (&Method::GET, [""]) => Ok(negotiated.ok(
            StatusCode::OK,
            &serde_json::json!({"service": "broker", "protocol": 6}),
            Vec::new(),
        )),
        (_, ["api", ..]) => api(broker, parts, query, body, negotiated).await,
        (&Method::POST, ["keys", key_name, "requestToken"]) => {
            request_token(broker, parts, key_name, &body, negotiated).await
        }
        (&Method::POST, ["keys", key_name, "revokeTokens"]) => {
            revoke_tokens(broker, parts, key_name, &body, negotiated).await
        }
        (_, ["chat", "v4", "rooms", room, rest @ ..]) => {
            super::chat::route(broker, parts, room, rest, query, &body, negotiated).await
        }
        (method, ["channels", name, rest @ ..]) => {
            match percent_encoding::percent_decode_str(name).decode_utf8() {
                Err(_) => Err(ErrorInfo::new(
                    codes::INVALID_CHANNEL_NAME,
                    "channel name is not UTF-8",
                )),
                Ok(channel) => match (method, rest) {
                    (&Method::GET, []) => status(broker, parts, &channel, negotiated).await,
                    (&Method::POST, ["messages"]) => {
                        publish(broker, parts, &channel, &body, negotiated).await
                    }
                    (&Method::PATCH, ["messages", serial]) => {
                        update_message(broker, parts, &channel, serial, &body, negotiated).await
                    }
                    (&Method::GET, ["messages", serial]) => {
                        get_message(broker, parts, &channel, serial, negotiated, None).await
                    }
                    (&Method::POST, ["messages", serial, "annotations"]) => {
                        let body = &body;
                        annotations::publish(broker, parts, &channel, serial, body, negotiated)
                            .await
                    }
                    (&Method::GET, ["messages", serial, "annotations"]) => {
                        annotations::list(broker, parts, &channel, serial, query, negotiated).await
                    }
                    (&Method::GET, ["messages", serial, "versions"]) => {
                        let versions = Some(query);
                        get_message(broker, parts, &channel, serial, negotiated, versions).await
                    }
                    (&Method::GET, ["messages"]) => {
                        history(
                            broker,
                            parts,
                            &channel,
                            query,
                            negotiated,
                            HistoryLog::Messages,
                        )
                        .await
                    }
                    (&Method::GET, ["presence"]) => {
                        presence(broker, parts, &channel, query, negotiated).await
                    }
                    (&Method::GET, ["presence", "history"]) => {
                        history(
                            broker,
                            parts,
                            &channel,
                            query,
                            negotiated,
                            HistoryLog::Presence,
                        )
                        .await
                    }
                    _ => Err(ErrorInfo::new(
                        codes::NOT_FOUND,
                        format!("no route for {} {path}", parts.method),
                    )),
                },
            }
        }
        _ => Err(ErrorInfo::new(
            codes::NOT_FOUND,
            format!("no route for {} {path}", parts.method),
        )),
    };
    result.unwrap_or_else(|e| negotiated.error(&e))
}

/// Authenticates a REST request: `Authorization: Basic <key>` or `Bearer <token>` (ably-js
/// base64-encodes tokens, §8.2; a raw token is accepted too), with `X-Ably-ClientId`.
pub(super) async fn authenticate(
    broker: &Broker,
    parts: &Parts,
) -> Result<(Grant, Identity), ErrorInfo> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ErrorInfo::new(codes::UNAUTHORIZED, "authentication required"))?;
    let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
    let decoded = STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let grant = if scheme.eq_ignore_ascii_case("basic") {
        let key = decoded.ok_or_else(|| {
            ErrorInfo::new(codes::INVALID_CREDENTIALS, "malformed Basic credentials")
        })?;
        broker
            .authenticator
            .authenticate(Credential::Key(&key))
            .await?
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let token = decoded.unwrap_or_else(|| value.trim().to_owned());
        broker
            .authenticator
            .authenticate(Credential::Token(&token))
            .await?
    } else {
        return Err(ErrorInfo::new(
            codes::UNAUTHORIZED,
            "unsupported authorization scheme",
        ));
    };
    let requested = parts
        .headers
        .get("x-ably-clientid")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let identity = Identity::of_grant(&grant, requested.as_deref())?;
    Ok((grant, identity))
}

/// The format of the request body, from `Content-Type` (JSON unless it says msgpack).
pub(super) fn body_format(parts: &Parts) -> Format {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Format::parse(v.split(';').next().unwrap_or("").trim()))
        .unwrap_or(Format::Json)
}

async fn request_token(
    broker: &Broker,
    parts: &Parts,
    key_name: &str,
    body: &[u8],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let key_name = percent_encoding::percent_decode_str(key_name).decode_utf8_lossy();
    let request: TokenRequest = decode_value(body_format(parts), body)
        .map_err(|e| ErrorInfo::new(codes::BAD_REQUEST, format!("invalid token request: {e}")))?;
    let basic = match (&request.mac, parts.headers.contains_key(AUTHORIZATION)) {
        (None, true) => Some(authenticate(broker, parts).await?.0),
        _ => None,
    };
    let details = broker
        .keys
        .request_token(&key_name, &request, basic.as_ref())?;
    Ok(negotiated.ok(StatusCode::OK, &details, Vec::new()))
}

/// Most targets one revokeTokens request may name.
const MAX_REVOCATION_TARGETS: usize = 100;
/// How far back `issuedBefore` may go, as Ably allows.
const MAX_ISSUED_BEFORE_AGE_MS: i64 = 3_600_000;
/// How long `allowReauthMargin` delays a revocation, as Ably does.
const REAUTH_MARGIN_MS: i64 = 30_000;

/// The body of `POST /keys/{keyName}/revokeTokens`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeRequest {
    targets: Vec<String>,
    #[serde(default)]
    issued_before: Option<i64>,
    #[serde(default)]
    allow_reauth_margin: Option<bool>,
}

/// `POST /keys/{keyName}/revokeTokens`: revokes the tokens the key issued to each
/// `clientId:<id>` target before `issuedBefore` (default now), from now on or, with
/// `allowReauthMargin`, 30 s later (until then their connections are asked to re-authenticate,
/// §4.7). Basic authentication with that very key. The answer is Ably's batch result, HTTP
/// 200 even when some targets fail, which is what ably-js's `auth.revokeTokens` returns as is.
async fn revoke_tokens(
    broker: &Broker,
    parts: &Parts,
    key_name: &str,
    body: &[u8],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let key_name = percent_encoding::percent_decode_str(key_name).decode_utf8_lossy();
    let (grant, _) = authenticate(broker, parts).await?;
    if grant.client_id != ClientIdClaim::Any {
        return Err(ErrorInfo::new(
            codes::INVALID_CREDENTIALS,
            "revokeTokens needs Basic authentication with the key",
        ));
    }
    if grant.key_name != key_name {
        return Err(ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            "a key may only revoke the tokens it issued",
        ));
    }
    let request: RevokeRequest = decode_value(body_format(parts), body)
        .map_err(|e| ErrorInfo::new(codes::BAD_REQUEST, format!("invalid request: {e}")))?;
    if request.targets.is_empty() || request.targets.len() > MAX_REVOCATION_TARGETS {
        return Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            format!("targets must hold 1 to {MAX_REVOCATION_TARGETS} entries"),
        ));
    }
    let now = now_ms();
    let issued_before = request.issued_before.unwrap_or(now);
    if issued_before > now || issued_before < now - MAX_ISSUED_BEFORE_AGE_MS {
        return Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            "issuedBefore must be neither in the future nor more than an hour ago",
        ));
    }
    let margin = request.allow_reauth_margin.unwrap_or(false);
    let applies_at = if margin { now + REAUTH_MARGIN_MS } else { now };
    let record = crate::revocation::Revocation {
        issued_before,
        applies_at,
    };
    let mut results = Vec::with_capacity(request.targets.len());
    let mut succeeded = 0;
    for target in &request.targets {
        match target.split_once(':') {
            Some(("clientId", client_id)) if !client_id.is_empty() => {
                broker
                    .revocations
                    .revoke(Some(&key_name), client_id, record)
                    .map_err(revocation_store_error)?;
                if let Some(cluster) = &broker.cluster {
                    // Every node refuses the tokens, not only this one.
                    cluster
                        .share_revocation(Some(&key_name), client_id, record)
                        .await
                        .map_err(|e| ErrorInfo::new(codes::INTERNAL, e))?;
                }
                succeeded += 1;
                results.push(serde_json::json!({
                    "target": target,
                    "issuedBefore": issued_before,
                    "appliesAt": applies_at,
                }));
            }
            _ => results.push(serde_json::json!({
                "target": target,
                "error": ErrorInfo::new(
                    codes::BAD_REQUEST,
                    "only clientId:<id> targets can be revoked on this broker",
                ),
            })),
        }
    }
    broker
        .revocations
        .prune(now)
        .and_then(|()| broker.revocations.flush())
        .map_err(revocation_store_error)?;
    if margin {
        ask_to_reauthenticate(broker, applies_at);
    } else {
        crate::revocation::disconnect_revoked(&broker.sessions, &broker.revocations, now);
    }
    let body = serde_json::json!({
        "successCount": succeeded,
        "failureCount": results.len() - succeeded,
        "results": results,
    });
    Ok(negotiated.ok(StatusCode::OK, &body, Vec::new()))
}

fn revocation_store_error(e: sled::Error) -> ErrorInfo {
    tracing::error!(error = %e, "token revocations");
    ErrorInfo::new(codes::INTERNAL, "revocation store unavailable")
}

/// `allowReauthMargin`: sends AUTH (§4.7) now to the connections whose token the revocation
/// will reach, so they can move to a new token, and disconnects those still on a revoked one
/// when the margin ends.
fn ask_to_reauthenticate(broker: &Broker, applies_at: i64) {
    // The connections the new records will reach once they apply.
    let reached = broker.sessions.matching(|authority| {
        authority
            .token
            .as_ref()
            .is_some_and(|stamp| broker.revocations.reaches(stamp, applies_at))
    });
    for session in reached {
        session.send(&protocol::ProtocolMessage::new(protocol::Action::Auth));
    }
    let Some(guard) = broker.track_task() else {
        return;
    };
    let (sessions, revocations) = (broker.sessions.clone(), broker.revocations.clone());
    let mut stop = broker.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(REAUTH_MARGIN_MS as u64)) => {
                crate::revocation::disconnect_revoked(&sessions, &revocations, now_ms());
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
        }
    });
}

/// One message or an array of them (§9.2 accepts both).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Message>),
    One(Box<Message>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublishResponse {
    channel: String,
    message_id: String,
    serials: Vec<Option<String>>,
}

async fn publish(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    body: &[u8],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, identity) = authenticate(broker, parts).await?;
    let messages = match decode_value(body_format(parts), body) {
        Ok(OneOrMany::Many(m)) => m,
        Ok(OneOrMany::One(m)) => vec![*m],
        Err(e) => {
            return Err(ErrorInfo::new(
                codes::BAD_REQUEST,
                format!("invalid messages: {e}"),
            ))
        }
    };
    let id_base = format!("rest-{:016x}", rand::random::<u64>());
    let publisher = Publisher {
        identity: &identity,
        capability: &grant.capability,
        attached_modes: None,
        connection_id: on_behalf_of(broker, &messages)?,
        id_base: id_base.clone(),
    };
    let checked = broker
        .channels
        .check_publish(channel.to_owned(), messages, publisher)?;
    let client_id = identity.default.as_deref();
    let serials = moderation::publish_and_wait(broker, checked, Source::Rest, client_id).await?;
    Ok(negotiated.ok(
        StatusCode::CREATED,
        &PublishResponse {
            channel: channel.to_owned(),
            message_id: id_base,
            serials,
        },
        Vec::new(),
    ))
}

/// `PATCH /channels/{name}/messages/{serial}` (RSL15), which ably-js REST `updateMessage()`,
/// `deleteMessage()` and `appendMessage()` send: the body is the change (a Message whose
/// `action` says which, update when absent, and `version` the operation's description and
/// metadata), published as a realtime change is; the answer is `{versionSerial}`.
async fn update_message(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    body: &[u8],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, identity) = authenticate(broker, parts).await?;
    let mut change: Message = decode_value(body_format(parts), body)
        .map_err(|e| ErrorInfo::new(codes::BAD_REQUEST, format!("invalid message: {e}")))?;
    change.serial = Some(serial);
    change.action = Some(change.action.unwrap_or(Message::UPDATE));
    if !change.is_version() {
        return Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            "the action of a message change is update (1), delete (2) or append (5)",
        ));
    }
    let publisher = Publisher {
        identity: &identity,
        capability: &grant.capability,
        attached_modes: None,
        connection_id: on_behalf_of(broker, std::slice::from_ref(&change))?,
        id_base: format!("rest-{:016x}", rand::random::<u64>()),
    };
    let checked = broker
        .channels
        .check_publish(channel.to_owned(), vec![change], publisher)?;
    let client_id = identity.default.as_deref();
    let serials = moderation::publish_and_wait(broker, checked, Source::Rest, client_id).await?;
    let version_serial = serials.into_iter().next().flatten();
    Ok(negotiated.ok(
        StatusCode::OK,
        &serde_json::json!({ "versionSerial": version_serial }),
        Vec::new(),
    ))
}

/// `GET /channels/{name}/messages/{serial}` (RSL11): the message in its latest version; with
/// `versions` (its query), `…/{serial}/versions` (RSL14): a page of the versions, the original
/// first (see [`versions_page`]).
async fn get_message(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    negotiated: &Negotiated,
    versions: Option<&[(String, String)]>,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, _) = authenticate(broker, parts).await?;
    let channels = &broker.channels;
    let mut headers = Vec::new();
    let messages = if let Some(query) = versions {
        let all = channels
            .message_versions(channel, &grant.capability, &serial)
            .await?;
        let (page, link) = versions_page(all, query)?;
        headers.extend(link);
        page
    } else {
        vec![
            channels
                .message(channel, &grant.capability, &serial)
                .await?,
        ]
    };
    let page = protocol::ProtocolMessage {
        messages: Some(messages),
        ..Default::default()
    };
    if versions.is_some() {
        respond_page(negotiated, page, headers)
    } else {
        respond_one(negotiated, page)
    }
}

/// A response header.
type Header = (HeaderName, String);

/// The page of `versions` (a message's, oldest first) that `query` asks for: from the version
/// at position `cursor` on (the start when absent), `limit` of them (default 100, at most
/// 1000), and the `Link` to the next page when there is one.
pub(super) fn versions_page(
    versions: Vec<Message>,
    query: &[(String, String)],
) -> Result<(Vec<Message>, Option<Header>), ErrorInfo> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ErrorInfo::new(
                codes::INVALID_PARAMETER,
                "invalid limit: it must be between 1 and 1000",
            ))
        }
    };
    let cursor = match get("cursor").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(c)) => c,
        Some(Err(_)) => return Err(ErrorInfo::new(codes::INVALID_PARAMETER, "invalid cursor")),
    };
    let position = |m: &Message| {
        m.position()
            .and_then(|p| crate::store::parse_serial(p))
            .map_or(0, |(_, seq)| seq)
    };
    let mut page: Vec<Message> = versions
        .into_iter()
        .filter(|m| position(m) >= cursor)
        .take(limit + 1)
        .collect();
    let mut link = None;
    if page.len() > limit {
        let next = position(&page[limit]);
        page.truncate(limit);
        link = Some((
            HeaderName::from_static("link"),
            format!("<./versions?limit={limit}&cursor={next}>; rel=\"next\""),
        ));
    }
    Ok((page, link))
}

/// A path segment, percent-decoded (serials are sent URL-encoded).
pub(super) fn decoded(segment: &str) -> Result<String, ErrorInfo> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ErrorInfo::new(codes::BAD_REQUEST, "path segment is not UTF-8"))
}

/// The realtime connection a REST publish is made on behalf of: messages that carry a
/// `connectionKey` are attributed to that connection (their `connectionId` is its id, and its
/// `echo` setting applies), as Ably does. Every message of one request must name the same
/// connection; an unknown or expired key is refused (40006, HTTP 400).
fn on_behalf_of(
    broker: &Broker,
    messages: &[Message],
) -> Result<Option<std::sync::Arc<str>>, ErrorInfo> {
    let Some(key) = messages.iter().find_map(|m| m.connection_key.as_deref()) else {
        return Ok(None);
    };
    if messages
        .iter()
        .any(|m| m.connection_key.as_deref() != Some(key))
    {
        return Err(ErrorInfo::new(
            codes::BAD_REQUEST,
            "every message of one publish must carry the same connectionKey",
        ));
    }
    let session = broker.sessions.find(key).map_err(|e| {
        ErrorInfo::new(
            codes::INVALID_MESSAGE_CONNECTION_KEY,
            format!("invalid connectionKey: {}", e.message),
        )
    })?;
    Ok(Some(std::sync::Arc::from(session.id.as_str())))
}

/// The parameters of a history request, kept to build the next page's link.
pub(super) struct HistoryParams {
    start: Option<i64>,
    end: Option<i64>,
    direction: Direction,
    limit: usize,
    from_serial: Option<String>,
    /// The query parameter `from_serial` came in: `from_serial` (pub/sub) or `fromSerial`
    /// (chat, `../shared/ably-chat.md` §5.4).
    from_key: &'static str,
    cursor: Option<u64>,
}

impl HistoryParams {
    /// Reads `start`, `end`, `direction`, `limit`, `cursor` and the position named
    /// `from_key` (messages up to and including it).
    pub(super) fn parse(
        query: &[(String, String)],
        from_key: &'static str,
    ) -> Result<HistoryParams, ErrorInfo> {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let bad = |name: &str| ErrorInfo::new(codes::INVALID_PARAMETER, format!("invalid {name}"));
        let number = |name: &str| -> Result<Option<i64>, ErrorInfo> {
            get(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse().map_err(|_| bad(name)))
                .transpose()
        };
        let direction = match get("direction") {
            None | Some("backwards") => Direction::Backwards,
            Some("forwards") => Direction::Forwards,
            Some(_) => return Err(bad("direction: use forwards or backwards")),
        };
        let limit = match number("limit")? {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => n as usize,
            Some(_) => return Err(bad("limit: it must be between 1 and 1000")),
        };
        let (start, end) = (number("start")?, number("end")?);
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Err(bad("start: it is after end"));
            }
        }
        Ok(HistoryParams {
            start,
            end,
            direction,
            limit,
            from_serial: get(from_key).map(str::to_owned),
            from_key,
            cursor: number("cursor")?.map(|c| c.max(0) as u64),
        })
    }

    /// The query of the next page's link: every parameter, so ably-js (which re-requests the
    /// original path with exactly the link's query) gets the same filter (§9.1).
    fn next_link(&self, word: &str, cursor: u64) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = self.start {
            q.append_pair("start", &s.to_string());
        }
        if let Some(e) = self.end {
            q.append_pair("end", &e.to_string());
        }
        q.append_pair(
            "direction",
            if self.direction == Direction::Forwards {
                "forwards"
            } else {
                "backwards"
            },
        );
        q.append_pair("limit", &self.limit.to_string());
        if let Some(f) = &self.from_serial {
            q.append_pair(self.from_key, f);
        }
        q.append_pair("cursor", &cursor.to_string());
        format!("<./{word}?{}>; rel=\"next\"", q.finish())
    }
}

async fn history(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    query: &[(String, String)],
    negotiated: &Negotiated,
    which: HistoryLog,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, _) = authenticate(broker, parts).await?;
    let params = HistoryParams::parse(query, "from_serial")?;
    let word = match which {
        HistoryLog::Messages => "messages",
        HistoryLog::Presence => "history",
    };
    let (records, headers) = history_page(
        broker,
        &grant.capability,
        channel,
        &params,
        which,
        None,
        word,
    )
    .await?;
    let page = match which {
        HistoryLog::Messages => protocol::ProtocolMessage {
            messages: Some(records),
            ..Default::default()
        },
        HistoryLog::Presence => protocol::ProtocolMessage {
            presence: Some(records.into_iter().map(from_record).collect()),
            ..Default::default()
        },
    };
    respond_page(negotiated, page, headers)
}

/// One page of `channel`'s history for `params` (only messages named `name`, when given), and
/// the `Link` header of the next page when there is one, pointing at `./<word>?…` (§9.1).
pub(super) async fn history_page(
    broker: &Broker,
    capability: &Capability,
    channel: &str,
    params: &HistoryParams,
    which: HistoryLog,
    name: Option<&str>,
    word: &str,
) -> Result<(Vec<Message>, Vec<(HeaderName, String)>), ErrorInfo> {
    let request = HistoryRequest {
        log: which,
        start: params.start,
        end: params.end,
        direction: params.direction,
        // One more than the page, to know whether there is a next one.
        limit: params.limit + 1,
        until_serial: params.from_serial.clone(),
        cursor: params.cursor,
        name: name.map(str::to_owned),
    };
    let mut rows = broker
        .channels
        .history(channel, capability, &request)
        .await?;
    let mut headers = Vec::new();
    if rows.len() > params.limit {
        rows.truncate(params.limit);
        let last = rows.last().map_or(0, |(s, _)| *s);
        let next = match params.direction {
            Direction::Backwards => last.saturating_sub(1),
            Direction::Forwards => last + 1,
        };
        headers.push((
            HeaderName::from_static("link"),
            params.next_link(word, next),
        ));
    }
    Ok((rows.into_iter().map(|(_, m)| m).collect(), headers))
}

/// Sends the messages or presence items of `page` as a JSON or msgpack array, binary data
/// base64'd for JSON readers (§7.5).
fn respond_page(
    negotiated: &Negotiated,
    page: protocol::ProtocolMessage,
    headers: Vec<(HeaderName, String)>,
) -> Result<HttpResponse, ErrorInfo> {
    let page = if negotiated.envelope.unwrap_or(negotiated.format) == Format::Json {
        page.for_json().into_owned()
    } else {
        page
    };
    Ok(match (page.messages, page.presence) {
        (Some(messages), _) => negotiated.ok(StatusCode::OK, &messages, headers),
        (None, presence) => negotiated.ok(StatusCode::OK, &presence.unwrap_or_default(), headers),
    })
}

/// Sends the one message of `page` as an object, binary data base64'd for JSON readers.
fn respond_one(
    negotiated: &Negotiated,
    page: protocol::ProtocolMessage,
) -> Result<HttpResponse, ErrorInfo> {
    let page = if negotiated.envelope.unwrap_or(negotiated.format) == Format::Json {
        page.for_json().into_owned()
    } else {
        page
    };
    let message = page.messages.and_then(|m| m.into_iter().next());
    Ok(negotiated.ok(StatusCode::OK, &message, Vec::new()))
}

/// `GET /channels/{name}/presence` (§9.2): the current members as `present` items, filtered by
/// `clientId` and `connectionId`, paginated in (clientId, connectionId) order.
async fn presence(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    query: &[(String, String)],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, _) = authenticate(broker, parts).await?;
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let limit = match get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ErrorInfo::new(
                codes::INVALID_PARAMETER,
                "invalid limit: it must be between 1 and 1000",
            ))
        }
    };
    // The cursor is the last member's `<connectionId>:<clientId>`; connectionIds have no ':'.
    let after = get("cursor").and_then(|c| {
        c.split_once(':')
            .map(|(conn, client)| (client.to_owned(), conn.to_owned()))
    });
    let (client_id, connection_id) = (get("clientId"), get("connectionId"));
    let members_query = PresenceQuery {
        after,
        client_id: client_id.clone(),
        connection_id: connection_id.clone(),
        limit: limit + 1,
    };
    let mut members = broker
        .channels
        .presence_members(channel, &grant.capability, members_query)
        .await?;
    let mut headers = Vec::new();
    if members.len() > limit {
        members.truncate(limit);
        let last = members.last().expect("a page over the limit is not empty");
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        if let Some(c) = &client_id {
            q.append_pair("clientId", c);
        }
        if let Some(c) = &connection_id {
            q.append_pair("connectionId", c);
        }
        q.append_pair(
            "cursor",
            &format!(
                "{}:{}",
                last.connection_id.as_deref().unwrap_or(""),
                last.client_id.as_deref().unwrap_or("")
            ),
        );
        headers.push((
            HeaderName::from_static("link"),
            format!("<./presence?{}>; rel=\"next\"", q.finish()),
        ));
    }
    let page = protocol::ProtocolMessage {
        presence: Some(members),
        ..Default::default()
    };
    respond_page(negotiated, page, headers)
}

/// Who is on `channel`, for a caller with `channel-metadata`: this node's count, plus the
/// other nodes' attachers in cluster mode.
pub(crate) async fn occupancy_everywhere(
    broker: &Broker,
    channel: &str,
    capability: &protocol::Capability,
) -> Result<crate::channel::Occupancy, ErrorInfo> {
    let here = broker.channels.occupancy(channel, capability).await?;
    Ok(match &broker.cluster {
        Some(cluster) => cluster.occupancy(channel, here).await,
        None => here,
    })
}

/// `GET /channels/{name}` (§9.2): ChannelDetails with occupancy.
async fn status(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, _) = authenticate(broker, parts).await?;
    let occupancy = occupancy_everywhere(broker, channel, &grant.capability).await?;
    let details = serde_json::json!({
        "channelId": channel,
        "name": channel,
        "status": {
            "isActive": occupancy.connections > 0 || occupancy.presence_members > 0,
            "occupancy": { "metrics": occupancy },
        },
    });
    Ok(negotiated.ok(StatusCode::OK, &details, Vec::new()))
}

/// The raw token of `Authorization: Bearer …`: a JWT as is, or base64-decoded (ably-js
/// base64-encodes tokens, §8.2).
fn bearer(parts: &Parts) -> Option<String> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, value) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let value = value.trim();
    if value.matches('.').count() == 2 {
        return Some(value.to_owned());
    }
    STANDARD
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .or_else(|| Some(value.to_owned()))
}

/// `/api/…`: the auth plugin's routes, and `/api/auth/token`, which turns an Auth0 token into
/// a broker token (TokenDetails JSON, usable as ably-js `authUrl` with `authHeaders`).
async fn api(
    broker: &Broker,
    parts: &Parts,
    query: &[(String, String)],
    body: Bytes,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let json = Negotiated {
        format: Format::Json,
        ..negotiated.clone()
    };
    let path = parts.uri.path().trim_end_matches('/');
    if path == "/api/dev/login" {
        return dev_login(broker, parts, query, &body, &json).await;
    }
    if let ["api", "users", id, "profile"] = path
        .trim_start_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        return profile(broker, parts, id, &json).await;
    }
    let Some(plugin) = &broker.auth0 else {
        if path == "/api/oauth/config" {
            // No Auth0: the login page offers the development login when it is open.
            let config = serde_json::json!({ "devLogin": broker.config.dev_login_enabled() });
            return Ok(json.ok(StatusCode::OK, &config, Vec::new()));
        }
        return Err(ErrorInfo::new(
            codes::NOT_FOUND,
            "Auth0 logins are not configured on this broker (set AUTH0_DOMAIN)",
        ));
    };
    if path == "/api/auth/token" {
        if !matches!(parts.method, Method::GET | Method::POST) {
            return Err(ErrorInfo::new(codes::METHOD_NOT_ALLOWED, "use GET or POST"));
        }
        let token = bearer(parts).ok_or_else(|| {
            ErrorInfo::new(
                codes::UNAUTHORIZED,
                "send the Auth0 token as Authorization: Bearer",
            )
        })?;
        let principal = plugin.authenticate(&token).await?;
        let details = broker.keys.mint(
            &broker.token_key,
            &principal.capability,
            Some(&principal.client_id),
            &principal.user_claims,
            3_600_000,
            Some(principal.expires_at),
        )?;
        // A deletion that recorded its revocation while this token was minted may predate
        // the token; its tombstone, written first, does not.
        let deleted = plugin
            .users()
            .is_deleted(&principal.client_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "user table");
                ErrorInfo::new(codes::INTERNAL, "user table unavailable")
            })?;
        if deleted {
            return Err(ErrorInfo::new(codes::FORBIDDEN, "the user was deleted"));
        }
        return Ok(json.ok(StatusCode::OK, &details, Vec::new()));
    }
    let api_key = match parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(h) if h.len() > 6 && h[..6].eq_ignore_ascii_case("basic ") => {
            let (grant, _) = authenticate(broker, parts).await?;
            if is_admin_key(&grant.capability) {
                auth_plugin::ApiKey::Admin
            } else {
                auth_plugin::ApiKey::Restricted
            }
        }
        _ => auth_plugin::ApiKey::None,
    };
    let request = auth_plugin::ApiRequest {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        query: query.to_vec(),
        bearer: bearer(parts),
        api_key,
        body,
    };
    let response = plugin.handle(request).await.ok_or_else(|| {
        ErrorInfo::new(
            codes::NOT_FOUND,
            format!("no route for {} {path}", parts.method),
        )
    })?;
    if let Some(user) = &response.disconnect {
        // Their connections end first, so a failing revocation store cannot leave them on.
        crate::revocation::evict_user(&broker.sessions, &broker.channels, user).await;
        // The ban also reaches the broker tokens issued to them under every key, so that
        // neither a reconnect nor REST with an old one works; restoring them leaves these
        // refused.
        let now = now_ms();
        let record = crate::revocation::Revocation {
            issued_before: now,
            applies_at: now,
        };
        broker
            .revocations
            .revoke(None, user, record)
            .and_then(|()| broker.revocations.prune(now))
            .and_then(|()| broker.revocations.flush())
            .map_err(|e| {
                tracing::error!(error = %e, %user, "deleted user's tokens not revoked");
                ErrorInfo::new(
                    codes::INTERNAL,
                    "the user was deleted and disconnected, but their tokens could not be revoked",
                )
            })?;
        if let Some(cluster) = &broker.cluster {
            // The other nodes end the user's connections when they see the ban; this makes
            // them refuse the user's broker tokens as well.
            cluster
                .share_revocation(None, user, record)
                .await
                .map_err(|e| ErrorInfo::new(codes::INTERNAL, e))?;
        }
    }
    if response.status >= 400 {
        let error: ErrorInfo = serde_json::from_value(response.body["error"].clone())
            .unwrap_or_else(|_| ErrorInfo::new(codes::INTERNAL, "auth plugin error"));
        return Err(error);
    }
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    Ok(json.ok(status, &response.body, Vec::new()))
}

/// The resource whose grant makes an API key an admin credential for `/api/users`.
pub const ADMIN_RESOURCE: &str = "[admin]users";

/// True when a key's capability makes it an admin credential: every operation (`*`) on `*`,
/// on `[*]*`, or on the admin resource `[admin]users`. (A channel literally named `*` is
/// matched by exactly the patterns `*` and `[*]*`.)
fn is_admin_key(capability: &Capability) -> bool {
    capability.grants_all_operations_on("*") || capability.grants_all_operations_on(ADMIN_RESOURCE)
}

/// `GET /api/users/{id}/profile`: how to show user `id` — `{id, username, firstName, lastName,
/// profileImgUrl}` — to anyone with a credential the broker accepts (API key, broker token or
/// Ably JWT, Auth0 token). From the Auth0 user table, or, with the development login, from the
/// names it has issued tokens for. 404 (40400) for anyone else.
async fn profile(
    broker: &Broker,
    parts: &Parts,
    id: &str,
    json: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    if parts.method != Method::GET {
        return Err(ErrorInfo::new(codes::METHOD_NOT_ALLOWED, "use GET"));
    }
    authenticate(broker, parts).await?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| ErrorInfo::new(codes::INVALID_PARAMETER, "the user id is not UTF-8"))?;
    let not_found = || ErrorInfo::new(codes::NOT_FOUND, "no such user");
    let profile = if let Some(plugin) = &broker.auth0 {
        plugin.public_profile(&id).await?
    } else if let Some(dev_users) = &broker.dev_users {
        let here = dev_users.profile(&id).map_err(|e| {
            tracing::error!(error = %e, "development users");
            ErrorInfo::new(codes::INTERNAL, "user store unavailable")
        })?;
        match (here, &broker.cluster) {
            (Some(profile), _) => profile,
            // A name another node's login issued.
            (None, Some(cluster)) => match cluster.knows_dev_user(&id).await {
                Ok(true) => crate::dev_users::profile(&id),
                Ok(false) => return Err(not_found()),
                Err(e) => {
                    tracing::error!(error = %e, "development users");
                    return Err(ErrorInfo::new(codes::INTERNAL, "user store unavailable"));
                }
            },
            (None, None) => return Err(not_found()),
        }
    } else {
        return Err(ErrorInfo::new(
            codes::NOT_FOUND,
            "this broker keeps no users: neither Auth0 nor the development login is on",
        ));
    };
    Ok(json.ok(StatusCode::OK, &profile, Vec::new()))
}

/// The capability of development logins: everything a chat user does, nothing more — what
/// an Auth0 user without permissions or roles gets by default.
static DEV_CAPABILITY: LazyLock<Capability> = LazyLock::new(|| {
    Capability::parse(auth_plugin::config::CHAT_USER_CAPABILITY).expect("literal capability parses")
});

/// `GET`/`POST /api/dev/login?username=…` (or `{"username":…}`): a token for that username,
/// so the app runs on a fresh machine without Auth0. Open only while Auth0 is off and
/// `dev_login` is on (the default when the broker runs on its development key).
async fn dev_login(
    broker: &Broker,
    parts: &Parts,
    query: &[(String, String)],
    body: &[u8],
    json: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    if !broker.config.dev_login_enabled() {
        return Err(ErrorInfo::new(
            codes::NOT_FOUND,
            "the development login is off: Auth0 is configured, or dev_login is false",
        ));
    }
    if !matches!(parts.method, Method::GET | Method::POST) {
        return Err(ErrorInfo::new(codes::METHOD_NOT_ALLOWED, "use GET or POST"));
    }
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["username"].as_str().map(str::to_owned));
    let wanted = query
        .iter()
        .find(|(k, _)| k == "username")
        .map(|(_, v)| v.clone())
        .or(from_body)
        .ok_or_else(|| ErrorInfo::new(codes::BAD_REQUEST, "username is required"))?;
    let username = auth_plugin::users::normalise_username(&wanted)
        .map_err(|e| ErrorInfo::new(codes::INVALID_PARAMETER, e.to_string()))?;
    if let Some(dev_users) = &broker.dev_users {
        dev_users.record(&username, now_ms()).map_err(|e| {
            tracing::error!(error = %e, "development users");
            ErrorInfo::new(codes::INTERNAL, "user store unavailable")
        })?;
        if let Some(cluster) = &broker.cluster {
            cluster
                .share_dev_user(&username)
                .await
                .map_err(|e| ErrorInfo::new(codes::INTERNAL, e))?;
        }
    }
    let details = broker.keys.mint(
        &broker.token_key,
        &DEV_CAPABILITY,
        Some(&username),
        &protocol::UserClaims::default(),
        3_600_000,
        None,
    )?;
    Ok(json.ok(StatusCode::OK, &details, Vec::new()))
}
