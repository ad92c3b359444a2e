//! The REST side of annotations (RSAN1, RSAN3; `../shared/ably-chat.md` §5.6): `POST
//! /channels/{c}/messages/{serial}/annotations` publishes annotations of a message as the
//! realtime ANNOTATION action does, and `GET` on the same path lists them oldest first, a page
//! at a time (`limit`, and the `cursor` the `Link` header names).

use hyper::header::HeaderName;
use hyper::http::request::Parts;
use hyper::StatusCode;
use protocol::codec::decode_value;
use protocol::error::codes;
use protocol::{Annotation, ErrorInfo, Format};
use serde::Deserialize;

use super::response::{HttpResponse, Negotiated};
use super::rest::{authenticate, body_format, decoded};
use crate::broker::Broker;
use crate::channel::service::Publisher;

/// Most annotations one page lists, and how many when `limit` is absent.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// One annotation or an array of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Annotation>),
    One(Box<Annotation>),
}

/// `POST /channels/{channel}/messages/{serial}/annotations`: the annotations of the body (one
/// or an array), each of message `serial` whatever `messageSerial` it names; answered once
/// they are durable with `201 {"serials": [...]}`, the annotations' own serials.
pub async fn publish(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    body: &[u8],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, identity) = authenticate(broker, parts).await?;
    let mut annotations = match decode_value(body_format(parts), body) {
        Ok(OneOrMany::Many(a)) => a,
        Ok(OneOrMany::One(a)) => vec![*a],
        Err(e) => {
            return Err(ErrorInfo::new(
                codes::BAD_REQUEST,
                format!("invalid annotations: {e}"),
            ))
        }
    };
    for a in &mut annotations {
        a.message_serial = Some(serial.clone());
    }
    let serials =
        publish_annotations(broker, channel, annotations, &identity, &grant.capability).await?;
    Ok(negotiated.ok(
        StatusCode::CREATED,
        &serde_json::json!({ "serials": serials }),
        Vec::new(),
    ))
}

/// Publishes `annotations` on `channel` for a REST caller and waits until they are durable;
/// their serials.
pub async fn publish_annotations(
    broker: &Broker,
    channel: &str,
    annotations: Vec<Annotation>,
    identity: &crate::auth::Identity,
    capability: &protocol::Capability,
) -> Result<Vec<Option<String>>, ErrorInfo> {
    let publisher = Publisher {
        identity,
        capability,
        attached_modes: None,
        connection_id: None,
        id_base: format!("rest-{:016x}", rand::random::<u64>()),
    };
    let checked = broker
        .channels
        .check_annotations(channel.to_owned(), annotations, publisher)?;
    broker.channels.publish_and_wait(checked).await
}

/// `GET /channels/{channel}/messages/{serial}/annotations`: a page of the message's
/// annotations, oldest first, for a caller with `annotation-subscribe`.
pub async fn list(
    broker: &Broker,
    parts: &Parts,
    channel: &str,
    serial: &str,
    query: &[(String, String)],
    negotiated: &Negotiated,
) -> Result<HttpResponse, ErrorInfo> {
    let serial = decoded(serial)?;
    let (grant, _) = authenticate(broker, parts).await?;
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bad = |name: &str| ErrorInfo::new(codes::INVALID_PARAMETER, format!("invalid {name}"));
    let limit = match get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(bad("limit: it must be between 1 and 1000")),
    };
    let cursor = match get("cursor").map(str::parse::<u64>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return Err(bad("cursor")),
    };
    let mut found = broker
        .channels
        .annotations(channel, &grant.capability, &serial, cursor, limit + 1)
        .await?;
    let mut headers = Vec::new();
    if found.len() > limit {
        found.truncate(limit);
        let next = found.last().map_or(0, |(seq, _)| seq + 1);
        let link = format!("<./annotations?limit={limit}&cursor={next}>; rel=\"next\"");
        headers.push((HeaderName::from_static("link"), link));
    }
    let mut annotations: Vec<Annotation> = found.into_iter().map(|(_, a)| a).collect();
    if negotiated.envelope.unwrap_or(negotiated.format) == Format::Json {
        for a in &mut annotations {
            protocol::message::base64_binary(&mut a.data, &mut a.encoding);
        }
    }
    Ok(negotiated.ok(StatusCode::OK, &annotations, headers))
}
