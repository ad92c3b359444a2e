//! The one port's HTTP side: routing, the WebSocket upgrade on `/` (§4.1), and the REST
//! endpoints of §9 in [`rest`] (annotations in [`annotations`]), the `@ably/chat` REST API in
//! [`chat`]. Request bodies are capped at `maxFrameSize`.

pub mod annotations;
pub mod chat;
pub mod response;
pub mod rest;
pub mod web;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::error::codes;
use protocol::ErrorInfo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::broker::Broker;
use crate::connection::{self, ConnectParams};
use response::{HttpResponse, Negotiated};

/// Serves one HTTP request.
pub async fn handle(
    broker: Arc<Broker>,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let negotiated = Negotiated::from_request(request.headers(), &query);
    if is_websocket_upgrade(&request) {
        return Ok(upgrade(broker, request, &negotiated));
    }
    if request.method() == Method::OPTIONS {
        return Ok(negotiated.preflight(request.headers().get("access-control-request-headers")));
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, broker.config.limits.max_frame_size)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(negotiated.error(&ErrorInfo::new(
                codes::MESSAGE_TOO_LARGE,
                format!(
                    "request body larger than {} bytes",
                    broker.config.limits.max_frame_size
                ),
            )))
        }
    };
    Ok(rest::route(&broker, &parts, &query, body, &negotiated).await)
}

fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    let has = |name, token: &str| {
        request.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    request.method() == Method::GET && has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

fn upgrade(
    broker: Arc<Broker>,
    mut request: Request<Incoming>,
    negotiated: &Negotiated,
) -> HttpResponse {
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return negotiated.error(&ErrorInfo::new(
            codes::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        ));
    };
    if broker.connection_count() >= broker.config.limits.max_connections {
        return negotiated.error(&ErrorInfo::new(
            codes::UNAVAILABLE,
            "the broker is at its connection limit",
        ));
    }
    let params = ConnectParams::parse(request.uri().query().unwrap_or(""));
    let limits = &broker.config.limits;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(limits.socket_read_buffer_bytes)
        .write_buffer_size(limits.socket_write_buffer_bytes)
        .max_message_size(Some(limits.max_frame_size))
        .max_frame_size(Some(limits.max_frame_size));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let Some(guard) = broker.track_task() else {
        return negotiated.error(&ErrorInfo::new(
            codes::UNAVAILABLE,
            "the broker is shutting down",
        ));
    };
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                // Boxed: inline, the serving state would sit beside copies of the upgrade's
                // (the socket, the parameters) for the connection's whole life.
                Box::pin(connection::serve(broker, ws, params)).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
