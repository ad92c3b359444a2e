//! The HTTP call to the moderation endpoint: one POST of JSON, bounded in time (the whole
//! exchange, body included) and in the size of the answer read. The only place the broker's
//! publish path uses reqwest; what the answer means is `moderation/mod.rs`'s.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// The largest answer read from the endpoint; a verdict is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Why the endpoint gave no answer to read.
#[derive(Debug)]
pub enum Failure {
    /// No complete answer within `timeout_ms`.
    Timeout,
    /// The request could not be sent or the answer not read.
    Unreachable(reqwest::Error),
    /// An answer other than 2xx.
    Status(u16),
    /// A 2xx answer that is no verdict (not the JSON of the contract, or too large).
    BadAnswer,
}

impl Failure {
    /// The reason as the refused publisher is told it: no URL, no internals.
    pub fn reason(&self) -> String {
        match self {
            Failure::Timeout => "timeout".to_owned(),
            Failure::Unreachable(_) => "unreachable".to_owned(),
            Failure::Status(status) => format!("status {status}"),
            Failure::BadAnswer => "invalid answer".to_owned(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            other => f.write_str(&other.reason()),
        }
    }
}

/// The operator's moderation endpoint.
pub struct Endpoint {
    client: reqwest::Client,
    url: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Endpoint {
    /// An endpoint at `url`, called with `Authorization: Bearer <secret>` when a secret is
    /// given, each call allowed `timeout_ms`.
    pub fn new(url: &str, secret: Option<&str>, timeout_ms: u64) -> Result<Endpoint, String> {
        let client = reqwest::Client::builder()
            // A redirect would replay the body elsewhere, with or without the secret.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("moderation: cannot make an HTTP client: {e}"))?;
        let authorization = secret
            .map(|s| {
                let mut value = HeaderValue::try_from(format!("Bearer {s}"))
                    .map_err(|_| "moderation: secret is not a valid header value".to_owned())?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        Ok(Endpoint {
            client,
            url: url.to_owned(),
            authorization,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// POSTs `body` (JSON) and returns the 2xx answer's body.
    pub async fn call(&self, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut response = request.send().await.map_err(Failure::Unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::Unreachable)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(Failure::BadAnswer);
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }
}
