//! Verifying one token, carefully (`../shared/auth0.md` §2.1): size and shape first, then the
//! header read without trusting it (allowed algorithm, `kid` present, no `crit`), the key from
//! the issuer's own JWKS by `kid`, then jsonwebtoken with a `Validation` built once — algorithms
//! pinned, exact issuer, audience, `exp`/`iss`/`aud`/`sub` required, `nbf` checked — and the
//! checks it does not do (`iat` not in the future, a sane `sub`, `azp` on ID tokens).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};

use protocol::UserClaims;

use crate::config::Auth0Config;
use crate::jwks::{JwksCache, KeyError};
use crate::users::Profile;

/// What a verified token says.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The subject.
    pub sub: String,
    /// Expiry, ms since the epoch.
    pub expires_at: i64,
    /// The `permissions` claim.
    pub permissions: Vec<String>,
    /// Role names from the configured roles claim.
    pub roles: Vec<String>,
    /// Profile claims, when the token has them.
    pub profile: Profile,
    /// A machine-to-machine token (`…@clients`, `gty: client-credentials`).
    pub machine: bool,
    /// The user claims: the top-level `ably.room.*`/`ably.channel.*` claims, then the
    /// configured `user_claims` object's, which win for the same channel.
    pub user_claims: UserClaims,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// It expired (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// It is not acceptable; the reason is for logs, not clients.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Its signing key could not be had (JWKS down); the client should retry later.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Verifies tokens of one issuer.
pub struct Verifier {
    jwks: Arc<JwksCache>,
    validation: Validation,
    allowed_algs: Vec<Algorithm>,
    max_token_bytes: usize,
    leeway: i64,
    client_id: String,
    audience: String,
    roles_claim: Option<String>,
    user_claims: Option<String>,
}

impl Verifier {
    /// A verifier for the configured issuer.
    pub fn new(config: &Auth0Config) -> Verifier {
        let allowed_algs: Vec<Algorithm> = config
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        let mut validation =
            Validation::new(allowed_algs.first().copied().unwrap_or(Algorithm::RS256));
        validation.algorithms = allowed_algs.clone();
        validation.set_issuer(&[config.issuer()]);
        let mut audiences = Vec::new();
        if !config.audience.is_empty() {
            audiences.push(config.audience.clone());
        }
        if config.accept_id_tokens {
            audiences.push(config.client_id.clone());
        }
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        let jwks = Arc::new(JwksCache::new(
            config.jwks_url(),
            config.algorithms.clone(),
            Duration::from_secs(config.jwks_ttl_secs),
            Duration::from_secs(config.jwks_cooldown_secs),
            Duration::from_millis(config.jwks_timeout_ms),
            config.jwks_max_bytes,
        ));
        Verifier {
            jwks,
            validation,
            allowed_algs,
            max_token_bytes: config.max_token_bytes,
            leeway: config.leeway_secs as i64,
            client_id: config.client_id.clone(),
            audience: config.audience.clone(),
            roles_claim: config.roles_claim.clone(),
            user_claims: config.user_claims.clone(),
        }
    }

    /// The key cache.
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// Verifies `token` and reads what the broker needs from it.
    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let invalid = |why: &str| VerifyError::Invalid(why.to_owned());
        if token.len() > self.max_token_bytes {
            return Err(invalid("token larger than the limit"));
        }
        let segments: Vec<&str> = token.split('.').collect();
        let base64url = |s: &&str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if segments.len() != 3 || !segments.iter().all(base64url) {
            return Err(invalid("not a compact JWS"));
        }
        let header = decode_header(token).map_err(|e| invalid(&format!("header: {e}")))?;
        if !self.allowed_algs.contains(&header.alg) {
            return Err(invalid("algorithm not allowed"));
        }
        if header.crit.is_some() {
            return Err(invalid("crit header not supported"));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| invalid("no kid"))?;
        let key = self.jwks.key(&kid).await.map_err(|e| match e {
            KeyError::UnknownKid(_) => invalid("unknown signing key"),
            KeyError::Unavailable(why) => VerifyError::KeysUnavailable(why),
        })?;
        let data =
            decode::<serde_json::Value>(token, &key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    kind => VerifyError::Invalid(format!("{kind:?}")),
                }
            })?;
        let claims = data.claims;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if claims
            .get("iat")
            .and_then(|v| v.as_f64())
            .is_some_and(|iat| iat as i64 > now + self.leeway)
        {
            return Err(invalid("iat in the future"));
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
        if sub.is_empty() || sub.len() > 255 {
            return Err(invalid("bad sub"));
        }
        // An ID token (aud = client id) must have been issued to this client.
        let aud_is = |want: &str| match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == want,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        let id_token = !self.client_id.is_empty()
            && aud_is(&self.client_id)
            && (self.audience.is_empty() || !aud_is(&self.audience));
        if id_token {
            if let Some(azp) = claims.get("azp").and_then(|v| v.as_str()) {
                if azp != self.client_id {
                    return Err(invalid("azp is another client"));
                }
            }
        }
        let strings = |value: Option<&serde_json::Value>| -> Vec<String> {
            value
                .and_then(|v| v.as_array())
                .map(|items| {
                    items
                        .iter()
                        .take(1000)
                        .filter_map(|i| i.as_str())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let exp = claims.get("exp").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let mut user_claims = claims
            .as_object()
            .map(UserClaims::from_claims)
            .unwrap_or_default();
        if let Some(serde_json::Value::Object(object)) =
            self.user_claims.as_ref().and_then(|name| claims.get(name))
        {
            user_claims.extend_from(object, true);
        }
        Ok(Verified {
            sub: sub.to_owned(),
            expires_at: (exp * 1000.0) as i64,
            permissions: strings(claims.get("permissions")),
            roles: self
                .roles_claim
                .as_ref()
                .map(|name| strings(claims.get(name)))
                .unwrap_or_default(),
            profile: Profile {
                given_name: text("given_name"),
                family_name: text("family_name"),
                nickname: text("nickname"),
                picture: text("picture"),
                email: text("email"),
            },
            machine: sub.ends_with("@clients")
                || text("gty").as_deref() == Some("client-credentials"),
            user_claims,
        })
    }
}
