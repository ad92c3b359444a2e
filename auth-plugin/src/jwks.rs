//! The signing-key cache (habit 12 of `../shared/style.md`): keys from the issuer's JWKS,
//! scoped to that issuer, parsed once into verifying keys. A known `kid` never waits. An
//! unknown `kid` triggers at most one fetch at a time (single-flight) and at most one per
//! cooldown, since anyone can forge a `kid`. A failed or garbage fetch keeps the last good
//! keys. Fetches are capped in time and size; unusable keys (wrong type or use, weak
//! modulus, duplicate kid) are skipped, not fatal.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use tokio::sync::Mutex;

/// Keys kept from one JWKS at most.
const MAX_KEYS: usize = 32;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_MODULUS_BYTES: usize = 256;

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The issuer's key set has no such `kid` (after a refresh, or within the cooldown).
    #[error("no signing key with kid {0:?}")]
    UnknownKid(String),
    /// No key set could be fetched yet.
    #[error("signing keys unavailable: {0}")]
    Unavailable(String),
}

/// What the cache knows about its fetches, for status reporting.
#[derive(Debug, Clone, Default)]
pub struct FetchState {
    /// When a fetch was last attempted.
    pub last_attempt: Option<Instant>,
    /// When a fetch last succeeded.
    pub last_success: Option<Instant>,
    /// The last fetch's error, if it failed.
    pub last_error: Option<String>,
    /// Fetches attempted.
    pub fetches: u64,
}

/// The cache of one issuer's keys.
pub struct JwksCache {
    url: String,
    allowed_algs: Vec<String>,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    state: Mutex<FetchState>,
    http: reqwest::Client,
    ttl: Duration,
    cooldown: Duration,
    max_bytes: usize,
}

impl JwksCache {
    /// A cache for the key set at `url`, accepting keys for `allowed_algs`.
    pub fn new(
        url: String,
        allowed_algs: Vec<String>,
        ttl: Duration,
        cooldown: Duration,
        timeout: Duration,
        max_bytes: usize,
    ) -> JwksCache {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain reqwest client builds");
        JwksCache {
            url,
            allowed_algs,
            keys: RwLock::new(Arc::new(HashMap::new())),
            state: Mutex::new(FetchState::default()),
            http,
            ttl,
            cooldown,
            max_bytes,
        }
    }

    /// The `kid`s currently trusted.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.keys.read().expect("keys lock").clone();
        let mut kids: Vec<String> = keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// A copy of the fetch bookkeeping.
    pub async fn state(&self) -> FetchState {
        self.state.lock().await.clone()
    }

    fn lookup(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().expect("keys lock").get(kid).cloned()
    }

    /// The key for `kid`, fetching the key set when the kid is unknown and the cooldown
    /// allows. Known kids never wait for a fetch.
    pub async fn key(self: &Arc<Self>, kid: &str) -> Result<DecodingKey, KeyError> {
        if let Some(key) = self.lookup(kid) {
            self.refresh_if_stale();
            return Ok(key);
        }
        // Single flight: whoever holds the lock fetches; the others then find the result.
        let mut state = self.state.lock().await;
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        let recently = state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.cooldown);
        if !recently {
            self.fetch(&mut state).await;
        }
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if state.last_success.is_none() {
            let why = state
                .last_error
                .clone()
                .unwrap_or_else(|| "not fetched yet".to_owned());
            return Err(KeyError::Unavailable(why));
        }
        Err(KeyError::UnknownKid(kid.to_owned()))
    }

    /// Fetches now unless a fetch happened within the cooldown (start-up, forced reload).
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.cooldown)
        {
            return;
        }
        self.fetch(&mut state).await;
    }

    /// After the TTL, refresh in the background so revoked keys drop out and rotated ones
    /// arrive without a token waiting for them.
    fn refresh_if_stale(self: &Arc<Self>) {
        let Ok(state) = self.state.try_lock() else {
            return;
        };
        let stale = state.last_success.is_none_or(|t| t.elapsed() > self.ttl)
            && state
                .last_attempt
                .is_none_or(|t| t.elapsed() > self.cooldown);
        drop(state);
        if stale {
            let cache = self.clone();
            tokio::spawn(async move { cache.refresh().await });
        }
    }

    async fn fetch(&self, state: &mut FetchState) {
        state.last_attempt = Some(Instant::now());
        state.fetches += 1;
        match self.download().await.and_then(|body| self.parse(&body)) {
            Ok(keys) => {
                tracing::info!(url = %self.url, kids = ?keys.keys().collect::<Vec<_>>(), "JWKS loaded");
                *self.keys.write().expect("keys lock") = Arc::new(keys);
                state.last_success = Some(Instant::now());
                state.last_error = None;
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                state.last_error = Some(e);
            }
        }
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(format!("body larger than {} bytes", self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Parses a key set, keeping only usable RSA signing keys. An empty result is an error,
    /// so a bad fetch never replaces good keys.
    fn parse(&self, body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
        // Parse entry by entry so one odd key does not sink the set.
        let raw: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let entries = raw
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no \"keys\" array")?;
        let mut keys = HashMap::new();
        let mut duplicates = Vec::new();
        for entry in entries.iter().take(MAX_KEYS) {
            let Ok(set) = serde_json::from_value::<JwkSet>(serde_json::json!({ "keys": [entry] }))
            else {
                continue;
            };
            let Some(jwk) = set.keys.into_iter().next() else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            if let Some(alg) = jwk.common.key_algorithm {
                if !self.allowed_algs.contains(&format!("{alg:?}")) {
                    continue;
                }
            }
            let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
                continue;
            };
            let modulus = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .unwrap_or_default();
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_MODULUS_BYTES {
                continue;
            }
            let Ok(key) = DecodingKey::from_rsa_components(&rsa.n, &rsa.e) else {
                continue;
            };
            if keys.insert(kid.clone(), key).is_some() {
                duplicates.push(kid);
            }
        }
        for kid in duplicates {
            keys.remove(&kid);
        }
        if keys.is_empty() {
            return Err("no usable signing keys".to_owned());
        }
        Ok(keys)
    }
}
