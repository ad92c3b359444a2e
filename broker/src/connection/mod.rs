//! One task per WebSocket: authenticate from the query string (§4.1), bind or resume a
//! [`session::Session`], send CONNECTED (§4.3), then read frames and hand each decoded
//! ProtocolMessage to `actions`. Framing is apart from the session: this module turns socket
//! frames into ProtocolMessages and back; the actions change the per-socket state in
//! [`state`]. The writer side is the socket's [`crate::outbox`], a top-level module so that
//! channels can push to it without depending on this one.

pub mod ledger;
pub mod session;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use protocol::error::codes;
use protocol::{Action, ErrorInfo, Format, ProtocolMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::actions;
use crate::auth::{now_ms, Credential, Identity};
use crate::broker::Broker;
use crate::channel::Command;
use crate::channel::PublishOutcome;
use crate::outbox::{self, Outbox};
use session::{Authority, Session};
use state::{Connection, Ending};

/// The query parameters of a realtime connection (§4.1).
#[derive(Clone, Debug, Default)]
pub struct ConnectParams {
    /// `format`: json (default) or msgpack.
    pub format: Format,
    /// `key`: an API key.
    pub key: Option<String>,
    /// `access_token`: a token.
    pub access_token: Option<String>,
    /// `resume`: the connectionKey of a connection to resume.
    pub resume: Option<String>,
    /// `recover`: likewise, from a recovery key.
    pub recover: Option<String>,
    /// `clientId`.
    pub client_id: Option<String>,
    /// `echo=false` turns off delivery of own messages.
    pub echo: bool,
    /// `v`: the protocol version.
    pub version: Option<String>,
}

impl ConnectParams {
    /// Parses a URL query string; unknown parameters are ignored.
    pub fn parse(query: &str) -> ConnectParams {
        let mut params = ConnectParams {
            echo: true,
            ..Default::default()
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            match name.as_ref() {
                "format" => params.format = Format::parse(&value).unwrap_or_default(),
                "key" => params.key = Some(value),
                "access_token" | "accessToken" => params.access_token = Some(value),
                "resume" => params.resume = Some(value),
                "recover" => params.recover = Some(value),
                "clientId" => params.client_id = Some(value),
                "echo" => params.echo = value != "false",
                "v" => params.version = Some(value),
                _ => {}
            }
        }
        params
    }
}

/// Sends the ACK or NACK of `first` and of every later outcome already known, in order. A run
/// of consecutive msgSerials that all succeeded goes out as one ACK with `count` and one
/// `res` entry each (§7.3), so a publisher with many messages in flight gets one frame per
/// group commit rather than one per message.
fn answer_ready(conn: &mut Connection, first: (u64, PublishOutcome)) {
    let mut run: Option<(u64, Vec<protocol::PublishResult>)> = None;
    let mut next = Some(first);
    while let Some((msg_serial, outcome)) = next.take() {
        match outcome {
            Ok(serials) => match &mut run {
                Some((start, results)) if *start + results.len() as u64 == msg_serial => {
                    results.push(protocol::PublishResult { serials });
                }
                _ => {
                    if let Some((start, results)) = run.take() {
                        conn.send(&ack(start, results));
                    }
                    run = Some((msg_serial, vec![protocol::PublishResult { serials }]));
                }
            },
            Err(error) => {
                if let Some((start, results)) = run.take() {
                    conn.send(&ack(start, results));
                }
                conn.broker
                    .metrics
                    .nacks
                    .with_label_values(&[&error.code.to_string()])
                    .inc();
                conn.send(&ProtocolMessage {
                    msg_serial: Some(msg_serial),
                    count: Some(1),
                    error: Some(error),
                    ..ProtocolMessage::new(Action::Nack)
                });
            }
        }
        next = conn.pending.next().now_or_never().flatten();
    }
    if let Some((start, results)) = run {
        conn.send(&ack(start, results));
    }
}

/// One ACK for `results.len()` consecutive msgSerials from `start`.
fn ack(start: u64, results: Vec<protocol::PublishResult>) -> ProtocolMessage {
    ProtocolMessage {
        msg_serial: Some(start),
        count: Some(results.len() as u64),
        res: Some(results),
        ..ProtocolMessage::new(Action::Ack)
    }
}

/// Serves one upgraded WebSocket until it closes.
pub async fn serve<S>(broker: Arc<Broker>, ws: WebSocketStream<S>, params: ConnectParams)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (outbox, receiver) = Outbox::new(
        params.format,
        broker.config.limits.outbox_bytes,
        broker.metrics.clone(),
    );
    let mut writer = tokio::spawn(outbox::write_loop(
        sink,
        receiver,
        broker.config.max_idle_interval(),
        broker.metrics.clone(),
    ));
    broker.metrics.connections.inc();
    // The handshake, frame handling and teardown are boxed: their states are large and live
    // only briefly, and inline they would size every idle connection's task (connect-storm).
    let Some(mut conn) = Box::pin(handshake(&broker, &params, outbox.clone())).await else {
        let _ = writer.await;
        broker.metrics.connections.dec();
        return;
    };
    conn.end_if_lapsed().await;
    let mut shutdown = broker.shutdown.clone();
    let mut writer_running = true;
    let max_pending = broker.config.limits.max_pending_publishes;
    // The writer pings every maxIdleInterval; a peer that answers nothing for three of them
    // is gone (a half-open TCP connection), and its connection becomes resumable state.
    let read_idle = broker.config.max_idle_interval() * 3;
    let mut heard = Instant::now();
    while conn.ending.is_none() {
        if conn.pending.len() >= max_pending {
            // Not reading on purpose (backpressure): that is not the peer's silence.
            heard = Instant::now();
        }
        let renewal = renewal_deadline(&conn);
        tokio::select! {
            biased;
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                conn.outbox.close(Some(ProtocolMessage {
                    error: Some(ErrorInfo::new(codes::UNAVAILABLE, "the broker is shutting down; resume later")),
                    ..ProtocolMessage::new(Action::Disconnected)
                }));
                conn.ending = Some(Ending::Resumable);
            }
            _ = &mut writer, if writer_running => {
                writer_running = false;
                conn.ending = Some(Ending::Resumable);
            }
            Some(first) = conn.pending.next() => answer_ready(&mut conn, first),
            _ = sleep_until(renewal.unwrap_or_else(Instant::now)), if renewal.is_some() => {
                token_timer(&mut conn);
            }
            _ = sleep_until(heard + read_idle), if conn.pending.len() < max_pending => {
                tracing::debug!(connection = %conn.connection_id, "peer silent; dropping socket");
                conn.outbox.close(None);
                conn.ending = Some(Ending::Resumable);
            }
            frame = stream.next(), if conn.pending.len() < max_pending => match frame {
                Some(Ok(frame)) => {
                    heard = Instant::now();
                    Box::pin(on_frame(&mut conn, frame)).await
                }
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error as WsError;
                    if let WsError::Capacity(_) = e {
                        conn.fail(ErrorInfo::new(codes::MESSAGE_TOO_LARGE, format!(
                            "frame larger than maxFrameSize ({} bytes)", broker.config.limits.max_frame_size)));
                    } else {
                        conn.ending = Some(Ending::Resumable);
                    }
                }
                None => conn.ending = Some(Ending::Resumable),
            },
        }
    }
    Box::pin(finish(conn, writer_running.then_some(writer))).await;
}

/// Authenticates, resumes or creates the connection, and sends CONNECTED; on failure sends
/// ERROR and returns `None` (§4.2).
async fn handshake(
    broker: &Arc<Broker>,
    params: &ConnectParams,
    outbox: Outbox,
) -> Option<Connection> {
    let refuse = |error: ErrorInfo| {
        tracing::debug!(%error, "connection refused");
        outbox.finish_with(&ProtocolMessage {
            error: Some(error),
            ..ProtocolMessage::new(Action::Error)
        });
        None
    };
    if let Some(v) = &params.version {
        if !matches!(v.parse::<u32>(), Ok(1..=6)) {
            return refuse(ErrorInfo::new(
                codes::BAD_REQUEST,
                format!("unsupported protocol version {v}"),
            ));
        }
    }
    let credential = match (&params.key, &params.access_token) {
        (Some(key), _) => Credential::Key(key),
        (None, Some(token)) => Credential::Token(token),
        (None, None) => {
            return refuse(ErrorInfo::new(
                codes::NO_AUTH_METHOD,
                "no key or access_token given",
            ))
        }
    };
    let grant = match tokio::time::timeout(
        std::time::Duration::from_millis(broker.config.limits.handshake_timeout_ms),
        broker.authenticator.authenticate(credential),
    )
    .await
    {
        Ok(Ok(grant)) => grant,
        Ok(Err(e)) => return refuse(e),
        Err(_) => return refuse(ErrorInfo::new(codes::TIMEOUT, "authentication timed out")),
    };
    // A token inside its issuer's clock leeway but past `exp` would be asked to renew and
    // dropped at once; refuse it now so the client fetches a fresh one (§4.2).
    if grant.expires_at.is_some_and(|e| e <= now_ms()) {
        return refuse(ErrorInfo::new(codes::TOKEN_EXPIRED, "Token expired"));
    }
    let identity = match Identity::of_grant(&grant, params.client_id.as_deref()) {
        Ok(identity) => identity,
        Err(e) => return refuse(e),
    };
    let authority = Authority {
        identity,
        token: grant.token_stamp(),
        capability: grant.capability,
        expires_at: grant.expires_at,
    };
    let mut connect_error = None;
    let mut resumed = None;
    let other_client = || {
        ErrorInfo::new(
            codes::RESUME_FAILED,
            "Unable to recover connection: credentials are for another clientId",
        )
    };
    if let Some(key) = params.resume.as_ref().or(params.recover.as_ref()) {
        match broker.sessions.find(key) {
            Ok(session) if session.authority().identity.reported == authority.identity.reported => {
                resumed = Some(session);
            }
            Ok(_) => connect_error = Some(other_client()),
            // Not on this node: in a cluster, another node may have served it.
            Err(e) if e.code == codes::RESUME_FAILED && broker.cluster.is_some() => {
                let cluster = broker.cluster.as_ref().expect("checked");
                let reported = authority.identity.reported.as_deref();
                match cluster.claim(key, reported).await {
                    Ok(claimed) => {
                        let session =
                            broker
                                .sessions
                                .adopt(claimed.id, authority.clone(), claimed.echo);
                        for channel in &claimed.presence_channels {
                            session.used_presence(channel);
                        }
                        resumed = Some(session);
                    }
                    Err(e) => connect_error = Some(e),
                }
            }
            Err(e) => connect_error = Some(e),
        }
    }
    let session = match resumed {
        Some(session) => {
            broker
                .metrics
                .resumes
                .with_label_values(&["succeeded"])
                .inc();
            session.set_authority(authority.clone());
            session
        }
        None => {
            if connect_error.is_some() {
                broker.metrics.resumes.with_label_values(&["failed"]).inc();
            }
            broker.sessions.create(authority.clone(), params.echo)
        }
    };
    let socket_id = broker.next_socket_id();
    if let Some(old) = session.bind(socket_id, outbox.clone()) {
        old.close(None);
    }
    if let Some(cluster) = &broker.cluster {
        // Before CONNECTED hands out the new key, so that any node can resume with it.
        cluster.record(&session).await;
    }
    let mut conn = Connection {
        broker: broker.clone(),
        connection_id: Arc::from(session.id.as_str()),
        session,
        socket_id,
        outbox,
        authority,
        attached: HashMap::new(),
        pending: FuturesOrdered::new(),
        ending: None,
        renewal_requested: false,
    };
    conn.plan_renewal();
    conn.send(&conn.connected_message(connect_error));
    Some(conn)
}

fn renewal_deadline(conn: &Connection) -> Option<Instant> {
    let expires = conn.authority.expires_at?;
    let lead = conn.broker.config.connection.token_renewal_lead_ms as i64;
    let at = if conn.renewal_requested {
        expires
    } else {
        expires - lead
    };
    let wait = (at - now_ms()).max(0) as u64;
    Some(Instant::now() + std::time::Duration::from_millis(wait))
}

/// §4.7: ask for a new token before expiry; at expiry without one, DISCONNECTED 40142.
fn token_timer(conn: &mut Connection) {
    if !conn.renewal_requested {
        conn.renewal_requested = true;
        conn.send(&ProtocolMessage::new(Action::Auth));
        return;
    }
    if conn.authority.expires_at.is_some_and(|e| e <= now_ms()) {
        conn.outbox.close(Some(ProtocolMessage {
            error: Some(ErrorInfo::new(codes::TOKEN_EXPIRED, "Token expired")),
            ..ProtocolMessage::new(Action::Disconnected)
        }));
        conn.ending = Some(Ending::Resumable);
    }
}

async fn on_frame(conn: &mut Connection, frame: WsMessage) {
    let (format, bytes) = match &frame {
        WsMessage::Text(text) => (Format::Json, text.as_bytes()),
        WsMessage::Binary(bytes) => (Format::Msgpack, bytes.as_ref()),
        WsMessage::Close(_) => {
            conn.ending = Some(Ending::Resumable);
            return;
        }
        _ => return,
    };
    conn.broker.metrics.bytes_in.inc_by(bytes.len() as u64);
    match protocol::decode(format, bytes) {
        Ok(message) => actions::dispatch(conn, message).await,
        Err(e) => actions::undecodable(conn, format, bytes, &e),
    }
}

/// Cleans up after the read loop: detach every channel from this socket, then either forget
/// the connection (CLOSE) or keep it for `connectionStateTtl` so the client can resume.
async fn finish(conn: Connection, writer: Option<tokio::task::JoinHandle<outbox::WriterEnd>>) {
    let Connection {
        broker,
        session,
        connection_id,
        socket_id,
        outbox,
        attached,
        ending,
        ..
    } = conn;
    outbox.close(None);
    for channel in attached.keys() {
        let _ = broker
            .channels
            .send(
                channel,
                Command::Detach {
                    connection_id: connection_id.clone(),
                    socket_id,
                    reply: None,
                    leave_presence: ending == Some(Ending::Closed),
                },
            )
            .await;
    }
    broker.metrics.attached_channels.sub(attached.len() as i64);
    // Members may sit on channels this socket never re-attached after a resume.
    let mut presence_channels = session.presence_channels();
    presence_channels.retain(|c| !attached.contains_key(c));
    if ending == Some(Ending::Closed) {
        session.close();
        broker.sessions.remove(&session.id);
        if let Some(cluster) = &broker.cluster {
            cluster.forget(&session.id).await;
        }
        broker
            .channels
            .leave_everywhere(&connection_id, &presence_channels)
            .await;
    }
    if let Some(generation) = session.unbind(socket_id) {
        let mut channels: Vec<String> = attached.into_keys().collect();
        channels.extend(presence_channels);
        leave_presence_later(&broker, &session, generation, channels);
        broker
            .sessions
            .expire_later(session, generation, broker.config.connection_state_ttl());
    }
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    broker.metrics.connections.dec();
}

/// §6.6: the members of an abruptly dropped connection leave after the grace period unless it
/// has resumed by then; a resume within it causes no presence event at all.
fn leave_presence_later(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    generation: u64,
    channels: Vec<String>,
) {
    let Some(guard) = broker.track_task() else {
        return;
    };
    let grace = std::time::Duration::from_millis(broker.config.presence.leave_grace_ms);
    let (broker, session) = (broker.clone(), session.clone());
    let mut shutdown = broker.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        }
        if !session.unbound_since(generation) {
            return;
        }
        let connection_id: Arc<str> = Arc::from(session.id.as_str());
        broker
            .channels
            .leave_everywhere(&connection_id, channels)
            .await;
    });
}
