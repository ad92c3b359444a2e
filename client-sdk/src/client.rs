//! [`Client`]: a cheap `Clone` handle over one connection task, and its [`ClientBuilder`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::Format;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::Credentials;
use crate::channel::Channel;
use crate::driver::{Command, Driver};
use crate::error::Error;
use crate::options::{Auth, Options, TokenFuture};
use crate::{ConnectionState, Message};

pub(crate) struct Shared {
    pub(crate) options: Arc<Options>,
    pub(crate) credentials: Arc<Credentials>,
    pub(crate) http: reqwest::Client,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) connection: watch::Receiver<Option<(String, Option<String>)>>,
    pub(crate) reason: watch::Receiver<Option<Error>>,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A realtime client. Cloning is cheap; every clone shares one connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    options: Options,
}

impl ClientBuilder {
    /// Authenticate with an API key `name:secret`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.options.auth = Some(Auth::Key(key.into()));
        self
    }

    /// Authenticate with a fixed token (an Ably JWT, a broker token, an Auth0 token).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options.auth = Some(Auth::Token(token.into()));
        self
    }

    /// Fetch tokens from `url` (GET), e.g. the broker's `/api/auth/token`.
    pub fn auth_url(mut self, url: impl Into<String>) -> Self {
        self.options.auth = Some(Auth::AuthUrl {
            url: url.into(),
            headers: Vec::new(),
        });
        self
    }

    /// Adds a header to auth URL requests, e.g. `("Authorization", "Bearer …")`.
    pub fn auth_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(Auth::AuthUrl { headers, .. }) = &mut self.options.auth {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// Get a token from `callback` whenever one is needed.
    pub fn auth_callback<F, Fut>(mut self, callback: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, Error>> + Send + 'static,
    {
        self.options.auth = Some(Auth::Callback(Arc::new(move || -> TokenFuture {
            Box::pin(callback())
        })));
        self
    }

    /// Connect as this clientId (with a key or a wildcard token). Default: none.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.options.client_id = Some(client_id.into());
        self
    }

    /// Wire format. Default msgpack.
    pub fn format(mut self, format: Format) -> Self {
        self.options.format = format;
        self
    }

    /// Receive own messages. Default true.
    pub fn echo(mut self, echo: bool) -> Self {
        self.options.echo = echo;
        self
    }

    /// First wait before a reconnect attempt after the immediate one. Default 2 s.
    pub fn disconnected_retry(mut self, delay: Duration) -> Self {
        self.options.disconnected_retry = delay;
        self
    }

    /// Messages each subscription buffers before dropping. Default 1024.
    pub fn subscription_buffer(mut self, size: usize) -> Self {
        self.options.subscription_buffer = size.max(1);
        self
    }

    /// Time limit of ACKs, attaches and HTTP requests. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// Starts the connection and waits for the first attempt: connected, or the reason it
    /// was refused (e.g. 40101 for a bad key) or could not be made. Use
    /// [`ClientBuilder::start`] to keep retrying in the background instead.
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.start()?;
        let mut state = client.connection_state();
        let reached = state
            .wait_for(|s| {
                !matches!(
                    s,
                    ConnectionState::Initialized | ConnectionState::Connecting
                )
            })
            .await
            .map(|s| *s)
            .map_err(|_| Error::Closed)?;
        if reached == ConnectionState::Connected {
            return Ok(client);
        }
        let reason = client.shared.reason.borrow().clone();
        client.close().await;
        Err(reason.unwrap_or_else(|| Error::Transport(format!("could not connect ({reached:?})"))))
    }

    /// Starts the connection without waiting; publishes queue until it is up.
    pub fn start(self) -> Result<Client, Error> {
        let auth = self.options.auth.clone().ok_or_else(|| {
            Error::Failed("no credentials: use key, token, auth_url or auth_callback".to_owned())
        })?;
        let http = reqwest::Client::builder()
            .timeout(self.options.request_timeout)
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        let options = Arc::new(self.options);
        let credentials = Arc::new(Credentials::new(auth, http.clone()));
        let (commands, receiver) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Initialized);
        let (connection_tx, connection) = watch::channel(None);
        let (reason_tx, reason) = watch::channel(None);
        let driver = Driver::new(
            options.clone(),
            credentials.clone(),
            receiver,
            state_tx,
            connection_tx,
            reason_tx,
        );
        tokio::spawn(driver.run());
        Ok(Client {
            shared: Arc::new(Shared {
                options,
                credentials,
                http,
                commands,
                state,
                connection,
                reason,
                next_id: AtomicU64::new(1),
            }),
        })
    }
}

impl Client {
    /// A builder for a client of the broker at `endpoint` (e.g. `http://127.0.0.1:8080`).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            options: Options {
                endpoint: endpoint.into(),
                ..Options::default()
            },
        }
    }

    /// The connection state, as a watch: read it now or await changes.
    pub fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// The connectionId, once connected.
    pub fn connection_id(&self) -> Option<String> {
        self.shared
            .connection
            .borrow()
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// The clientId the server gave this connection, once connected.
    pub fn client_id(&self) -> Option<String> {
        self.shared
            .connection
            .borrow()
            .as_ref()
            .and_then(|(_, c)| c.clone())
    }

    /// A channel handle; nothing is sent until it is used.
    pub fn channel(&self, name: impl Into<String>) -> Channel {
        Channel::new(self.clone(), name.into())
    }

    /// Attaches `name` and calls `on_message` for every message on it, like React's
    /// `useChannel(name, callback)`; returns the channel to publish on. The callback runs on
    /// its own task until the client closes.
    pub async fn use_channel<F>(
        &self,
        name: impl Into<String>,
        mut on_message: F,
    ) -> Result<Channel, Error>
    where
        F: FnMut(Message) + Send + 'static,
    {
        let channel = self.channel(name);
        let mut subscription = channel.subscribe();
        channel.attach().await?;
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = subscription.next().await {
                on_message(message);
            }
        });
        Ok(channel)
    }

    /// Closes the connection (CLOSE, §4.5) and waits for the task to end.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.shared.send(Command::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }
}
