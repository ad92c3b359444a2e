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
        for key in self.keys.iter().filter(|k| !k.is_empty()) {
            config.keys.push(KeyConfig::parse(key)?);
        }
        let mut dev_key = None;
        if config.keys.is_empty() {
            let key = development_key(&config.data_dir)?;
            config.keys.push(KeyConfig::parse(&key)?);
            dev_key = Some(key);
        }
        config.validate()?;
        Ok(Startup { config, dev_key })
    }
}

/// Reads the development key from `<data_dir>/dev-api-key`, creating it on first start.
pub fn development_key(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("dev-api-key");
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
    let key = format!("dev.{}:{}", random(6), random(32));
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
