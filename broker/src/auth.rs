//! The authenticator seam (§8): turns the credential a client presents (an API key, an Ably
//! JWT, or a token issued by `requestToken`) into a [`Grant`] — key, clientId, capability and
//! expiry. [`Authenticator`] is the trait the connection and REST layers call; [`KeyAuthenticator`]
//! implements it for API keys and HS256 Ably JWTs. Tokens issued by `requestToken` are Ably JWTs
//! signed with the key's secret, so they need no server-side state. Identity rules of §8.6
//! live in [`Identity`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use protocol::error::codes;
use protocol::{Capability, ErrorInfo, UserClaims};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::KeyConfig;

/// A boxed future, for the object-safe async methods of [`Authenticator`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// `keyName:secret` (WebSocket `key=`, REST Basic).
    Key(&'a str),
    /// A token string (WebSocket `access_token=`, REST Bearer).
    Token(&'a str),
}

/// Who the client may act as, as its credential says (§8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIdClaim {
    /// An API key: trusted to act as any clientId.
    Any,
    /// A token without clientId: anonymous.
    None,
    /// A token with clientId `*`.
    Wildcard,
    /// A token for exactly this clientId.
    Exactly(String),
}

/// The result of authenticating a credential.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The key that issued or is the credential.
    pub key_name: String,
    /// Whom the client may act as.
    pub client_id: ClientIdClaim,
    /// What it may do.
    pub capability: Capability,
    /// When the credential expires (ms since the epoch), for tokens.
    pub expires_at: Option<i64>,
    /// When a token was issued (ms since the epoch, from its `iat`), for revocation.
    pub issued_at: Option<i64>,
    /// The token's user claims by channel (`../shared/ably-chat.md` §5.10); none for a key.
    pub user_claims: UserClaims,
}

/// The key name of grants from the Auth0 plugin: no key of the broker's signed those tokens,
/// and the space keeps it apart from every configured key name (which has no whitespace).
pub const PLUGIN_KEY_NAME: &str = "auth0 plugin";

/// What a revocation looks at in a token the broker's keys signed: the key, the clientId the
/// token names (not the one a wildcard token connects as) and the issue time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStamp {
    /// The key that signed the token.
    pub key_name: String,
    /// The token's clientId claim, `*` for a wildcard token.
    pub client_id: Option<String>,
    /// When it was issued (ms), when the token says.
    pub issued_at: Option<i64>,
}

impl Grant {
    /// The stamp of a token signed by one of the broker's keys; `None` for an API key itself
    /// and for Auth0 tokens (a deleted user's are refused by the plugin instead).
    pub fn token_stamp(&self) -> Option<TokenStamp> {
        let client_id = match &self.client_id {
            ClientIdClaim::Any => return None,
            ClientIdClaim::None => None,
            ClientIdClaim::Wildcard => Some("*".to_owned()),
            ClientIdClaim::Exactly(id) => Some(id.clone()),
        };
        if self.key_name == PLUGIN_KEY_NAME {
            return None;
        }
        Some(TokenStamp {
            key_name: self.key_name.clone(),
            client_id,
            issued_at: self.issued_at,
        })
    }
}

/// Verifies credentials. The broker core only sees this trait; identity providers (API keys
/// here, Auth0 in the auth plugin) implement it.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `credential`, or says why not with an Ably error (40101, 4014x…).
    fn authenticate<'a>(
        &'a self,
        credential: Credential<'a>,
    ) -> BoxFuture<'a, Result<Grant, ErrorInfo>>;
}

/// The identity of a connection or request after combining the credential with a requested
/// clientId (§8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The clientId reported in `connectionDetails.clientId` (`*` for a wildcard).
    pub reported: Option<String>,
    /// The clientId given to messages that carry none.
    pub default: Option<String>,
    /// Whether messages may carry any clientId.
    pub any: bool,
    /// The credential's user claims, which the server sets as `extras.userClaim` on what
    /// this identity publishes on their channels (§5.10 of `../shared/ably-chat.md`).
    pub user_claims: UserClaims,
}

impl Identity {
    /// The identity `grant` gives a client that asked for `requested`: the clientId rules of
    /// [`Identity::resolve`], and the grant's user claims.
    pub fn of_grant(grant: &Grant, requested: Option<&str>) -> Result<Identity, ErrorInfo> {
        let mut identity = Identity::resolve(&grant.client_id, requested)?;
        identity.user_claims = grant.user_claims.clone();
        Ok(identity)
    }

    /// The user claim of this identity for `channel`, which the server sets as
    /// `extras.userClaim` on its messages, presence items and annotations there.
    pub fn user_claim(&self, channel: &str) -> Option<&str> {
        self.user_claims.get(channel)
    }

    /// Combines a clientId claim with the `clientId` the client asked for (no user claims;
    /// see [`Identity::of_grant`]).
    pub fn resolve(claim: &ClientIdClaim, requested: Option<&str>) -> Result<Identity, ErrorInfo> {
        let requested = requested.filter(|c| !c.is_empty());
        if requested == Some("*") {
            return Err(ErrorInfo::new(
                codes::INVALID_CLIENT_ID,
                "\"*\" is not a valid clientId",
            ));
        }
        let owned = |c: Option<&str>| c.map(str::to_owned);
        Ok(match claim {
            ClientIdClaim::Any => Identity {
                reported: owned(requested),
                default: owned(requested),
                any: true,
                user_claims: UserClaims::default(),
            },
            ClientIdClaim::Wildcard => match requested {
                Some(c) => Identity {
                    reported: Some(c.to_owned()),
                    default: Some(c.to_owned()),
                    any: false,
                    user_claims: UserClaims::default(),
                },
                None => Identity {
                    reported: Some("*".to_owned()),
                    default: None,
                    any: true,
                    user_claims: UserClaims::default(),
                },
            },
            ClientIdClaim::Exactly(id) => {
                if requested.is_some_and(|c| c != id) {
                    return Err(ErrorInfo::new(
                        codes::INCOMPATIBLE_CREDENTIALS,
                        format!("clientId mismatch: the token is for {id:?}"),
                    ));
                }
                Identity {
                    reported: Some(id.clone()),
                    default: Some(id.clone()),
                    any: false,
                    user_claims: UserClaims::default(),
                }
            }
            ClientIdClaim::None => {
                if requested.is_some() {
                    return Err(ErrorInfo::new(
                        codes::INCOMPATIBLE_CREDENTIALS,
                        "clientId given but the token has none",
                    ));
                }
                Identity {
                    reported: None,
                    default: None,
                    any: false,
                    user_claims: UserClaims::default(),
                }
            }
        })
    }

    /// The clientId a message is published with, or 40012 when it may not carry `given`.
    pub fn message_client_id(&self, given: Option<&str>) -> Result<Option<String>, ErrorInfo> {
        match given.filter(|c| !c.is_empty()) {
            None => Ok(self.default.clone()),
            Some("*") => Err(ErrorInfo::new(
                codes::INVALID_CLIENT_ID,
                "\"*\" is not a valid clientId",
            )),
            Some(c) if self.any || self.default.as_deref() == Some(c) => Ok(Some(c.to_owned())),
            Some(c) => Err(ErrorInfo::new(
                codes::INVALID_CLIENT_ID,
                format!("mismatched clientId {c:?} for this connection"),
            )),
        }
    }
}

/// Whom a token is issued to: its clientId and the user claims it carries.
struct Holder<'a> {
    client_id: Option<&'a str>,
    user_claims: &'a UserClaims,
}

struct Key {
    secret: String,
    capability: Capability,
}

/// Authenticates API keys and HS256 Ably JWTs, and issues tokens for `requestToken`.
pub struct KeyAuthenticator {
    keys: HashMap<String, Key>,
    nonces: Mutex<HashMap<String, i64>>,
}

/// How long a token request's timestamp may be off, and how long its nonce is remembered.
const TOKEN_REQUEST_WINDOW_MS: i64 = 120_000;
/// Most nonces remembered at once; beyond it token requests are refused (42910).
const MAX_NONCES: usize = 100_000;
/// Default and largest token lifetime (§8.3).
const DEFAULT_TTL_MS: i64 = 3_600_000;
const MAX_TTL_MS: i64 = 86_400_000;

/// A signed token request (§8.3).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    /// The key the request is signed with.
    pub key_name: Option<String>,
    /// Lifetime in ms (number or numeric string).
    #[serde(default)]
    pub ttl: Option<serde_json::Value>,
    /// The requested capability, as JSON text (ably-js) or, leniently, as an object.
    #[serde(default)]
    pub capability: Option<serde_json::Value>,
    /// The requested clientId.
    #[serde(default)]
    pub client_id: Option<String>,
    /// ms since the epoch (number or numeric string).
    #[serde(default)]
    pub timestamp: Option<serde_json::Value>,
    /// A random string, used once.
    #[serde(default)]
    pub nonce: Option<String>,
    /// HMAC-SHA256 of the fields, base64.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The token the broker issues (§8.3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenDetails {
    /// The token: an Ably JWT signed with the key.
    pub token: String,
    /// The issuing key.
    pub key_name: String,
    /// Issue time, ms.
    pub issued: i64,
    /// Expiry, ms.
    pub expires: i64,
    /// Capability as JSON text.
    pub capability: String,
    /// The token's clientId, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct AblyClaims {
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default, rename = "x-ably-capability")]
    capability: Option<serde_json::Value>,
    #[serde(default, rename = "x-ably-clientId")]
    client_id: Option<String>,
    /// Every other claim, for the user claims (`ably.room.*`, `ably.channel.*`).
    #[serde(flatten)]
    others: serde_json::Map<String, serde_json::Value>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn hmac(secret: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn number(value: &Option<serde_json::Value>) -> Option<i64> {
    match value.as_ref()? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A token request's `ttl`: absent, null or empty means the default; otherwise a whole
/// number of ms (or its text) from 1 ms to 24 h (§8.3), else 40003 (HTTP 400).
fn requested_ttl(value: &Option<serde_json::Value>) -> Result<i64, ErrorInfo> {
    let ttl = match value {
        None | Some(serde_json::Value::Null) => return Ok(DEFAULT_TTL_MS),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Ok(DEFAULT_TTL_MS),
        Some(serde_json::Value::Number(_) | serde_json::Value::String(_)) => number(value),
        Some(_) => None,
    };
    match ttl {
        Some(ttl) if (1..=MAX_TTL_MS).contains(&ttl) => Ok(ttl),
        _ => Err(ErrorInfo::new(
            codes::INVALID_PARAMETER,
            "ttl must be a whole number of ms between 1 and 86400000 (24 h)",
        )),
    }
}

/// A token request's `capability`: `None` when absent or empty (the key's then), else the
/// parsed capability; anything but a capability object (or its text) is 40003 (HTTP 400).
fn requested_capability(
    value: &Option<serde_json::Value>,
) -> Result<Option<Capability>, ErrorInfo> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) if text.is_empty() => Ok(None),
        Some(serde_json::Value::String(text)) => Capability::parse(text).map(Some),
        Some(other) => Capability::from_value(other).map(Some),
    }
}

/// The text a token request's MAC covers for a field given as a string or a number.
fn signed_text(value: &Option<serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        None | Some(serde_json::Value::Null) => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The capability a token gets: what was asked for (all of the key's when nothing was)
/// intersected with the key's, written out (§8.7); 40160 when nothing is left.
fn granted(requested: Option<&Capability>, key: &Capability) -> Result<Capability, ErrorInfo> {
    let Some(requested) = requested else {
        return Ok(key.clone());
    };
    requested.intersection(key).ok_or_else(|| {
        ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            "the requested capability has nothing in common with the key's",
        )
    })
}

/// ms since the epoch from a JWT NumericDate (seconds, possibly fractional).
fn numeric_date_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

fn invalid_jwt(why: &str) -> ErrorInfo {
    ErrorInfo::new(codes::INVALID_JWT, format!("invalid token: {why}"))
}

impl KeyAuthenticator {
    /// Builds the authenticator from validated key configuration.
    pub fn new(keys: &[KeyConfig]) -> Result<KeyAuthenticator, String> {
        let mut map = HashMap::new();
        for k in keys {
            let capability = Capability::parse(&k.capability).map_err(|e| e.message)?;
            map.insert(
                k.name.clone(),
                Key {
                    secret: k.secret.clone(),
                    capability,
                },
            );
        }
        Ok(KeyAuthenticator {
            keys: map,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    fn authenticate_key(&self, full: &str) -> Result<Grant, ErrorInfo> {
        let unknown = || ErrorInfo::new(codes::INVALID_CREDENTIALS, "invalid key");
        let (name, secret) = full.split_once(':').ok_or_else(unknown)?;
        let key = self.keys.get(name).ok_or_else(unknown)?;
        if !bool::from(key.secret.as_bytes().ct_eq(secret.as_bytes())) {
            return Err(unknown());
        }
        Ok(Grant {
            key_name: name.to_owned(),
            client_id: ClientIdClaim::Any,
            capability: key.capability.clone(),
            expires_at: None,
            issued_at: None,
            user_claims: UserClaims::default(),
        })
    }

    /// Verifies an Ably JWT (§8.2) signed by one of the keys: signature, expiry, key; the
    /// capability is the token's intersected with the key's.
    pub fn authenticate_jwt(&self, token: &str) -> Result<Grant, ErrorInfo> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(ErrorInfo::new(
                codes::TOKEN_UNRECOGNISED,
                "token not recognised",
            ));
        }
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| invalid_jwt("segment is not base64url"))
        };
        let header: JwtHeader =
            serde_json::from_slice(&decode(parts[0])?).map_err(|_| invalid_jwt("bad header"))?;
        if header.alg != "HS256" {
            return Err(invalid_jwt("only HS256 Ably JWTs are accepted"));
        }
        let kid = header.kid.ok_or_else(|| invalid_jwt("no kid"))?;
        let key = self.keys.get(&kid).ok_or_else(|| {
            ErrorInfo::new(codes::INVALID_CREDENTIALS, format!("no key named {kid:?}"))
        })?;
        let signature = decode(parts[2])?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.secret.as_bytes()).expect("any key");
        mac.update(parts[0].as_bytes());
        mac.update(b".");
        mac.update(parts[1].as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| invalid_jwt("signature does not verify"))?;
        let claims: AblyClaims =
            serde_json::from_slice(&decode(parts[1])?).map_err(|_| invalid_jwt("bad claims"))?;
        let expires_at = numeric_date_ms(claims.exp.ok_or_else(|| invalid_jwt("no exp"))?);
        if expires_at <= now_ms() {
            return Err(ErrorInfo::new(codes::TOKEN_EXPIRED, "Token expired"));
        }
        let capability = match claims.capability {
            None => key.capability.clone(),
            Some(serde_json::Value::String(text)) => Capability::parse(&text)?,
            Some(value) => Capability::from_value(&value)?,
        }
        .intersect(key.capability.clone());
        let client_id = match claims.client_id.as_deref() {
            None | Some("") => ClientIdClaim::None,
            Some("*") => ClientIdClaim::Wildcard,
            Some(id) => ClientIdClaim::Exactly(id.to_owned()),
        };
        Ok(Grant {
            key_name: kid,
            client_id,
            capability,
            expires_at: Some(expires_at),
            issued_at: claims.iat.map(numeric_date_ms),
            user_claims: UserClaims::from_claims(&claims.others),
        })
    }

    /// Serves `POST /keys/{keyName}/requestToken` (§8.3): checks the request's MAC, or takes
    /// `basic` (a Basic-authenticated caller) for an unsigned one, and issues a token.
    pub fn request_token(
        &self,
        path_key: &str,
        request: &TokenRequest,
        basic: Option<&Grant>,
    ) -> Result<TokenDetails, ErrorInfo> {
        let key_name = request.key_name.as_deref().unwrap_or(path_key);
        if key_name != path_key {
            return Err(ErrorInfo::new(
                codes::INVALID_CREDENTIALS,
                "keyName does not match the path",
            ));
        }
        let key = self.keys.get(key_name).ok_or_else(|| {
            ErrorInfo::new(codes::NOT_FOUND, format!("no key named {key_name:?}"))
        })?;
        // The shape first: a malformed request is a 400 whoever signed it. What the key grants
        // is compared only once the caller is known to hold the key, so an unsigned request
        // cannot map out a key's capability by its answers.
        let ttl = requested_ttl(&request.ttl)?;
        let requested = requested_capability(&request.capability)?;
        if request.client_id.as_deref() == Some("") {
            return Err(ErrorInfo::new(
                codes::INVALID_CLIENT_ID,
                "clientId must not be empty",
            ));
        }
        let now = now_ms();
        match (&request.mac, basic) {
            (Some(mac), _) => {
                let timestamp = number(&request.timestamp)
                    .ok_or_else(|| ErrorInfo::new(codes::BAD_REQUEST, "timestamp is required"))?;
                if (timestamp - now).abs() > TOKEN_REQUEST_WINDOW_MS {
                    return Err(ErrorInfo::new(
                        codes::TIMESTAMP_OUT_OF_WINDOW,
                        "token request timestamp is outside the allowed window",
                    ));
                }
                let nonce = request.nonce.as_deref().unwrap_or("");
                let signed = format!(
                    "{key_name}\n{}\n{}\n{}\n{}\n{nonce}\n",
                    signed_text(&request.ttl),
                    signed_text(&request.capability),
                    request.client_id.as_deref().unwrap_or(""),
                    timestamp_text(&request.timestamp),
                );
                let expected = STANDARD.encode(hmac(&key.secret, signed.as_bytes()));
                if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
                    return Err(ErrorInfo::new(
                        codes::INVALID_CREDENTIALS,
                        "token request MAC does not verify",
                    ));
                }
                self.use_nonce(key_name, nonce, now)?;
            }
            // Basic authentication with the key itself: a token the key signed must not mint
            // itself a broader one.
            (None, Some(grant))
                if grant.key_name == key_name && grant.client_id == ClientIdClaim::Any => {}
            (None, _) => {
                return Err(ErrorInfo::new(
                    codes::INVALID_CREDENTIALS,
                    "an unsigned token request needs Basic authentication with the key",
                ))
            }
        }
        let capability = granted(requested.as_ref(), &key.capability)?;
        let holder = Holder {
            client_id: request.client_id.as_deref(),
            user_claims: &UserClaims::default(),
        };
        Ok(self.issue(key_name, &key.secret, &capability, holder, now, ttl))
    }

    /// Mints a token with key `key_name` for `client_id` with `capability` intersected with
    /// the key's and `user_claims` (as `ably.channel.<channel>` claims), valid for `max_ttl_ms` but never past `not_after` (ms since the epoch; the
    /// Auth0 token's own expiry): the `/api/auth/token` route for Auth0 users and the
    /// development login. Both bounds are taken from one clock reading, so the token never
    /// outlives `not_after`. 40142 when that has passed, 40160 when the intersection is empty.
    pub fn mint(
        &self,
        key_name: &str,
        capability: &Capability,
        client_id: Option<&str>,
        user_claims: &UserClaims,
        max_ttl_ms: i64,
        not_after: Option<i64>,
    ) -> Result<TokenDetails, ErrorInfo> {
        let key = self
            .keys
            .get(key_name)
            .ok_or_else(|| ErrorInfo::new(codes::INTERNAL, "token signing key missing"))?;
        let now = now_ms();
        let ttl = not_after.map_or(max_ttl_ms, |end| (end - now).min(max_ttl_ms));
        if ttl <= 0 {
            return Err(ErrorInfo::new(codes::TOKEN_EXPIRED, "Token expired"));
        }
        let capability = granted(Some(capability), &key.capability)?;
        let holder = Holder {
            client_id,
            user_claims,
        };
        Ok(self.issue(key_name, &key.secret, &capability, holder, now, ttl))
    }

    fn use_nonce(&self, key_name: &str, nonce: &str, now: i64) -> Result<(), ErrorInfo> {
        if nonce.len() < 16 {
            return Err(ErrorInfo::new(
                codes::BAD_REQUEST,
                "nonce must have at least 16 characters",
            ));
        }
        let mut nonces = self.nonces.lock().expect("nonce map lock");
        if nonces.len() >= MAX_NONCES / 2 {
            nonces.retain(|_, expires| *expires > now);
        }
        if nonces.len() >= MAX_NONCES {
            return Err(ErrorInfo::new(
                codes::RATE_LIMITED,
                "too many token requests",
            ));
        }
        let entry = format!("{key_name}\n{nonce}");
        if nonces.get(&entry).is_some_and(|e| *e > now) {
            return Err(ErrorInfo::new(codes::NONCE_REPLAYED, "nonce already used"));
        }
        nonces.insert(entry, now + 2 * TOKEN_REQUEST_WINDOW_MS);
        Ok(())
    }

    fn issue(
        &self,
        key_name: &str,
        secret: &str,
        capability: &Capability,
        holder: Holder<'_>,
        now: i64,
        ttl: i64,
    ) -> TokenDetails {
        let client_id = holder.client_id;
        let expires = now + ttl;
        let header = serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": key_name});
        // NumericDates may be fractional (RFC 7519 §2): ms precision, so `expires - issued`
        // is exactly the ttl, however short, and revocation can compare issue times to the ms.
        let mut claims = serde_json::json!({
            "iat": now as f64 / 1000.0,
            "exp": expires as f64 / 1000.0,
            "x-ably-capability": capability.as_json(),
        });
        if let Some(c) = client_id {
            claims["x-ably-clientId"] = c.into();
        }
        for (channel, value) in holder.user_claims.iter() {
            claims[format!("{}{channel}", protocol::user_claims::CHANNEL_PREFIX)] = value.into();
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(hmac(secret, signing_input.as_bytes()));
        TokenDetails {
            token: format!("{signing_input}.{signature}"),
            key_name: key_name.to_owned(),
            issued: now,
            expires,
            capability: capability.as_json().to_owned(),
            client_id: client_id.map(str::to_owned),
        }
    }
}

fn timestamp_text(value: &Option<serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl Authenticator for KeyAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: Credential<'a>,
    ) -> BoxFuture<'a, Result<Grant, ErrorInfo>> {
        let result = match credential {
            Credential::Key(key) => self.authenticate_key(key),
            Credential::Token(token) => self.authenticate_jwt(token),
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth() -> KeyAuthenticator {
        KeyAuthenticator::new(&[
            KeyConfig::parse("app.full:secret").unwrap(),
            KeyConfig {
                name: "app.chat".into(),
                secret: "chatsecret".into(),
                capability: r#"{"chat:*":["publish","subscribe"]}"#.into(),
            },
        ])
        .unwrap()
    }

    fn jwt(kid: &str, secret: &str, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"JWT","alg":"HS256","kid":"{kid}"}}"#)),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(hmac(secret, input.as_bytes()))
        )
    }

    #[test]
    fn keys_need_the_exact_secret() {
        let a = auth();
        assert!(a.authenticate_key("app.full:secret").is_ok());
        assert_eq!(
            a.authenticate_key("app.full:wrong").unwrap_err().code,
            40101
        );
        assert_eq!(a.authenticate_key("nope:secret").unwrap_err().code, 40101);
    }

    #[test]
    fn ably_jwts_are_checked_for_signature_expiry_and_key() {
        let a = auth();
        let exp = now_ms() / 1000 + 60;
        let claims = serde_json::json!({"exp": exp, "x-ably-clientId": "alice",
            "x-ably-capability": "{\"*\":[\"subscribe\"]}"});
        let grant = a
            .authenticate_jwt(&jwt("app.chat", "chatsecret", claims.clone()))
            .unwrap();
        assert_eq!(grant.client_id, ClientIdClaim::Exactly("alice".into()));
        assert!(grant
            .capability
            .allows("chat:x", protocol::Operation::Subscribe));
        assert!(!grant
            .capability
            .allows("news", protocol::Operation::Subscribe));
        assert_eq!(
            a.authenticate_jwt(&jwt("app.chat", "wrong", claims.clone()))
                .unwrap_err()
                .code,
            40144
        );
        assert_eq!(
            a.authenticate_jwt(&jwt("app.none", "x", claims))
                .unwrap_err()
                .code,
            40101
        );
        let expired = serde_json::json!({"exp": now_ms() / 1000 - 1});
        assert_eq!(
            a.authenticate_jwt(&jwt("app.full", "secret", expired))
                .unwrap_err()
                .code,
            40142
        );
        assert_eq!(a.authenticate_jwt("opaque").unwrap_err().code, 40143);
    }

    #[test]
    fn token_requests_are_signed_fresh_and_used_once() {
        let a = auth();
        let now = now_ms();
        let signed = format!("app.chat\n\n\nbob\n{now}\n1234567890123456\n");
        let request = TokenRequest {
            key_name: Some("app.chat".into()),
            ttl: None,
            capability: None,
            client_id: Some("bob".into()),
            timestamp: Some(now.into()),
            nonce: Some("1234567890123456".into()),
            mac: Some(STANDARD.encode(hmac("chatsecret", signed.as_bytes()))),
        };
        let details = a.request_token("app.chat", &request, None).unwrap();
        let grant = a.authenticate_jwt(&details.token).unwrap();
        assert_eq!(grant.client_id, ClientIdClaim::Exactly("bob".into()));
        assert!(grant
            .capability
            .allows("chat:1", protocol::Operation::Publish));
        assert_eq!(
            a.request_token("app.chat", &request, None)
                .unwrap_err()
                .code,
            40105
        );
    }

    fn unsigned(ttl: Option<serde_json::Value>, capability: Option<&str>) -> TokenRequest {
        TokenRequest {
            key_name: Some("app.chat".into()),
            ttl,
            capability: capability.map(Into::into),
            client_id: Some("bob".into()),
            timestamp: None,
            nonce: None,
            mac: None,
        }
    }

    #[test]
    fn tokens_carry_the_intersection_with_their_key_and_the_exact_ttl() {
        let a = auth();
        let key = a.authenticate_key("app.chat:chatsecret").unwrap();
        let asked = unsigned(
            Some(500.into()),
            Some(r#"{"*":["subscribe","presence","publish"]}"#),
        );
        let details = a.request_token("app.chat", &asked, Some(&key)).unwrap();
        assert_eq!(details.expires - details.issued, 500);
        assert_eq!(details.capability, r#"{"chat:*":["subscribe","publish"]}"#);
        let grant = a.authenticate_jwt(&details.token).unwrap();
        assert_eq!(grant.capability.as_json(), details.capability);
        assert_eq!(grant.issued_at, Some(details.issued));
        assert_eq!(grant.expires_at, Some(details.expires));

        for bad in [
            json!("abc"),
            json!(true),
            json!(0),
            json!(86_400_001),
            json!(1.5),
        ] {
            let refused = a
                .request_token("app.chat", &unsigned(Some(bad.clone()), None), Some(&key))
                .unwrap_err();
            assert_eq!((refused.code, refused.status_code), (40003, 400), "{bad}");
        }
        let malformed = unsigned(None, Some(r#"["*","publish"]"#));
        let refused = a
            .request_token("app.chat", &malformed, Some(&key))
            .unwrap_err();
        assert_eq!(refused.status_code, 400);
        let elsewhere = unsigned(None, Some(r#"{"news":["subscribe"]}"#));
        let refused = a
            .request_token("app.chat", &elsewhere, Some(&key))
            .unwrap_err();
        assert_eq!((refused.code, refused.status_code), (40160, 401));

        // A token is no key: it cannot sign an unsigned request for a broader token.
        let token_grant = a.authenticate_jwt(&details.token).unwrap();
        let wider = unsigned(None, None);
        assert_eq!(
            a.request_token("app.chat", &wider, Some(&token_grant))
                .unwrap_err()
                .code,
            40101
        );
    }

    #[test]
    fn minted_tokens_never_outlive_their_bound() {
        let a = auth();
        let everything = &Capability::parse(r#"{"*":["*"]}"#).unwrap();
        let not_after = now_ms() + 500;
        let details = a
            .mint(
                "app.full",
                everything,
                Some("u"),
                &UserClaims::default(),
                3_600_000,
                Some(not_after),
            )
            .unwrap();
        assert!(
            details.expires <= not_after,
            "{} > {not_after}",
            details.expires
        );
        let late = a.mint(
            "app.full",
            everything,
            None,
            &UserClaims::default(),
            3_600_000,
            Some(now_ms() - 1),
        );
        assert_eq!(late.unwrap_err().code, 40142);
    }

    #[test]
    fn user_claims_travel_from_the_token_to_the_identity_and_into_minted_tokens() {
        let a = auth();
        let claims = json!({"exp": now_ms() / 1000 + 60, "x-ably-clientId": "alice",
            "ably.room.r1": "moderator", "ably.channel.news": "editor"});
        let grant = a
            .authenticate_jwt(&jwt("app.full", "secret", claims))
            .unwrap();
        let identity = Identity::of_grant(&grant, None).unwrap();
        assert_eq!(identity.user_claim("r1::$chat"), Some("moderator"));
        assert_eq!(identity.user_claim("news"), Some("editor"));
        assert_eq!(identity.user_claim("r1"), None);
        let everything = &Capability::parse(r#"{"*":["*"]}"#).unwrap();
        let minted = a
            .mint(
                "app.full",
                everything,
                Some("alice"),
                &grant.user_claims,
                60_000,
                None,
            )
            .unwrap();
        let again = a.authenticate_jwt(&minted.token).unwrap();
        assert_eq!(again.user_claims, grant.user_claims);
    }

    #[test]
    fn identity_rules_follow_section_8_6() {
        let exact = ClientIdClaim::Exactly("alice".into());
        assert_eq!(
            Identity::resolve(&exact, Some("bob")).unwrap_err().code,
            40102
        );
        let id = Identity::resolve(&exact, None).unwrap();
        assert_eq!(
            id.message_client_id(None).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(id.message_client_id(Some("bob")).unwrap_err().code, 40012);
        let wild = Identity::resolve(&ClientIdClaim::Wildcard, None).unwrap();
        assert_eq!(wild.reported.as_deref(), Some("*"));
        assert!(wild.message_client_id(Some("anyone")).is_ok());
        let anon = Identity::resolve(&ClientIdClaim::None, None).unwrap();
        assert_eq!(anon.message_client_id(Some("x")).unwrap_err().code, 40012);
    }
}
