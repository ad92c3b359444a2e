//! The plugin's settings: the Auth0 tenant (or any OIDC issuer) and how tokens map to
//! capabilities. Read from the broker's config file section `[auth0]`, overridden by the
//! `AUTH0_*` environment variables and flags. Every default is in the `Default` impl. The
//! capabilities stay Ably JSON text here, as the file has them; [`Auth0Config::capabilities`]
//! parses them once, at start-up, into the [`RoleCapabilities`] the plugin maps tokens with.

use std::collections::BTreeMap;

use protocol::Capability;
use serde::Deserialize;

/// What a chat user may do everywhere: the capability of a signed-in user with neither
/// permissions nor mapped roles (`default_capability`'s default), and of the broker's
/// development login. Every @ably/chat feature — send, receive, history, presence, typing,
/// reactions, occupancy, editing and deleting one's own messages (ably-chat.md §5.1, "all
/// features") — but not the `-any` operations of moderators.
pub const CHAT_USER_CAPABILITY: &str = r#"{"*":["subscribe","publish","presence","history","channel-metadata","annotation-publish","annotation-subscribe","message-update-own","message-delete-own"]}"#;

/// Settings of the auth plugin. The plugin is on when `domain` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth0Config {
    /// The tenant domain, e.g. `example.eu.auth0.com` (`AUTH0_DOMAIN`). Empty: plugin off.
    pub domain: String,
    /// The SPA's client id (`AUTH0_CLIENTID`), served by `/api/oauth/config`.
    pub client_id: String,
    /// Where Auth0 sends the browser back (`AUTH0_REDIRECT_URI`).
    pub redirect_uri: String,
    /// The API identifier access tokens must carry in `aud` (`AUTH0_AUDIENCE`).
    pub audience: String,
    /// The exact `iss` (`AUTH0_ISSUER`). Default `https://<domain>/`.
    pub issuer: Option<String>,
    /// Where the signing keys are (`AUTH0_JWKS_URL`). Default `<issuer>.well-known/jwks.json`.
    /// Must be https unless it points at a loopback address.
    pub jwks_url: Option<String>,
    /// Accepted signature algorithms, asymmetric only. Default `["RS256"]`.
    pub algorithms: Vec<String>,
    /// Also accept ID tokens (`aud` = client id). Default false.
    pub accept_id_tokens: bool,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds. Default 30.
    pub leeway_secs: u64,
    /// Longest token accepted, in bytes. Default 16384.
    pub max_token_bytes: usize,
    /// The namespaced claim holding role names, e.g. `https://chat.example.com/roles`.
    pub roles_claim: Option<String>,
    /// The namespaced claim holding the user's user claims (`../shared/ably-chat.md` §5.10),
    /// e.g. `https://chat.example.com/claims`: an object of name → string, each name
    /// `ably.room.<room>`, `ably.channel.<channel>` or a plain channel name. Default none
    /// (top-level `ably.room.*` and `ably.channel.*` claims are read either way).
    pub user_claims: Option<String>,
    /// Capability (Ably JSON text) granted by each role name.
    pub roles: BTreeMap<String, String>,
    /// Capability for signed-in users with neither permissions nor mapped roles.
    /// Default [`CHAT_USER_CAPABILITY`]: everything a chat user does, on every channel.
    pub default_capability: String,
    /// How long fetched keys are trusted before a background refresh, in seconds. Default 600.
    pub jwks_ttl_secs: u64,
    /// Least time between two fetches caused by unknown `kid`s, in seconds. Default 30.
    pub jwks_cooldown_secs: u64,
    /// Time limit of one JWKS fetch, in ms. Default 3000.
    pub jwks_timeout_ms: u64,
    /// Largest JWKS body, in bytes. Default 65536.
    pub jwks_max_bytes: usize,
    /// How long a verified token is remembered, in seconds (never past its expiry). Default 60.
    pub verified_cache_secs: u64,
}

/// The capabilities of `[auth0]`, parsed: what each mapped role grants, and what a user with
/// neither permissions nor mapped roles gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleCapabilities {
    /// The capability of each role name.
    pub roles: BTreeMap<String, Capability>,
    /// The capability of users with neither permissions nor mapped roles.
    pub default: Capability,
}

impl Default for Auth0Config {
    fn default() -> Self {
        Auth0Config {
            domain: String::new(),
            client_id: String::new(),
            redirect_uri: String::new(),
            audience: String::new(),
            issuer: None,
            jwks_url: None,
            algorithms: vec!["RS256".to_owned()],
            accept_id_tokens: false,
            leeway_secs: 30,
            max_token_bytes: 16 * 1024,
            roles_claim: None,
            user_claims: None,
            roles: BTreeMap::new(),
            default_capability: CHAT_USER_CAPABILITY.to_owned(),
            jwks_ttl_secs: 600,
            jwks_cooldown_secs: 30,
            jwks_timeout_ms: 3000,
            jwks_max_bytes: 64 * 1024,
            verified_cache_secs: 60,
        }
    }
}

impl Auth0Config {
    /// True when the plugin should run.
    pub fn enabled(&self) -> bool {
        !self.domain.trim().is_empty()
    }

    /// The issuer tokens must name exactly.
    pub fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("https://{}/", self.domain.trim_end_matches('/')))
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        self.jwks_url.clone().unwrap_or_else(|| {
            let issuer = self.issuer();
            format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'))
        })
    }

    /// Checks the settings at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.audience.is_empty() && !self.accept_id_tokens {
            return Err("auth0: set an audience (AUTH0_AUDIENCE) or accept_id_tokens".to_owned());
        }
        if self.accept_id_tokens && self.client_id.is_empty() {
            return Err("auth0: accept_id_tokens needs the client id (AUTH0_CLIENTID)".to_owned());
        }
        for alg in &self.algorithms {
            if !matches!(
                alg.as_str(),
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
            ) {
                return Err(format!(
                    "auth0: algorithm {alg} is not an accepted asymmetric algorithm"
                ));
            }
        }
        if self.algorithms.is_empty() {
            return Err("auth0: algorithms must not be empty".to_owned());
        }
        let url = self.jwks_url();
        if !url.starts_with("https://") && !is_loopback_http(&url) {
            return Err(format!("auth0: the JWKS URL {url} must be https"));
        }
        self.capabilities()?;
        Ok(())
    }

    /// The role capabilities and `default_capability`, parsed; the error names the first that
    /// does not parse.
    pub fn capabilities(&self) -> Result<RoleCapabilities, String> {
        let mut roles = BTreeMap::new();
        for (role, cap) in &self.roles {
            let parsed = Capability::parse(cap)
                .map_err(|e| format!("auth0: capability of role {role}: {}", e.message))?;
            roles.insert(role.clone(), parsed);
        }
        let default = Capability::parse(&self.default_capability)
            .map_err(|e| format!("auth0: default_capability: {}", e.message))?;
        Ok(RoleCapabilities { roles, default })
    }
}

/// Plain http is allowed only to this machine (a local issuer in tests and development).
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_and_jwks_url_default_from_the_domain() {
        let config = Auth0Config {
            domain: "tenant.eu.auth0.com".into(),
            audience: "https://chat".into(),
            ..Default::default()
        };
        assert_eq!(config.issuer(), "https://tenant.eu.auth0.com/");
        assert_eq!(
            config.jwks_url(),
            "https://tenant.eu.auth0.com/.well-known/jwks.json"
        );
        config.validate().unwrap();
    }

    #[test]
    fn insecure_or_symmetric_settings_are_refused() {
        let mut config = Auth0Config {
            domain: "d".into(),
            audience: "a".into(),
            jwks_url: Some("http://idp.example/jwks".into()),
            ..Default::default()
        };
        assert!(config.validate().is_err());
        config.jwks_url = Some("http://127.0.0.1:9/jwks".into());
        config.validate().unwrap();
        config.algorithms = vec!["HS256".into()];
        assert!(config.validate().is_err());
    }

    #[test]
    fn users_get_every_chat_feature_by_default_but_no_moderation() {
        use protocol::Operation::*;
        let default = Auth0Config::default().capabilities().unwrap().default;
        assert_eq!(default.as_json(), CHAT_USER_CAPABILITY);
        for op in [
            Subscribe,
            Publish,
            Presence,
            History,
            ChannelMetadata,
            AnnotationPublish,
            AnnotationSubscribe,
            MessageUpdateOwn,
            MessageDeleteOwn,
        ] {
            assert!(default.allows("room::$chat", op), "{op:?}");
        }
        for op in [MessageUpdateAny, MessageDeleteAny, Stats] {
            assert!(!default.allows("room::$chat", op), "{op:?}");
        }
    }

    #[test]
    fn capabilities_parse_and_the_first_bad_one_is_named() {
        let mut config = Auth0Config {
            domain: "d".into(),
            audience: "a".into(),
            ..Default::default()
        };
        config
            .roles
            .insert("moderator".into(), r#"{"mod:*":["*"]}"#.into());
        let parsed = config.capabilities().unwrap();
        assert_eq!(parsed.roles["moderator"].as_json(), r#"{"mod:*":["*"]}"#);
        assert_eq!(parsed.default.as_json(), config.default_capability);
        config.roles.insert("broken".into(), r#"{"x":[]}"#.into());
        let refused = config.validate().unwrap_err();
        assert!(
            refused.starts_with("auth0: capability of role broken:"),
            "{refused}"
        );
        config.roles.remove("broken");
        config.default_capability = r#"{"x":["fly"]}"#.into();
        let refused = config.capabilities().unwrap_err();
        assert_eq!(
            refused,
            r#"auth0: default_capability: unknown capability operation "fly""#
        );
    }
}
