//! Getting credentials: the query parameter for the WebSocket, the `Authorization` header for
//! REST, and tokens from an auth URL or callback (§8.4 of `../shared/ably-protocol.md`). The
//! last token is kept so REST calls and reconnects reuse it until it is refused.

use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::Error;
use crate::options::Auth;

/// Credentials plus the current token.
pub(crate) struct Credentials {
    auth: Auth,
    http: reqwest::Client,
    token: Mutex<Option<String>>,
}

impl Credentials {
    pub(crate) fn new(auth: Auth, http: reqwest::Client) -> Credentials {
        let token = match &auth {
            Auth::Token(t) => Some(t.clone()),
            _ => None,
        };
        Credentials {
            auth,
            http,
            token: Mutex::new(token),
        }
    }

    /// True when a new token can be had (auth URL or callback).
    pub(crate) fn renewable(&self) -> bool {
        matches!(self.auth, Auth::AuthUrl { .. } | Auth::Callback(_))
    }

    /// The WebSocket query parameter: `key=…` or `access_token=…`.
    pub(crate) async fn query_param(&self, renew: bool) -> Result<(&'static str, String), Error> {
        match &self.auth {
            Auth::Key(key) => Ok(("key", key.clone())),
            _ => Ok(("access_token", self.token(renew).await?)),
        }
    }

    /// The REST `Authorization` header value.
    pub(crate) async fn header(&self) -> Result<String, Error> {
        match &self.auth {
            Auth::Key(key) => Ok(format!("Basic {}", STANDARD.encode(key))),
            _ => Ok(format!(
                "Bearer {}",
                STANDARD.encode(self.token(false).await?)
            )),
        }
    }

    /// The current token, fetching one when there is none or `renew` is set.
    pub(crate) async fn token(&self, renew: bool) -> Result<String, Error> {
        if !renew || !self.renewable() {
            if let Some(token) = self.token.lock().expect("token lock").clone() {
                return Ok(token);
            }
        }
        let token = match &self.auth {
            Auth::Key(_) => return Err(Error::Failed("a key has no token".to_owned())),
            Auth::Token(t) => t.clone(),
            Auth::Callback(callback) => callback().await?,
            Auth::AuthUrl { url, headers } => self.fetch_from_url(url, headers).await?,
        };
        if token.trim().is_empty() {
            return Err(Error::Failed(
                "the auth source returned an empty token".to_owned(),
            ));
        }
        *self.token.lock().expect("token lock") = Some(token.clone());
        Ok(token)
    }

    async fn fetch_from_url(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<String, Error> {
        let mut request = self
            .http
            .get(url)
            .header("accept", "application/json, text/plain");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        let body = response
            .text()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        if !status.is_success() {
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::from_value(v["error"].clone()).ok());
            return Err(match error {
                Some(e) => Error::Ably(e),
                None => Error::Transport(format!("auth URL answered {status}")),
            });
        }
        if json {
            let details: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| Error::Transport(e.to_string()))?;
            return details["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Transport("auth URL JSON has no token".to_owned()));
        }
        Ok(body.trim().to_owned())
    }
}
