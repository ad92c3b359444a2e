//! The authenticator the broker runs with: API keys and Ably JWTs through
//! [`KeyAuthenticator`], and — when Auth0 is configured — any other JWT through the auth
//! plugin, whose [`auth_plugin::Principal`] becomes a [`Grant`]: the user's id as an exact
//! clientId, the capability the plugin mapped (already parsed), and the token's expiry (so
//! §4.7 renewal applies).

use std::sync::Arc;

use auth_plugin::AuthPlugin;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use protocol::ErrorInfo;

use crate::auth::{
    now_ms, Authenticator, BoxFuture, ClientIdClaim, Credential, Grant, KeyAuthenticator,
    PLUGIN_KEY_NAME,
};
use crate::revocation::Revocations;

/// Name of the internal key that signs tokens minted for plugin users.
pub const TOKEN_KEY_PREFIX: &str = "broker-tokens";

/// API keys first; Auth0 for tokens that are not Ably JWTs. Tokens the keys signed are also
/// checked against the revocations (40141).
pub struct ChainAuthenticator {
    /// Keys and Ably JWTs.
    pub keys: Arc<KeyAuthenticator>,
    /// The Auth0 plugin, when configured.
    pub plugin: Option<Arc<AuthPlugin>>,
    /// Revoked tokens.
    pub revocations: Arc<Revocations>,
}

/// True when `token` is a JWT whose header says HS256: an Ably JWT (§8.2).
fn is_ably_jwt(token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").and_then(|a| a.as_str()) == Some("HS256"))
}

impl ChainAuthenticator {
    /// Verifies an Auth0 token and maps it to a grant.
    pub async fn authenticate_plugin(plugin: &AuthPlugin, token: &str) -> Result<Grant, ErrorInfo> {
        let principal = plugin.authenticate(token).await?;
        Ok(Grant {
            key_name: PLUGIN_KEY_NAME.to_owned(),
            client_id: ClientIdClaim::Exactly(principal.client_id),
            capability: principal.capability,
            expires_at: Some(principal.expires_at),
            issued_at: None,
            user_claims: principal.user_claims,
        })
    }
}

impl Authenticator for ChainAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: Credential<'a>,
    ) -> BoxFuture<'a, Result<Grant, ErrorInfo>> {
        match (credential, &self.plugin) {
            (Credential::Token(token), Some(plugin)) if !is_ably_jwt(token) => {
                Box::pin(Self::authenticate_plugin(plugin, token))
            }
            (Credential::Token(token), _) => {
                let result =
                    self.keys
                        .authenticate_jwt(token)
                        .and_then(|grant| match grant.token_stamp() {
                            Some(stamp) => self.revocations.check(&stamp, now_ms()).map(|_| grant),
                            None => Ok(grant),
                        });
                Box::pin(std::future::ready(result))
            }
            (Credential::Key(_), _) => self.keys.authenticate(credential),
        }
    }
}
