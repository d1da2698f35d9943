//! `CACHESIDE_*` environment overrides: one variable per config key, read through a `Vars` trait
//! so tests inject a map instead of mutating the process environment.

use super::{Config, ConfigError};
use std::collections::HashMap;

/// A source of environment variables.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct EnvVars;

impl Vars for EnvVars {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
}

/// Every scalar config key that an environment variable can set, with its TOML type.
/// A test checks this list against proxy.toml and the defaults, so it cannot drift.
pub const ENV_KEYS: &[(&str, Kind)] = &[
    ("server.listen", Kind::Str),
    ("server.max_clients", Kind::Int),
    ("server.requirepass", Kind::Str),
    ("server.requirepass_file", Kind::Str),
    ("server.username", Kind::Str),
    ("server.max_query_buffer", Kind::Str),
    ("server.max_bulk_len", Kind::Str),
    ("server.max_multibulk_len", Kind::Int),
    ("server.max_inline_len", Kind::Str),
    ("server.max_pending_replies", Kind::Int),
    ("server.worker_threads", Kind::Int),
    ("server.tls_cert_file", Kind::Str),
    ("server.tls_key_file", Kind::Str),
    ("server.tls_reload_interval", Kind::Str),
    ("upstream.url", Kind::Str),
    ("upstream.username", Kind::Str),
    ("upstream.password_file", Kind::Str),
    ("upstream.connections", Kind::Int),
    ("upstream.connect_timeout", Kind::Str),
    ("upstream.command_timeout", Kind::Str),
    ("upstream.reconnect_min", Kind::Str),
    ("upstream.reconnect_max", Kind::Str),
    ("upstream.tls_ca_file", Kind::Str),
    ("upstream.tls_cert_file", Kind::Str),
    ("upstream.tls_key_file", Kind::Str),
    ("upstream.tls_insecure_skip_verify", Kind::Bool),
    ("upstream.tls_reload_interval", Kind::Str),
    ("upstream.iam.region", Kind::Str),
    ("upstream.iam.cache_name", Kind::Str),
    ("upstream.iam.user_id", Kind::Str),
    ("upstream.iam.serverless", Kind::Bool),
    ("upstream.mode", Kind::Str),
    ("upstream.read_from", Kind::Str),
    ("upstream.reader_url", Kind::Str),
    ("admin.listen", Kind::Str),
    ("log.level", Kind::Str),
    ("log.format", Kind::Str),
    ("shutdown.grace_period", Kind::Str),
    ("shutdown.min_drain", Kind::Str),
    ("hot.max_size", Kind::Str),
    ("hot.policy", Kind::Str),
    ("hot.coherence", Kind::Str),
    ("hot.channel", Kind::Str),
    ("hot.broadcast_batching", Kind::Bool),
    ("hot.channel_per_prefix", Kind::Bool),
    ("hot.broadcast_encoding", Kind::Str),
    ("hot.broadcast_relay", Kind::Bool),
    ("postgres.url", Kind::Str),
    ("postgres.password_file", Kind::Str),
    ("postgres.pool_size", Kind::Int),
    ("postgres.connect_timeout", Kind::Str),
    ("postgres.statement_timeout", Kind::Str),
    ("postgres.pool_timeout", Kind::Str),
    ("postgres.prepared_statements", Kind::Bool),
    ("postgres.lease", Kind::Str),
    ("postgres.breaker_failures", Kind::Int),
    ("postgres.breaker_cooldown", Kind::Str),
    ("postgres.wait_for_warm", Kind::Bool),
    ("postgres.tls", Kind::Str),
    ("postgres.ca_file", Kind::Str),
    ("postgres.notify", Kind::Bool),
    ("postgres.notify_channel", Kind::Str),
];

/// `server.max_clients` -> `CACHESIDE_SERVER_MAX_CLIENTS`.
pub fn env_name(key: &str) -> String {
    format!("CACHESIDE_{}", key.replace('.', "_").to_ascii_uppercase())
}

pub(super) fn apply(config: Config, vars: &dyn Vars) -> Result<Config, ConfigError> {
    let mut overrides = Vec::new();
    for &(key, kind) in ENV_KEYS {
        let var = env_name(key);
        if let Some(raw) = vars.get(&var) {
            let value = match kind {
                Kind::Str => toml::Value::String(raw),
                Kind::Int => raw
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        message: format!("{raw:?} is not an integer"),
                    })?,
                Kind::Bool => raw
                    .trim()
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        message: format!("{raw:?} is not true or false"),
                    })?,
            };
            overrides.push((key, var, value));
        }
    }
    if overrides.is_empty() {
        return Ok(config);
    }
    let mut table = toml::Table::try_from(&config).map_err(|e| ConfigError::Env {
        var: "CACHESIDE_*".into(),
        message: e.to_string(),
    })?;
    for (key, var, value) in &overrides {
        // `section.key` or `section.table.key`: tables on the way are made when absent.
        let (path, field) = key
            .rsplit_once('.')
            .expect("ENV_KEYS entries are section.key");
        let mut t = &mut table;
        for part in path.split('.') {
            let entry = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(inner) = entry else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("{part} is not a table"),
                });
            };
            t = inner;
        }
        t.insert(field.to_string(), value.clone());
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let names: Vec<&str> = overrides.iter().map(|(_, v, _)| v.as_str()).collect();
            ConfigError::Env {
                var: names.join(", "),
                message: e.message().to_string(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_the_file() {
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:7000\"\n", "t").unwrap();
        let c = c
            .with_env(&vars(&[
                ("CACHESIDE_SERVER_LISTEN", "127.0.0.1:7001"),
                ("CACHESIDE_UPSTREAM_CONNECTIONS", "4"),
                ("CACHESIDE_UPSTREAM_MODE", "cluster"),
            ]))
            .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7001");
        assert_eq!(c.upstream.connections, 4);
        assert_eq!(c.upstream.mode, "cluster");
    }

    #[test]
    fn env_sets_keys_of_nested_tables() {
        let c = Config::default()
            .with_env(&vars(&[
                ("CACHESIDE_UPSTREAM_IAM_REGION", "eu-west-1"),
                ("CACHESIDE_UPSTREAM_IAM_SERVERLESS", "true"),
            ]))
            .unwrap();
        let iam = c.upstream.iam.expect("upstream.iam made by the env");
        assert_eq!((iam.region.as_str(), iam.serverless), ("eu-west-1", true));
        assert_eq!(
            iam.cache_name, "",
            "unset keys stay empty for validate to name"
        );
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = Config::default()
            .with_env(&vars(&[("CACHESIDE_UPSTREAM_CONNECTIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CACHESIDE_UPSTREAM_CONNECTIONS"), "{err}");
        let err = Config::default()
            .with_env(&vars(&[("CACHESIDE_UPSTREAM_CONNECT_TIMEOUT", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CACHESIDE_UPSTREAM_CONNECT_TIMEOUT"), "{err}");
    }
}
