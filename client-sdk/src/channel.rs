//! [`Channel`]: publish, subscribe, presence and history on one channel.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use protocol::{Message, PresenceAction, PresenceMessage};
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::data::{decode_message, Payload};
use crate::driver::{Command, Outcome, Sink};
use crate::error::Error;

/// A handle to one channel of a [`Client`]. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    client: Client,
    name: Arc<str>,
}

impl Channel {
    pub(crate) fn new(client: Client, name: String) -> Channel {
        Channel {
            client,
            name: Arc::from(name),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.client.shared.send(command(reply))?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Attaches (§5.1); resolves on ATTACHED, or fails with the channel's error (e.g. 40160).
    pub async fn attach(&self) -> Result<(), Error> {
        let channel = self.name.to_string();
        self.request(|reply| Command::Attach { channel, reply })
            .await?
    }

    /// Detaches (§5.3); own presence members leave.
    pub async fn detach(&self) -> Result<(), Error> {
        let channel = self.name.to_string();
        self.request(|reply| Command::Detach { channel, reply })
            .await?
    }

    /// Publishes one message and resolves when the broker has stored it (ACK), with its
    /// serial; a NACK is an [`Error::Ably`] carrying the code (40160, 40009…).
    pub async fn publish(
        &self,
        name: impl Into<String>,
        data: impl Into<Payload>,
    ) -> Result<Option<String>, Error> {
        let (data, encoding) = data.into().into_wire();
        let message = Message {
            name: Some(name.into()),
            data,
            encoding,
            ..Default::default()
        };
        Ok(self
            .publish_messages(vec![message])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Publishes several messages in one ProtocolMessage; resolves with their serials.
    pub async fn publish_messages(&self, messages: Vec<Message>) -> Outcome {
        let channel = self.name.to_string();
        let timeout = self.client.shared.options.request_timeout;
        let answer = self.request(|reply| Command::Publish {
            channel,
            messages,
            reply,
        });
        // Queued publishes wait through reconnects; the timeout bounds one that never settles.
        match tokio::time::timeout(timeout * 6, answer).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Transport(
                "publish not acknowledged in time".to_owned(),
            )),
        }
    }

    /// Subscribes to every message. The stream ends when the client closes; dropping it
    /// unsubscribes. It does not attach: use [`Channel::attach`] (or [`Client::use_channel`]).
    pub fn subscribe(&self) -> Subscription<Message> {
        let (sender, receiver) = mpsc::channel(self.client.shared.options.subscription_buffer);
        let lagged = Arc::new(AtomicU64::new(0));
        let id = self.client.shared.next_id();
        let _ = self.client.shared.send(Command::Subscribe {
            channel: self.name.to_string(),
            id,
            sink: Sink {
                sender,
                lagged: lagged.clone(),
            },
        });
        Subscription::new(self.client.clone(), self.name.clone(), id, receiver, lagged)
    }

    /// Presence on this channel.
    pub fn presence(&self) -> Presence {
        Presence {
            channel: self.clone(),
        }
    }

    /// Reads the channel's history over REST (§9.1): newest first by default, so "the last
    /// 20, oldest first" is a backwards page of 20, reversed.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, Error> {
        let mut params = form_urlencoded::Serializer::new(String::new());
        params.append_pair(
            "direction",
            if query.forwards {
                "forwards"
            } else {
                "backwards"
            },
        );
        params.append_pair("limit", &query.limit.unwrap_or(100).to_string());
        if let Some(start) = query.start {
            params.append_pair("start", &start.to_string());
        }
        if let Some(end) = query.end {
            params.append_pair("end", &end.to_string());
        }
        HistoryPage::fetch(self.clone(), params.finish()).await
    }
}

/// Which messages [`Channel::history`] returns.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Oldest first (default: newest first).
    pub forwards: bool,
    /// Page size, 1 to 1000. Default 100.
    pub limit: Option<usize>,
    /// Earliest timestamp, ms.
    pub start: Option<i64>,
    /// Latest timestamp, ms.
    pub end: Option<i64>,
}

/// One page of history.
#[derive(Clone)]
pub struct HistoryPage {
    /// The messages of this page.
    pub items: Vec<Message>,
    channel: Channel,
    next: Option<String>,
}

impl std::fmt::Debug for HistoryPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryPage")
            .field("items", &self.items)
            .field("has_next", &self.next.is_some())
            .finish()
    }
}

impl HistoryPage {
    async fn fetch(channel: Channel, query: String) -> Result<HistoryPage, Error> {
        let shared = &channel.client.shared;
        let name: String = percent_encoding::utf8_percent_encode(
            &channel.name,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .collect();
        let url = format!(
            "{}/channels/{name}/messages?{query}",
            shared.options.rest_base()
        );
        let response = shared
            .http
            .get(url)
            .header("authorization", shared.credentials.header().await?)
            .header("accept", "application/json")
            .header("x-ably-version", "6")
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let next = response
            .headers()
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find(|l| l.contains("rel=\"next\""))
            .and_then(|l| Some(l[l.find('?')? + 1..l.find('>')?].to_owned()));
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        if !status.is_success() {
            let error = serde_json::from_value(body["error"].clone())
                .map_err(|_| Error::Transport(format!("history answered {status}")))?;
            return Err(Error::Ably(error));
        }
        let mut items: Vec<Message> =
            serde_json::from_value(body).map_err(|e| Error::Transport(e.to_string()))?;
        items.iter_mut().for_each(decode_message);
        Ok(HistoryPage {
            items,
            channel,
            next,
        })
    }

    /// True when another page follows.
    pub fn has_next(&self) -> bool {
        self.next.is_some()
    }

    /// The next page, if any.
    pub async fn next(&self) -> Result<Option<HistoryPage>, Error> {
        match &self.next {
            Some(query) => Ok(Some(
                HistoryPage::fetch(self.channel.clone(), query.clone()).await?,
            )),
            None => Ok(None),
        }
    }
}

/// A stream of a channel's messages or presence events; unsubscribes when dropped.
pub struct Subscription<T> {
    client: Client,
    channel: Arc<str>,
    id: u64,
    receiver: mpsc::Receiver<T>,
    lagged: Arc<AtomicU64>,
}

impl<T> Subscription<T> {
    fn new(
        client: Client,
        channel: Arc<str>,
        id: u64,
        receiver: mpsc::Receiver<T>,
        lagged: Arc<AtomicU64>,
    ) -> Self {
        Subscription {
            client,
            channel,
            id,
            receiver,
            lagged,
        }
    }

    /// How many items were dropped because this subscription's buffer was full.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl<T> Stream for Subscription<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.receiver.poll_recv(cx)
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let _ = self.client.shared.send(Command::Unsubscribe {
            channel: self.channel.to_string(),
            id: self.id,
        });
    }
}

/// Presence on one channel (§6).
pub struct Presence {
    channel: Channel,
}

impl Presence {
    async fn act(
        &self,
        action: PresenceAction,
        client_id: Option<String>,
        data: Payload,
    ) -> Result<(), Error> {
        let (data, encoding) = data.into_wire();
        let item = PresenceMessage {
            action,
            client_id,
            data,
            encoding,
            ..Default::default()
        };
        let channel = self.channel.name.to_string();
        self.channel
            .request(|reply| Command::Presence {
                channel,
                item,
                reply,
            })
            .await??;
        Ok(())
    }

    /// Enters with the connection's clientId (attaching if needed); resolves on ACK.
    pub async fn enter(&self, data: impl Into<Payload>) -> Result<(), Error> {
        self.act(PresenceAction::Enter, None, data.into()).await
    }

    /// Updates this client's data.
    pub async fn update(&self, data: impl Into<Payload>) -> Result<(), Error> {
        self.act(PresenceAction::Update, None, data.into()).await
    }

    /// Leaves.
    pub async fn leave(&self, data: impl Into<Payload>) -> Result<(), Error> {
        self.act(PresenceAction::Leave, None, data.into()).await
    }

    /// Enters on behalf of `client_id` (key or wildcard connections).
    pub async fn enter_client(
        &self,
        client_id: impl Into<String>,
        data: impl Into<Payload>,
    ) -> Result<(), Error> {
        self.act(PresenceAction::Enter, Some(client_id.into()), data.into())
            .await
    }

    /// Leaves on behalf of `client_id`.
    pub async fn leave_client(
        &self,
        client_id: impl Into<String>,
        data: impl Into<Payload>,
    ) -> Result<(), Error> {
        self.act(PresenceAction::Leave, Some(client_id.into()), data.into())
            .await
    }

    /// The current members, after the attach's SYNC has completed (§6.7).
    pub async fn get(&self) -> Result<Vec<PresenceMessage>, Error> {
        let channel = self.channel.name.to_string();
        self.channel
            .request(|reply| Command::PresenceGet { channel, reply })
            .await?
    }

    /// Every presence event (enter, update, leave). Dropping the stream unsubscribes.
    pub fn subscribe(&self) -> Subscription<PresenceMessage> {
        let shared = &self.channel.client.shared;
        let (sender, receiver) = mpsc::channel(shared.options.subscription_buffer);
        let lagged = Arc::new(AtomicU64::new(0));
        let id = shared.next_id();
        let _ = shared.send(Command::SubscribePresence {
            channel: self.channel.name.to_string(),
            id,
            sink: Sink {
                sender,
                lagged: lagged.clone(),
            },
        });
        Subscription::new(
            self.channel.client.clone(),
            self.channel.name.clone(),
            id,
            receiver,
            lagged,
        )
    }
}
