//! The before-publish moderation hook (`[moderation]` in `docs/configuration.md`): each
//! publish to a moderated channel is POSTed, as it will be stored, to the operator's endpoint,
//! which accepts or rejects it before it reaches the channel's sequencer. This module owns the
//! JSON contract, the channel filter, what a rejection or a failure answers, and the metric;
//! the HTTP call is `endpoint.rs`'s. Keeping a connection's publishes in msgSerial order while
//! reviews run is `actions/message.rs`'s, with the turns of `connection/session.rs`.

mod endpoint;

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::error::codes;
use protocol::{ErrorInfo, Message, ProtocolMessage};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::channel::service::CheckedPublish;
use crate::channel::{is_ephemeral, PublishOutcome};
use crate::config::{ModerationSettings, OnFailure};
use crate::metrics::Metrics;
use endpoint::{Endpoint, Failure};

/// The moderation hook of a broker whose configuration has a `[moderation] url`.
pub struct Moderation {
    endpoint: Endpoint,
    channels: Vec<String>,
    on_failure: OnFailure,
    timeout_ms: u64,
    metrics: Arc<Metrics>,
}

/// Where a publish came from, as the endpoint is told (`source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A MESSAGE on a WebSocket.
    Realtime,
    /// `POST /channels/{name}/messages` or `PATCH /channels/{name}/messages/{serial}`.
    Rest,
    /// The `@ably/chat` REST API: a send (R1) or an edit (R4).
    Chat,
}

/// The body POSTed to the endpoint.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    source: Source,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    messages: Vec<Message>,
}

/// The endpoint's answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    action: Decision,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Accept,
    Reject,
}

impl Moderation {
    /// The hook `settings` describe, or `None` when moderation is off. Fails when no HTTP
    /// client can be made (no TLS roots, for one).
    pub fn new(
        settings: &ModerationSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Moderation>, String> {
        let Some(url) = &settings.url else {
            return Ok(None);
        };
        let endpoint = Endpoint::new(url, settings.secret.as_deref(), settings.timeout_ms)?;
        Ok(Some(Moderation {
            endpoint,
            channels: settings.channels.clone(),
            on_failure: settings.on_failure,
            timeout_ms: settings.timeout_ms,
            metrics,
        }))
    }

    /// Whether `publish` goes to the endpoint: its channel matches the filter and it holds a
    /// message that would be stored with content. Ephemeral messages (typing, room reactions)
    /// are never stored and must not wait, and a delete takes content away: neither is
    /// reviewed.
    pub fn applies(&self, publish: &CheckedPublish) -> bool {
        self.moderates(publish.channel()) && publish.messages().iter().any(reviewed)
    }

    fn moderates(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|p| glob_matches(p, channel))
    }

    /// Asks the endpoint about `publish` (when [`Moderation::applies`]): `Ok` to store it,
    /// the refusal otherwise. `client_id` is the publisher's own, when it has one.
    pub async fn review(
        &self,
        publish: &CheckedPublish,
        source: Source,
        client_id: Option<&str>,
    ) -> Result<(), ErrorInfo> {
        if !self.applies(publish) {
            return Ok(());
        }
        let review = Review {
            source,
            channel: publish.channel(),
            connection_id: publish.connection_id(),
            client_id,
            messages: as_json(publish.messages()),
        };
        let body = serde_json::to_vec(&review)
            .map_err(|e| ErrorInfo::new(codes::INTERNAL, format!("moderation request: {e}")))?;
        let verdict = self.endpoint.call(body).await.and_then(|answer| {
            serde_json::from_slice::<Verdict>(&answer).map_err(|_| Failure::BadAnswer)
        });
        match verdict {
            Ok(v) if v.action == Decision::Accept => {
                self.count("accepted");
                Ok(())
            }
            Ok(v) => {
                self.count("rejected");
                Err(rejection(v))
            }
            Err(failure) => {
                self.count("failed");
                tracing::warn!(channel = publish.channel(), %failure, "moderation endpoint failed");
                match self.on_failure {
                    OnFailure::Accept => Ok(()),
                    OnFailure::Reject => Err(self.unavailable(&failure)),
                }
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .moderation_reviews
            .with_label_values(&[outcome])
            .inc();
    }

    /// The refusal of a publish the endpoint gave no verdict on, with `on_failure = "reject"`:
    /// 50003 when it did not answer in time, 50000 otherwise, with the reason in `detail`.
    fn unavailable(&self, failure: &Failure) -> ErrorInfo {
        let (code, message) = match failure {
            Failure::Timeout => (
                codes::TIMEOUT,
                format!(
                    "message not published: the moderation endpoint did not answer within {} ms",
                    self.timeout_ms
                ),
            ),
            _ => (
                codes::INTERNAL,
                "message not published: the moderation endpoint failed".to_owned(),
            ),
        };
        let detail = BTreeMap::from([("moderationFailure".to_owned(), failure.reason())]);
        ErrorInfo::new(code, message).with_detail(detail)
    }
}

/// [`crate::channel::Channels::publish_and_wait`] behind the moderation hook, for REST and
/// chat publishes (which, one request each, need no ordering among themselves).
pub async fn publish_and_wait(
    broker: &Broker,
    publish: CheckedPublish,
    source: Source,
    client_id: Option<&str>,
) -> PublishOutcome {
    if let Some(moderation) = &broker.moderation {
        moderation.review(&publish, source, client_id).await?;
    }
    broker.channels.publish_and_wait(publish).await
}

/// Whether a message is one the endpoint sees (see [`Moderation::applies`]).
fn reviewed(message: &Message) -> bool {
    !is_ephemeral(message) && message.action != Some(Message::DELETE)
}

/// The reviewed messages as a JSON client would get them: binary data base64'd (§7.5).
fn as_json(messages: &[Message]) -> Vec<Message> {
    let frame = ProtocolMessage {
        messages: Some(messages.iter().filter(|m| reviewed(m)).cloned().collect()),
        ..ProtocolMessage::new(protocol::Action::Message)
    };
    frame.for_json().into_owned().messages.unwrap_or_default()
}

/// The refusal a reject verdict gives: its code when it is a 422xx one (42211, 42213…), else
/// 42213, with its message and its `detail` (non-string values as their JSON text).
fn rejection(verdict: Verdict) -> ErrorInfo {
    let code = verdict
        .code
        .filter(|c| (42200..42300).contains(c))
        .unwrap_or(codes::REJECTED_BY_MODERATION);
    let message = verdict
        .message
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "message rejected by moderation".to_owned());
    let detail = verdict
        .detail
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    ErrorInfo::new(code, message).with_detail(detail)
}

/// Whether `name` matches `pattern`, where each `*` stands for any run of characters.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_prefixes_suffixes_and_middles() {
        assert!(glob_matches("room", "room"));
        assert!(!glob_matches("room", "room2"));
        assert!(glob_matches("chat:*", "chat:lobby"));
        assert!(!glob_matches("chat:*", "news:lobby"));
        assert!(glob_matches("*::$chat", "lobby::$chat"));
        assert!(!glob_matches("*::$chat", "lobby"));
        assert!(glob_matches("a*b*c", "a-b-c"));
        assert!(!glob_matches("a*b*c", "a-c"));
        assert!(!glob_matches("ab*ba", "aba"));
        assert!(glob_matches("*", "anything"));
    }

    #[test]
    fn a_rejection_keeps_a_422_code_and_turns_detail_into_strings() {
        let verdict: Verdict = serde_json::from_str(
            r#"{"action":"reject","code":42211,"message":"no","detail":{"reason":"spam","score":0.9}}"#,
        )
        .unwrap();
        let error = rejection(verdict);
        assert_eq!((error.code, error.status_code), (42211, 422));
        assert_eq!(error.message, "no");
        let detail = error.detail.unwrap();
        assert_eq!(detail["reason"], "spam");
        assert_eq!(detail["score"], "0.9");
        let verdict: Verdict = serde_json::from_str(r#"{"action":"reject","code":40160}"#).unwrap();
        let error = rejection(verdict);
        assert_eq!((error.code, error.detail), (42213, None));
    }
}
