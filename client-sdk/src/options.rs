//! Client options and the builder (habit 14 of `../shared/style.md`): each setter states its
//! default, and every default lives in [`Options::default`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use protocol::Format;

use crate::error::Error;

/// A boxed future returning a token string.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// How the client authenticates.
#[derive(Clone)]
pub enum Auth {
    /// An API key `name:secret` (trusted; may act as any clientId).
    Key(String),
    /// A fixed token (an Ably JWT, a broker token, or an Auth0 token). It cannot be renewed.
    Token(String),
    /// GET this URL with these headers; the answer is TokenDetails JSON or a plain token.
    AuthUrl {
        /// The URL.
        url: String,
        /// Extra request headers, e.g. `Authorization: Bearer …`.
        headers: Vec<(String, String)>,
    },
    /// Call this to get a token, whenever one is needed (connect, renewal, token errors).
    Callback(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Key(k) => write!(f, "Key({}:…)", k.split(':').next().unwrap_or("")),
            Auth::Token(_) => f.write_str("Token(…)"),
            Auth::AuthUrl { url, .. } => write!(f, "AuthUrl({url})"),
            Auth::Callback(_) => f.write_str("Callback"),
        }
    }
}

/// Everything that shapes a client.
#[derive(Clone, Debug)]
pub struct Options {
    /// Base URL of the broker, `http://host:port` or `https://…`.
    pub endpoint: String,
    /// Credentials.
    pub auth: Option<Auth>,
    /// The clientId to connect as (with a key or a wildcard token).
    pub client_id: Option<String>,
    /// Wire format. Default msgpack.
    pub format: Format,
    /// Receive own messages. Default true.
    pub echo: bool,
    /// First wait before reconnecting after a drop that follows a connection (the first retry
    /// is immediate). Default 2 s, with backoff and jitter.
    pub disconnected_retry: Duration,
    /// Wait between attempts once suspended. Default 15 s.
    pub suspended_retry: Duration,
    /// Messages a subscription buffers before it starts dropping (counted by
    /// [`crate::Subscription::lagged`]). Default 1024.
    pub subscription_buffer: usize,
    /// How long an ACK, an attach or an HTTP request may take. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoint: "http://127.0.0.1:8080".to_owned(),
            auth: None,
            client_id: None,
            format: Format::Msgpack,
            echo: true,
            disconnected_retry: Duration::from_secs(2),
            suspended_retry: Duration::from_secs(15),
            subscription_buffer: 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// The WebSocket URL base (`ws://…/`).
    pub fn websocket_base(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/")
        } else {
            format!("ws://{base}/")
        }
    }

    /// The REST base URL (`http://…`).
    pub fn rest_base(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.starts_with("http://") || base.starts_with("https://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        }
    }
}
