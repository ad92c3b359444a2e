//! The `@ably/chat` REST API, `/chat/v4/rooms/{room}/…` (`../shared/ably-chat.md` §5.4, routes
//! R1–R10): send, list, get, edit and delete chat messages, their versions, and the
//! room's occupancy. Room `X` is the channel `X::$chat`; every operation goes through the
//! channel service like a pub/sub REST request (names, capabilities, edit rights, sequencing),
//! so this module only turns chat bodies into channel messages and messages into the
//! `RestMessage` shape the Chat SDK reads. Message reactions (R7–R9) are annotations of type
//! `reaction:<unique|distinct|multiple>.v1` (§5.6), published and read through the channel
//! service like the pub/sub annotation routes. A send, edit or delete with an
//! `idempotencyKey` publishes with an id derived from the key ([`idempotent_id`]), so the
//! backend's idempotent publishing answers a repeat with the first one's serial.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use protocol::codec::decode_value;
use protocol::error::codes;
use protocol::{Annotation, Data, ErrorInfo, Message, MessageVersion, Operation};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::response::{HttpResponse, Negotiated};
use super::rest::{authenticate, body_format, decoded, history_page, HistoryParams};
use crate::broker::Broker;
use crate::channel::service::{HistoryLog, Publisher};
use crate::moderation::{self, Source};

/// The name of a chat message on the room's channel (§5.3).
const CHAT_MESSAGE: &str = "chat.message";

/// Routes `/chat/v4/rooms/{room}/{rest…}`.
pub async fn route(
    broker: &Broker,
    parts: &Parts,
    room: &str,
    rest: &[&str],
    query: &[(String, String)],
    body: &Bytes,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let channel = format!("{}::$chat", decoded(room)?);
    // Only a send, an edit and a delete take a key (R1, R4, R5).
    let key = || idempotency_key(query);
    match (&parts.method, rest) {
        (&Method::POST, ["messages"]) => {
            let key = key()?;
            send(broker, parts, &channel, body, key.as_deref(), negotiated).await
        }
        (&Method::GET, ["messages"]) => list(broker, parts, &channel, query, negotiated).await,
        (&Method::GET, ["messages", serial]) => {
            let serial = decoded(serial)?;
            let (grant, _) = authenticate(broker, parts).await?;
            let message = broker
                .channels
                .message(&channel, &grant.capability, &serial)
                .await?;
            Ok(negotiated.ok(StatusCode::OK, &rest_message(&message, None), Vec::new()))
        }
        (&Method::GET, ["messages", serial, "versions"]) => {
            let serial = decoded(serial)?;
            let (grant, _) = authenticate(broker, parts).await?;
            let versions = broker
                .channels
                .message_versions(&channel, &grant.capability, &serial)
                .await?;
            let created = versions.first().and_then(|m| m.timestamp);
            let (page, link) = super::rest::versions_page(versions, query)?;
            let items: Vec<Value> = page.iter().map(|m| rest_message(m, created)).collect();
            Ok(negotiated.ok(StatusCode::OK, &items, link.into_iter().collect()))
        }
        (&Method::PUT, ["messages", serial]) => {
            let key = key()?;
            let edit: Edit = read_body(parts, body)?;
            let data = content(
                edit.message.text,
                Some(edit.message.metadata.unwrap_or_default()),
            );
            let change = Message {
                action: Some(Message::UPDATE),
                name: Some(CHAT_MESSAGE.to_owned()),
                data: Some(data),
                extras: Some(json!({"headers": edit.message.headers.unwrap_or_default()})),
                version: Some(operation(edit.description, edit.metadata)),
                ..Default::default()
            };
            let key = key.as_deref();
            change_message(broker, parts, &channel, serial, change, key, negotiated).await
        }
        (&Method::POST, ["messages", serial, "delete"]) => {
            let key = key()?;
            let delete: Delete = if body.is_empty() {
                Delete::default()
            } else {
                read_body(parts, body)?
            };
            let change = Message {
                action: Some(Message::DELETE),
                version: Some(operation(delete.description, delete.metadata)),
                ..Default::default()
            };
            let key = key.as_deref();
            change_message(broker, parts, &channel, serial, change, key, negotiated).await
        }
        (&Method::GET, ["occupancy"]) => occupancy(broker, parts, &channel, negotiated).await,
        (&Method::POST, ["messages", serial, "reactions"]) => {
            let reaction: Reaction = read_body(parts, body)?;
            let annotation = reaction_annotation(&reaction.kind, reaction.name, reaction.count)?;
            react(broker, parts, &channel, serial, annotation, negotiated).await
        }
        (&Method::DELETE, ["messages", serial, "reactions"]) => {
            let get = |name: &str| {
                query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let kind = get("type").unwrap_or_default();
            let mut annotation = reaction_annotation(&kind, get("name"), None)?;
            annotation.action = Some(Annotation::DELETE);
            react(broker, parts, &channel, serial, annotation, negotiated).await
        }
        (&Method::GET, ["messages", serial, "client-reactions"]) => {
            let serial = decoded(serial)?;
            let (grant, identity) = authenticate(broker, parts).await?;
            let channels = &broker.channels;
            channels.permit(
                &channel,
                &grant.capability,
                Operation::Subscribe,
                "subscribe",
            )?;
            let client = query
                .iter()
                .find(|(k, _)| k == "forClientId")
                .map(|(_, v)| v.clone())
                .or_else(|| identity.default.clone())
                .ok_or_else(|| {
                    ErrorInfo::new(
                        codes::INVALID_CLIENT_ID,
                        "client-reactions needs forClientId or an identified caller",
                    )
                })?;
            // Asks that the message exists, as a message of this channel.
            channels.own_change(&channel, &serial).await?;
            let aggregate = channels.aggregate(&channel, &serial).await?;
            let clip = channels.context().summary_clip;
            let summary = aggregate.summary_for(&client, clip);
            Ok(negotiated.ok(StatusCode::OK, &reactions(&summary), Vec::new()))
        }
        _ => Err(ErrorInfo::new(
            codes::NOT_FOUND,
            format!("no route for {} {}", parts.method, parts.uri.path()),
        )),
    }
}

/// The longest `idempotencyKey` accepted, in characters (chat-js sends 12).
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The `idempotencyKey` of R1, R4 and R5 (§5.4), when given: 1 to 256 characters, else 40003.
fn idempotency_key(query: &[(String, String)]) -> Result<Option<String>, ErrorInfo> {
    let Some((_, key)) = query.iter().find(|(k, _)| k == "idempotencyKey") else {
        return Ok(None);
    };
    let length = key.chars().count();
    if length == 0 || length > MAX_IDEMPOTENCY_KEY {
        return Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            format!("idempotencyKey must have 1 to {MAX_IDEMPOTENCY_KEY} characters, not {length}"),
        ));
    }
    Ok(Some(key.clone()))
}

/// The message id a chat operation with idempotency `key` publishes with: a hash of the
/// operation (`send`, `update`, `delete`), the caller's clientId, the key and the serial of
/// the message changed, so only the same operation by the same client on the same message
/// (in the same room: ids are per channel) is taken for a repeat.
fn idempotent_id(operation: &str, client_id: &str, key: &str, serial: &str) -> String {
    let mut hash = Sha256::new();
    for part in [operation, client_id, key, serial] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(10 + 32);
    id.push_str("chat-idem-");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The body of R1, `POST …/messages` (CHA-M3b: what is omitted stays omitted).
#[derive(Deserialize)]
struct NewMessage {
    text: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
}

/// The body of R4, `PUT …/messages/{serial}`: the new content and why it changed.
#[derive(Deserialize)]
struct Edit {
    message: NewMessage,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// The body of R7, `POST …/messages/{serial}/reactions`.
#[derive(Deserialize)]
struct Reaction {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    #[serde(default)]
    count: Option<u64>,
}

/// The annotation a message reaction of chat type `kind` (`unique`, `distinct` or
/// `multiple`) is: type `reaction:<kind>.v1` (§5.6); 40003 for another type, or a count on a
/// type other than `multiple`.
fn reaction_annotation(
    kind: &str,
    name: Option<String>,
    count: Option<u64>,
) -> Result<Annotation, ErrorInfo> {
    if !matches!(kind, "unique" | "distinct" | "multiple") {
        return Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            format!("reaction type {kind:?}: use unique, distinct or multiple"),
        ));
    }
    Ok(Annotation {
        kind: Some(format!("reaction:{kind}.v1")),
        action: Some(Annotation::CREATE),
        name,
        count,
        ..Annotation::default()
    })
}

/// R7 and R8: publishes the reaction `annotation` of message `serial` as the caller; answers
/// `{"serial": <the annotation's serial>}`, 201 for a new reaction and 200 for a removal.
async fn react(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    mut annotation: Annotation,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, identity) = authenticate(broker, parts).await?;
    annotation.message_serial = Some(serial);
    let status = if annotation.action == Some(Annotation::DELETE) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let serials = super::annotations::publish_annotations(
        broker,
        channel,
        vec![annotation],
        &identity,
        &grant.capability,
    )
    .await?;
    let serial = serials.into_iter().next().flatten();
    Ok(negotiated.ok(status, &json!({ "serial": serial }), Vec::new()))
}

/// A summary (`{type: entry}`) as chat's `reactions`: the entries of the `reaction:*.v1`
/// types under `unique`, `distinct` and `multiple`, each `{}` when there are none.
fn reactions(summary: &Map<String, Value>) -> Value {
    let of = |kind: &str| {
        summary
            .get(&format!("reaction:{kind}.v1"))
            .cloned()
            .unwrap_or_else(|| json!({}))
    };
    json!({"unique": of("unique"), "distinct": of("distinct"), "multiple": of("multiple")})
}

/// The body of R5, `POST …/messages/{serial}/delete`.
#[derive(Default, Deserialize)]
struct Delete {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn read_body<T: serde::de::DeserializeOwned>(parts: &Parts, body: &[u8]) -> Result<T, ErrorInfo> {
    decode_value(body_format(parts), body)
        .map_err(|e| ErrorInfo::new(codes::INVALID_PARAMETER, format!("invalid body: {e}")))
}

/// A chat message's data (§5.3): `{text, metadata?}`, which the publish checks turn into JSON
/// text with the `json` encoding.
fn content(text: String, metadata: Option<Map<String, Value>>) -> Data {
    let mut data = Map::new();
    data.insert("text".to_owned(), Value::String(text));
    if let Some(metadata) = metadata {
        data.insert("metadata".to_owned(), Value::Object(metadata));
    }
    Data::Json(Value::Object(data))
}

/// The `version` a change carries: why it was made. Who and when are the server's to set.
fn operation(description: Option<String>, metadata: Option<Map<String, Value>>) -> MessageVersion {
    MessageVersion {
        description,
        metadata: metadata.map(Value::Object),
        ..Default::default()
    }
}

/// The caller as a chat author: chat needs a clientId (40012 without one, §5.4 R1).
async fn author(
    broker: &Broker,
    parts: &Parts,
) -> Result<(crate::auth::Grant, crate::auth::Identity), ErrorInfo> {
    let (grant, identity) = authenticate(broker, parts).await?;
    if identity.default.is_none() {
        return Err(ErrorInfo::new(
            codes::INVALID_CLIENT_ID,
            "chat needs a clientId: use a token with one, or X-Ably-ClientId with a key",
        ));
    }
    Ok((grant, identity))
}

/// R1: publishes the message as the §5.3 create and answers 201 with it as stored; a repeat
/// with the same idempotency `key` answers with the message the first one stored.
async fn send(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    body: &[u8],
    key: Option<&str>,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, identity) = author(broker, parts).await?;
    let id = key.map(|key| idempotent_id("send", client_id(&identity), key, ""));
    let new: NewMessage = read_body(parts, body)?;
    let message = Message {
        name: Some(CHAT_MESSAGE.to_owned()),
        data: Some(content(new.text, new.metadata)),
        extras: new.headers.map(|h| json!({ "headers": h })),
        ..Default::default()
    };
    let serial = publish(broker, channel, message, &grant, &identity, id).await?;
    let versions = broker.channels.own_change(channel, &serial).await?;
    let created = versions
        .into_iter()
        .next()
        .ok_or_else(|| ErrorInfo::new(codes::INTERNAL, "the message sent is not stored"))?;
    Ok(negotiated.ok(
        StatusCode::CREATED,
        &rest_message(&created, None),
        Vec::new(),
    ))
}

/// R4 and R5: publishes `change` to message `serial` (the channel's sequencer checks the
/// `message-update-*`/`message-delete-*` rights and that the message exists) and answers with
/// the version it made; a repeat with the same idempotency `key` answers with the version the
/// first one made.
async fn change_message(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    mut change: Message,
    key: Option<&str>,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, identity) = author(broker, parts).await?;
    let operation = match change.action {
        Some(Message::DELETE) => "delete",
        _ => "update",
    };
    let id = key.map(|key| idempotent_id(operation, client_id(&identity), key, &serial));
    change.serial = Some(serial.clone());
    let version = publish(broker, channel, change, &grant, &identity, id).await?;
    let versions = broker.channels.own_change(channel, &serial).await?;
    let made = versions
        .iter()
        .find(|m| m.position() == Some(&version))
        .or(versions.last())
        .ok_or_else(|| ErrorInfo::new(codes::INTERNAL, "the message changed is not stored"))?;
    let created = versions.first().and_then(|m| m.timestamp);
    Ok(negotiated.ok(StatusCode::OK, &rest_message(made, created), Vec::new()))
}

/// The clientId of a chat author ([`author`] checked there is one).
fn client_id(identity: &crate::auth::Identity) -> &str {
    identity.default.as_deref().unwrap_or_default()
}

/// Publishes one message through every check of a publish and waits until it is stored;
/// returns its position (a create's serial, a change's version serial). With an idempotent
/// `id` ([`idempotent_id`]), a repeat is answered with the first publish's position.
async fn publish(
    broker: &Broker,
    channel: &str,
    message: Message,
    grant: &crate::auth::Grant,
    identity: &crate::auth::Identity,
    id: Option<String>,
) -> Result<String, ErrorInfo> {
    let publisher = Publisher {
        identity,
        capability: &grant.capability,
        attached_modes: None,
        connection_id: None,
        id_base: format!("chat-{:016x}", rand::random::<u64>()),
    };
    let mut checked =
        broker
            .channels
            .check_publish(channel.to_owned(), vec![message], publisher)?;
    if let Some(id) = id {
        checked.make_idempotent(&id);
    }
    let client_id = identity.default.as_deref();
    let position = moderation::publish_and_wait(broker, checked, Source::Chat, client_id)
        .await?
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| ErrorInfo::new(codes::INTERNAL, "the message was not given a serial"))?;
    // The answer reads the message back: in cluster mode, once this node holds it.
    broker.channels.caught_up(channel, &position).await;
    Ok(position)
}

/// R2: the room's chat messages, each once at its place in its latest version, paged with a
/// `Link` like pub/sub history; `fromSerial` ends the listing at that position.
async fn list(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    query: &[(String, String)],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, _) = authenticate(broker, parts).await?;
    let params = HistoryParams::parse(query, "fromSerial")?;
    let (messages, headers) = history_page(
        broker,
        &grant.capability,
        channel,
        &params,
        HistoryLog::Messages,
        Some(CHAT_MESSAGE),
        "messages",
    )
    .await?;
    let items: Vec<Value> = messages.iter().map(|m| rest_message(m, None)).collect();
    Ok(negotiated.ok(StatusCode::OK, &items, headers))
}

/// R10: `{connections, presenceMembers}` of the room's channel, across the cluster.
async fn occupancy(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let (grant, _) = authenticate(broker, parts).await?;
    let occupancy = super::rest::occupancy_everywhere(broker, channel, &grant.capability).await?;
    let body = json!({
        "connections": occupancy.connections,
        "presenceMembers": occupancy.presence_members,
    });
    Ok(negotiated.ok(StatusCode::OK, &body, Vec::new()))
}

/// A channel message as the Chat SDK's `RestMessage` (`src/core/rest-types.ts`, §5.4):
/// `text` and `metadata` from the data, `headers` and `userClaim` from `extras`, `action` as
/// its string, `version` (a create's own serial and timestamp) and `reactions` from the
/// summary of its annotations (empty where it has none). `metadata` and `headers` are always objects. `timestamp` is the
/// creation time: `created` when given (a stored change carries its own time, which goes into
/// `version.timestamp`), else the message's.
fn rest_message(message: &Message, created: Option<i64>) -> Value {
    let data = data_object(message);
    let text = data.get("text").and_then(Value::as_str).unwrap_or("");
    let metadata = data
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let extras = message.extras.as_ref();
    let headers = extras
        .and_then(|e| e.get("headers"))
        .filter(|h| h.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let action = match message.action {
        Some(Message::UPDATE | Message::APPEND) => "message.update",
        Some(Message::DELETE) => "message.delete",
        _ => "message.create",
    };
    let summary = message
        .annotations
        .as_ref()
        .and_then(|a| a.get("summary"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let version = message.version.clone().unwrap_or_default();
    let mut version_json = Map::new();
    version_json.insert(
        "serial".to_owned(),
        json!(version.serial.as_ref().or(message.serial.as_ref())),
    );
    version_json.insert(
        "timestamp".to_owned(),
        json!(version.timestamp.or(message.timestamp)),
    );
    if let Some(c) = version.client_id {
        version_json.insert("clientId".to_owned(), json!(c));
    }
    if let Some(d) = version.description {
        version_json.insert("description".to_owned(), json!(d));
    }
    if let Some(m) = version.metadata {
        version_json.insert("metadata".to_owned(), m);
    }
    let mut out = json!({
        "serial": message.serial,
        "clientId": message.client_id,
        "text": text,
        "metadata": metadata,
        "headers": headers,
        "action": action,
        "version": version_json,
        "timestamp": created.or(message.timestamp),
        "reactions": reactions(&summary),
    });
    if let Some(claim) = extras
        .and_then(|e| e.get("userClaim"))
        .and_then(Value::as_str)
    {
        out["userClaim"] = json!(claim);
    }
    out
}

/// The message's data as a JSON object (JSON text with a `json` encoding, as the publish
/// checks store it); empty when it is anything else, e.g. a plain-REST publish of a string.
fn data_object(message: &Message) -> Map<String, Value> {
    let json_encoded = message
        .encoding
        .as_deref()
        .is_some_and(|e| e.ends_with("json"));
    let value = match &message.data {
        Some(Data::Json(v)) => Some(v.clone()),
        Some(Data::String(s)) if json_encoded => serde_json::from_str(s).ok(),
        Some(Data::Binary(b)) if json_encoded => serde_json::from_slice(b).ok(),
        _ => None,
    };
    match value {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
}
