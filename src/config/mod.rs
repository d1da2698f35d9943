//! Configuration: serde structs mirroring proxy.toml section by section, loading, env overrides.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `CACHESIDE_*` environment
//! variables, command-line flags. `validate` turns the plain data into checked settings before
//! anything binds a port.

mod deferred;
mod env;
mod iam;
mod loader;
mod strategy;
pub mod units;
mod upstream;
mod url;
pub(crate) mod validate;

pub use deferred::{CounterConfig, WriteMode};
pub use env::{env_name, EnvVars, Vars, ENV_KEYS};
pub use url::UpstreamUrl;
pub use validate::Validated;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use units::{Human, Size};

/// A configuration problem: the process exits with code 64 before binding anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub hot: HotConfig,
    /// `[[cache]]` rules: which keys the hot tier may hold, and for how long.
    pub cache: Vec<CacheRule>,
    pub postgres: PostgresConfig,
    /// `[[mapping]]`: key patterns resolved from PostgreSQL on a miss.
    pub mapping: Vec<MappingConfig>,
    /// `[[warm]]`: keys loaded at start.
    pub warm: Vec<WarmConfig>,
    /// `[[counter]]`: counters kept in Redis and synced to PostgreSQL.
    pub counter: Vec<CounterConfig>,
}

/// One `[[warm]]` entry: a query whose rows are capture values of a mapping's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmConfig {
    pub mapping: String,
    pub query: String,
}

/// `[postgres]`: the database that read-through mappings query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout: Human,
    pub statement_timeout: Human,
    pub pool_timeout: Human,
    pub prepared_statements: bool,
    pub lease: Human,
    pub breaker_failures: u32,
    pub breaker_cooldown: Human,
    pub wait_for_warm: bool,
    pub tls: String,
    pub ca_file: Option<PathBuf>,
    /// LISTEN for row changes sent by the triggers `cacheside db install-notify` installs.
    pub notify: bool,
    /// The NOTIFY channel those triggers use.
    pub notify_channel: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            password_file: None,
            pool_size: 8,
            connect_timeout: Human::secs(2),
            statement_timeout: Human::secs(1),
            pool_timeout: Human::millis(500),
            prepared_statements: true,
            lease: Human::secs(3),
            breaker_failures: 5,
            breaker_cooldown: Human::secs(5),
            wait_for_warm: false,
            tls: "prefer".into(),
            ca_file: None,
            notify: false,
            notify_channel: "cacheside".into(),
        }
    }
}

/// One `[[mapping]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    pub name: String,
    pub key: String,
    pub query: String,
    #[serde(default = "MappingConfig::default_shape")]
    pub shape: String,
    pub ttl: Human,
    #[serde(default)]
    pub jitter: Option<String>,
    #[serde(default = "MappingConfig::default_negative_ttl")]
    pub negative_ttl: Human,
    /// The query for several keys at once ($1 an array); derived from `query` when unset.
    #[serde(default)]
    pub batch_query: Option<String>,
    /// The table whose row changes invalidate this mapping's keys (`postgres.notify`); its
    /// columns named like the key's captures identify the key. Unset: the query's first FROM.
    #[serde(default)]
    pub table: Option<String>,
    /// Writes to the mapping's keys: "none" (Redis only) or "through" (Postgres first).
    #[serde(default = "MappingConfig::default_write")]
    pub write: String,
    /// write = "through": the statement a SET (HSET) runs; $1.. captures, last the value.
    #[serde(default)]
    pub write_query: Option<String>,
    /// write = "through": the statement a DEL runs; $1.. captures.
    #[serde(default)]
    pub delete_query: Option<String>,
    /// "statement" (run delete_query) or "invalidate"; by default "statement" with a
    /// delete_query.
    #[serde(default)]
    pub on_delete: Option<String>,
    /// Key templates invalidated with each write of a key (captures from the key and the rows).
    #[serde(default)]
    pub invalidates: Vec<String>,
    /// A read in this last share of the TTL ("10%") reloads the key in the background.
    #[serde(default)]
    pub refresh_ahead: Option<String>,
    /// How long past its TTL a loaded value is still answered while PostgreSQL fails.
    #[serde(default)]
    pub stale_if_error: Option<Human>,
    /// `write = "behind"`: failed attempts before an entry goes to the dead-letter stream (5).
    #[serde(default)]
    pub write_behind_max_attempts: Option<u32>,
    /// `write = "behind"`: queued entries past which writes are refused (100000).
    #[serde(default)]
    pub write_behind_max_queue: Option<u64>,
    /// `write = "behind"`: idle time after which another sidecar takes over an entry (30s).
    #[serde(default)]
    pub write_behind_claim_idle: Option<Human>,
    /// `write = "behind"`: age of the oldest queued entry past which writes are refused
    /// (unset or "0": no bound).
    #[serde(default)]
    pub write_behind_max_lag: Option<Human>,
    /// `write = "behind"` on a Redis Cluster: how often one sidecar of the fleet looks in every
    /// slot for entries no running sidecar reads (1m).
    #[serde(default)]
    pub write_behind_sweep_every: Option<Human>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            key: String::new(),
            query: String::new(),
            shape: Self::default_shape(),
            ttl: Human::secs(3600),
            jitter: None,
            negative_ttl: Self::default_negative_ttl(),
            batch_query: None,
            write: Self::default_write(),
            write_query: None,
            delete_query: None,
            on_delete: None,
            invalidates: Vec::new(),
            refresh_ahead: None,
            stale_if_error: None,
            table: None,
            write_behind_max_attempts: None,
            write_behind_max_queue: None,
            write_behind_claim_idle: None,
            write_behind_max_lag: None,
            write_behind_sweep_every: None,
        }
    }
}

impl MappingConfig {
    fn default_write() -> String {
        "none".into()
    }
    fn default_shape() -> String {
        "json".into()
    }
    fn default_negative_ttl() -> Human {
        Human::secs(30)
    }
}

/// `[hot]`: the in-process tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HotConfig {
    pub max_size: Size,
    pub policy: String,
    pub coherence: String,
    pub channel: String,
    /// Broadcast mode: writes answered while an announcement is in flight share the next one.
    pub broadcast_batching: bool,
    /// Broadcast mode: announce a key on its namespace's channel `{channel}:<ns>`.
    pub channel_per_prefix: bool,
    /// Broadcast mode: `"keys"` (one RESP string per key) or `"packed"` (front-coded, one string).
    pub broadcast_encoding: String,
    /// Broadcast mode: announcements go through one elected sidecar of the fleet.
    pub broadcast_relay: bool,
}

impl Default for HotConfig {
    fn default() -> Self {
        Self {
            max_size: Size::mib(64),
            policy: "tinylfu".into(),
            coherence: "auto".into(),
            channel: "cacheside:invalidate".into(),
            broadcast_batching: true,
            channel_per_prefix: false,
            broadcast_encoding: "keys".into(),
            broadcast_relay: false,
        }
    }
}

/// One `[[cache]]` rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    pub keys: String,
    pub ttl: Human,
    #[serde(default = "CacheRule::default_max_value_size")]
    pub max_value_size: Size,
    #[serde(default = "CacheRule::default_enabled")]
    pub enabled: bool,
}

impl CacheRule {
    fn default_max_value_size() -> Size {
        Size::mib(1)
    }
    fn default_enabled() -> bool {
        true
    }
}

/// `[server]`: the client-facing RESP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_clients: usize,
    pub requirepass: Option<String>,
    pub requirepass_file: Option<PathBuf>,
    pub username: String,
    pub max_query_buffer: Size,
    pub max_bulk_len: Size,
    pub max_multibulk_len: usize,
    pub max_inline_len: Size,
    pub max_pending_replies: usize,
    pub worker_threads: usize,
    /// Certificate chain (PEM) for TLS on the listener; with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// How often the certificate files are read again (a renewed one is used for new
    /// connections); `"0"`: never.
    pub tls_reload_interval: Human,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6380".into(),
            max_clients: 10_000,
            requirepass: None,
            requirepass_file: None,
            username: "default".into(),
            max_query_buffer: Size(1 << 30),
            max_bulk_len: Size::mib(512),
            max_multibulk_len: 1024 * 1024,
            max_inline_len: Size::kib(64),
            max_pending_replies: 1024,
            worker_threads: 1,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_interval: Human::secs(10),
        }
    }
}

/// `[upstream]`: the Redis that cacheside forwards to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: Option<String>,
    /// RBAC user (also settable as `user:password@` in the URL).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub connections: usize,
    pub connect_timeout: Human,
    pub command_timeout: Human,
    pub reconnect_min: Human,
    pub reconnect_max: Human,
    /// CA bundle (PEM) for `rediss://`; unset: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) and key, for upstreams that require one.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Accept any certificate (tests only; logged as a warning).
    pub tls_insecure_skip_verify: bool,
    /// How often `tls_ca_file` and the client certificate's files are read again; `"0"`: never.
    pub tls_reload_interval: Human,
    /// `[upstream.iam]`: ElastiCache IAM authentication instead of a password.
    pub iam: Option<IamConfig>,
    /// `auto` (detect from the seed node), `standalone` or `cluster`.
    pub mode: String,
    /// Where read-only commands go: `primary`, `replica` or `prefer_replica`.
    pub read_from: String,
    /// A replication group's reader endpoint (same scheme and credentials as `url`).
    pub reader_url: Option<String>,
}

/// `[upstream.iam]`: mint an ElastiCache IAM token per connection as the AUTH password.
/// Unset fields are empty here so that `validate` can name the missing key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IamConfig {
    pub region: String,
    pub cache_name: String,
    pub user_id: String,
    pub serverless: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password_file: None,
            connections: 2,
            connect_timeout: Human::secs(1),
            command_timeout: Human::secs(2),
            reconnect_min: Human::millis(50),
            reconnect_max: Human::secs(5),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_insecure_skip_verify: false,
            tls_reload_interval: Human::secs(10),
            iam: None,
            mode: "auto".into(),
            read_from: "primary".into(),
            reader_url: None,
        }
    }
}

/// `[admin]`: the HTTP listener for the health endpoints, /metrics and POST /quitquitquit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9380".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[shutdown]`: the drain on SIGTERM, SIGINT or `POST /quitquitquit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Whole drain, from the signal to exit (min_drain included).
    pub grace_period: Human,
    /// Not ready but still accepting, so endpoints and load balancers stop sending first.
    pub min_drain: Human,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Human::secs(25),
            min_drain: Human::secs(5),
        }
    }
}

impl Config {
    /// Parses TOML text; errors keep toml's line and column.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads the file (if any), then applies environment overrides.
    pub fn load(path: Option<&Path>, vars: &dyn Vars) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::from_toml(&text, &origin)?.with_env(vars)
    }

    /// Applies `CACHESIDE_*` overrides (see [`ENV_KEYS`]).
    pub fn with_env(self, vars: &dyn Vars) -> Result<Self, ConfigError> {
        env::apply(self, vars)
    }

    /// The effective config as TOML with secrets masked (what `check-config` prints).
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.server.requirepass.is_some() {
            c.server.requirepass = Some("********".into());
        }
        if let Some(u) = &c.upstream.url {
            c.upstream.url = Some(url::redact(u));
        }
        if let Some(u) = &c.postgres.url {
            c.postgres.url = Some(url::redact(u));
        }
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The message validating `toml` fails with (tests of each section's checks).
#[cfg(test)]
pub(crate) fn validation_error(toml: &str) -> String {
    Config::from_toml(toml, "t")
        .and_then(Config::validate)
        .unwrap_err()
        .to_string()
}
