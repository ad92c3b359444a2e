//! Auth0 (or any OIDC issuer) logins for the broker. [`AuthPlugin::authenticate`] turns an
//! Auth0-issued JWT into a [`Principal`]: the user's internal id (their clientId on the
//! broker), a capability mapped from the token's permissions and roles (a parsed
//! [`protocol::Capability`], which the broker takes as is), and the expiry. On the way it keeps
//! the user table. [`AuthPlugin::handle`] serves the app's auth routes. A leaf crate: it knows
//! nothing of the broker, which calls it through its authenticator seam and mints its own
//! tokens for `/api/auth/token`. `../shared/auth0.md` is the reference.

pub mod config;
pub mod jwks;
pub mod rbac;
pub mod routes;
pub mod table;
pub mod users;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::error::codes;
use protocol::{Capability, ErrorInfo, UserClaims};
use sha2::{Digest, Sha256};

pub use config::{Auth0Config, RoleCapabilities};
pub use routes::{ApiKey, ApiRequest, ApiResponse};
pub use users::{PublicProfile, User, UserStore};
use verify::{Verifier, VerifyError};

/// Verified tokens remembered at most, so a reconnect storm does not redo RSA per socket.
const MAX_CACHED_TOKENS: usize = 50_000;

/// Who a verified token belongs to and what they may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The clientId on the broker: the user's internal id (or the `sub` of a machine token).
    pub client_id: String,
    /// The token's subject.
    pub sub: String,
    /// What they may do on which channels.
    pub capability: Capability,
    /// Whether the admin routes are open to them.
    pub admin: bool,
    /// When the token expires, ms since the epoch.
    pub expires_at: i64,
    /// The token's user claims by channel (`../shared/ably-chat.md` §5.10).
    pub user_claims: UserClaims,
}

/// The plugin: verifier, user table, and settings.
pub struct AuthPlugin {
    config: Auth0Config,
    /// The capabilities of `config`, parsed at start.
    capabilities: RoleCapabilities,
    verifier: Verifier,
    users: UserStore,
    verified: DashMap<[u8; 32], (Principal, Instant)>,
}

fn banned() -> ErrorInfo {
    ErrorInfo::new(codes::FORBIDDEN, "the user was deleted")
}

fn store_error(e: users::UserError) -> ErrorInfo {
    tracing::error!(error = %e, "user table");
    ErrorInfo::new(codes::INTERNAL, "user table unavailable")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl AuthPlugin {
    /// Starts the plugin on the broker's database, fetching the signing keys in the
    /// background (a dead IdP at start-up only delays logins). Settings that do not validate,
    /// a capability that does not parse among them, are an error here, not at the first login.
    /// Needs a tokio runtime.
    pub fn start(config: Auth0Config, db: &sled::Db) -> Result<Arc<AuthPlugin>, String> {
        let users = UserStore::open(db).map_err(|e| e.to_string())?;
        AuthPlugin::start_with(config, users)
    }

    /// [`AuthPlugin::start`] on a given user table: a cluster's shared one.
    pub fn start_with(config: Auth0Config, users: UserStore) -> Result<Arc<AuthPlugin>, String> {
        config.validate()?;
        let capabilities = config.capabilities()?;
        let verifier = Verifier::new(&config);
        let jwks = verifier.jwks().clone();
        tokio::spawn(async move { jwks.refresh().await });
        Ok(Arc::new(AuthPlugin {
            config,
            capabilities,
            verifier,
            users,
            verified: DashMap::new(),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &Auth0Config {
        &self.config
    }

    /// The user table.
    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// The signing-key cache (for status and tests).
    pub fn jwks(&self) -> &Arc<jwks::JwksCache> {
        self.verifier.jwks()
    }

    /// Verifies an Auth0 token, records the login, and maps its grants. Errors are Ably
    /// errors: 40142 expired, 40144 invalid, 40140 when the keys cannot be fetched now, 40300
    /// (HTTP 403) for a deleted user, even one whose token was verified before.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ErrorInfo> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .verified
            .get(&digest)
            .filter(|entry| entry.1 > Instant::now())
            .map(|entry| entry.0.clone());
        if let Some(principal) = cached {
            if self
                .users
                .is_banned(&principal.sub)
                .await
                .map_err(store_error)?
            {
                return Err(banned());
            }
            return Ok(principal);
        }
        let verified = self.verifier.verify(token).await.map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            match e {
                VerifyError::Expired => ErrorInfo::new(codes::TOKEN_EXPIRED, "Token expired"),
                VerifyError::Invalid(_) => ErrorInfo::new(codes::INVALID_JWT, "invalid token"),
                VerifyError::KeysUnavailable(_) => ErrorInfo::new(
                    codes::TOKEN_ERROR,
                    "token signing keys are unavailable; try again shortly",
                ),
            }
        })?;
        let grants = rbac::grants(
            &verified.permissions,
            &verified.roles,
            &self.capabilities.roles,
            &self.capabilities.default,
        );
        if !grants.ignored.is_empty() {
            tracing::debug!(sub = %verified.sub, ignored = ?grants.ignored, "permissions that do not parse");
        }
        let now = now_ms();
        let client_id = if verified.machine {
            verified.sub.clone()
        } else {
            self.users
                .login(&verified.sub, &verified.profile, now)
                .await
                .map_err(|e| match e {
                    users::UserError::Banned => banned(),
                    other => store_error(other),
                })?
                .id
        };
        let principal = Principal {
            client_id,
            sub: verified.sub,
            capability: grants.capability,
            admin: grants.admin,
            expires_at: verified.expires_at,
            user_claims: verified.user_claims,
        };
        let lifetime = Duration::from_secs(self.config.verified_cache_secs).min(
            Duration::from_millis((verified.expires_at - now).max(0) as u64),
        );
        if self.verified.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            self.verified.retain(|_, (_, until)| *until > now);
        }
        if self.verified.len() < MAX_CACHED_TOKENS {
            self.verified
                .insert(digest, (principal.clone(), Instant::now() + lifetime));
        }
        Ok(principal)
    }

    /// Forgets cached verifications of a user (after deletion).
    pub fn forget_user(&self, client_id: &str) {
        self.verified.retain(|_, (p, _)| p.client_id != client_id);
    }
}
