//! The command line: flags mirrored by environment variables, over an optional TOML file, over
//! the defaults (see `docs/configuration.md`). Also the development key a fresh machine gets
//! when no key is configured, kept in the data directory so restarts keep it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::config::{Config, KeyConfig};

/// Self-hosted realtime messaging that speaks Ably's protocol: point ably-js at it with
/// `endpoint`, `port` and `tls: false`.
#[derive(Debug, Parser)]
#[command(name = "broker", version)]
pub struct Args {
    /// Address of the one port serving WebSocket and REST [default: 127.0.0.1:8080]
    #[arg(long, env = "BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the channel log and the development key [default: ./data]
    #[arg(long, env = "BROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// An API key `name:secret` with full capability; repeatable (env: comma-separated)
    #[arg(long = "key", env = "BROKER_KEYS", value_delimiter = ',')]
    pub keys: Vec<String>,
    /// TOML file with keys and their capabilities, limits, retention (see docs/configuration.md)
    #[arg(long, env = "BROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Auth0 tenant domain; turns on Auth0 logins (see docs/auth.md)
    #[arg(long, env = "AUTH0_DOMAIN")]
    pub auth0_domain: Option<String>,
    /// Auth0 application (SPA) client id
    #[arg(long = "auth0-client-id", env = "AUTH0_CLIENTID")]
    pub auth0_client_id: Option<String>,
    /// Where Auth0 returns the browser after login
    #[arg(long, env = "AUTH0_REDIRECT_URI")]
    pub auth0_redirect_uri: Option<String>,
    /// The API identifier access tokens carry in `aud`
    #[arg(long, env = "AUTH0_AUDIENCE")]
    pub auth0_audience: Option<String>,
    /// Exact token issuer [default: https://<domain>/]
    #[arg(long, env = "AUTH0_ISSUER")]
    pub auth0_issuer: Option<String>,
    /// JWKS URL [default: <issuer>.well-known/jwks.json]
    #[arg(long, env = "AUTH0_JWKS_URL")]
    pub auth0_jwks_url: Option<String>,
    /// Serve the static files of this directory (a built web app) at `/`
    #[arg(long, env = "BROKER_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// NATS server URLs, comma-separated: turns on cluster mode on JetStream (see
    /// docs/operations.md)
    #[arg(long, env = "BROKER_NATS", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// This node's name in the cluster [default: <host name>-<listen port>]
    #[arg(long, env = "BROKER_NODE_ID")]
    pub node_id: Option<String>,
}

/// What `main` needs to start: the configuration and, on a fresh setup, the development key.
pub struct Startup {
    /// The merged, validated configuration.
    pub config: Config,
    /// The development key created or reused because no key was configured.
    pub dev_key: Option<String>,
}

impl Args {
    /// Merges defaults, the file, env and flags, and validates the result.
    pub fn into_startup(self) -> Result<Startup, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        let auth0 = &mut config.auth0;
        let overrides = [
            (self.auth0_domain, &mut auth0.domain),
            (self.auth0_client_id, &mut auth0.client_id),
            (self.auth0_redirect_uri, &mut auth0.redirect_uri),
            (self.auth0_audience, &mut auth0.audience),
        ];
        for (value, field) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        if self.auth0_issuer.is_some() {
            auth0.issuer = self.auth0_issuer;
        }
        if self.auth0_jwks_url.is_some() {
            auth0.jwks_url = self.auth0_jwks_url;
        }
        for key in self.keys.iter().filter(|k| !k.is_empty()) {
            config.keys.push(KeyConfig::parse(key)?);
        }
        if self.web_root.is_some() {
            config.web_root = self.web_root;
        }
        let nats: Vec<String> = self.nats.into_iter().filter(|u| !u.is_empty()).collect();
        if !nats.is_empty() {
            config.cluster.nats = nats;
        }
        if self.node_id.is_some() {
            config.cluster.node_id = self.node_id;
        }
        let mut dev_key = None;
        if config.keys.is_empty() {
            let key = development_key(&config.data_dir)?;
            config.keys.push(KeyConfig::parse(&key)?);
            dev_key = Some(key);
            // A fresh machine: let the app's development login work unless told otherwise.
            config.dev_login.get_or_insert(true);
        }
        config.validate()?;
        Ok(Startup { config, dev_key })
    }
}

/// Reads the development key from `<data_dir>/dev-api-key`, creating it on first start.
pub fn development_key(data_dir: &Path) -> Result<String, String> {
    stored_key(data_dir, "dev-api-key", "dev")
}

/// Reads or creates the key in `<data_dir>/<file>` named `<prefix>.<random>`.
pub fn stored_key(data_dir: &Path, file: &str, prefix: &str) -> Result<String, String> {
    let path = data_dir.join(file);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().to_owned();
        if KeyConfig::parse(&key).is_ok() {
            return Ok(key);
        }
    }
    let random = |n: usize| -> String {
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(n)
            .map(char::from)
            .collect()
    };
    let key = format!("{prefix}.{}:{}", random(6), random(32));
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    std::fs::write(&path, format!("{key}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(key)
}
