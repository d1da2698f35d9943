//! `Config::validate`: cross-field checks that turn plain config data into checked settings.
//! Every error names the key path and the bad value.

use super::{Config, ConfigError};
use crate::protocol::Limits;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Credentials a client must present to cacheside's own listener.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientAuth({}, ********)", self.username)
    }
}

pub use super::upstream::{Mode as UpstreamMode, ReadFrom, UpstreamSettings};

pub use crate::tier::hot::settings::{Coherence, HotSettings, RuleSettings};

/// Checked settings, built only by [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Validated {
    pub listen: SocketAddr,
    /// `server.tls_cert_file` / `tls_key_file`: the listener speaks TLS.
    pub listen_tls: Option<crate::transport::ListenerTls>,
    /// `server.tls_reload_interval` (zero: never).
    pub listen_tls_reload_interval: Duration,
    pub admin_listen: Option<SocketAddr>,
    pub max_clients: usize,
    pub client_auth: Option<ClientAuth>,
    pub limits: Limits,
    pub max_query_buffer: usize,
    pub max_pending_replies: usize,
    pub worker_threads: usize,
    pub upstream: Option<UpstreamSettings>,
    pub log_level: String,
    pub log_json: bool,
    /// From the signal to exit: min_drain, then the drain of open connections.
    pub grace_period: Duration,
    /// After the signal: not ready, still accepting new clients.
    pub min_drain: Duration,
    pub hot: HotSettings,
    /// `[postgres]`, when a database is configured.
    pub postgres: Option<crate::loader::DbSettings>,
    pub lease: Duration,
    pub mappings: Vec<crate::loader::MappingSettings>,
    /// `[[warm]]` entries: (mapping name, query).
    pub warm: Vec<(String, String)>,
    pub wait_for_warm: bool,
    /// `[[counter]]`s.
    pub counters: Vec<crate::strategy::counter::CounterSettings>,
    /// `[[mapping]]`s with `write = "behind"`.
    pub write_behind: Vec<crate::strategy::behind::BehindSettings>,
    pub config: Config,
}

fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{value:?} is not an address like \"127.0.0.1:6380\" or \"[::1]:6380\""),
        )
    })
}

pub(super) fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "\"0s\" must be > 0"));
    }
    Ok(d)
}

pub(super) fn read_secret(key: &str, path: &Path) -> Result<String, ConfigError> {
    super::upstream::secret_from_file(path).map_err(|m| ConfigError::invalid(key, m))
}

fn validate_hot(c: &Config) -> Result<HotSettings, ConfigError> {
    let h = &c.hot;
    if h.max_size.bytes() < 1024 {
        return Err(ConfigError::invalid(
            "hot.max_size",
            format!("\"{}\" must be at least 1KiB", h.max_size),
        ));
    }
    let lru = match h.policy.as_str() {
        "tinylfu" => false,
        "lru" => true,
        other => {
            return Err(ConfigError::invalid(
                "hot.policy",
                format!("{other:?} must be \"tinylfu\" or \"lru\""),
            ))
        }
    };
    let coherence = match h.coherence.as_str() {
        "auto" => Coherence::Auto,
        "tracking" => Coherence::Tracking,
        "broadcast" => Coherence::Broadcast,
        "ttl" => Coherence::Ttl,
        other => {
            return Err(ConfigError::invalid(
                "hot.coherence",
                format!("{other:?} must be one of auto, tracking, broadcast, ttl"),
            ))
        }
    };
    if h.channel.is_empty() {
        return Err(ConfigError::invalid("hot.channel", "must not be empty"));
    }
    let broadcast_packed = match h.broadcast_encoding.as_str() {
        "keys" => false,
        "packed" => true,
        other => {
            return Err(ConfigError::invalid(
                "hot.broadcast_encoding",
                format!("{other:?} must be \"keys\" or \"packed\""),
            ))
        }
    };
    // `{channel}:<ns>` (and the relay's `{channel}.relay`) must hash to the base channel's
    // slot, and `{channel}:*` must be a pattern that matches only those channels.
    if (h.channel_per_prefix || h.broadcast_relay)
        && h.channel.contains(['{', '}', '*', '?', '[', ']', '\\'])
    {
        let setting = if h.channel_per_prefix {
            "hot.channel_per_prefix"
        } else {
            "hot.broadcast_relay"
        };
        return Err(ConfigError::invalid(
            "hot.channel",
            format!(
                "{:?} must not contain any of {{ }} * ? [ ] \\ with {setting}",
                h.channel
            ),
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in c.cache.iter().enumerate() {
        let key = |k: &str| format!("cache[{i}].{k}");
        if r.keys.is_empty() {
            return Err(ConfigError::invalid(key("keys"), "must not be empty"));
        }
        if let Err(m) = crate::tier::hot::Pattern::parse(&r.keys) {
            return Err(ConfigError::invalid(
                key("keys"),
                format!("{:?}: {m}", r.keys),
            ));
        }
        if r.ttl.get().is_zero() {
            return Err(ConfigError::invalid(key("ttl"), "\"0s\" must be > 0"));
        }
        if r.max_value_size.bytes() == 0 {
            return Err(ConfigError::invalid(key("max_value_size"), "must be > 0"));
        }
        if r.enabled {
            rules.push(RuleSettings {
                pattern: r.keys.clone(),
                ttl: r.ttl.get(),
                max_value_size: r.max_value_size.bytes() as usize,
            });
        }
    }
    Ok(HotSettings {
        max_bytes: h.max_size.bytes(),
        lru,
        coherence,
        channel: h.channel.clone(),
        broadcast_batching: h.broadcast_batching,
        channel_per_prefix: h.channel_per_prefix,
        broadcast_packed,
        broadcast_relay: h.broadcast_relay,
        rules,
    })
}

/// `[shutdown]`: min_drain is spent inside grace_period, so it must leave time for the drain.
fn validate_shutdown(c: &Config) -> Result<(Duration, Duration), ConfigError> {
    let (grace, min) = (&c.shutdown.grace_period, &c.shutdown.min_drain);
    if min.get() >= grace.get() && !min.get().is_zero() {
        return Err(ConfigError::invalid(
            "shutdown.min_drain",
            format!("\"{min}\" must be shorter than shutdown.grace_period (\"{grace}\")"),
        ));
    }
    Ok((grace.get(), min.get()))
}

impl Config {
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let s = &self.server;
        let listen = addr("server.listen", &s.listen)?;
        let admin_listen = match self.admin.listen.trim() {
            "" => None,
            a => Some(addr("admin.listen", a)?),
        };
        let (grace_period, min_drain) = validate_shutdown(&self)?;
        if s.max_clients == 0 {
            return Err(ConfigError::invalid("server.max_clients", "0 must be >= 1"));
        }
        let password = match (&s.requirepass, &s.requirepass_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "server.requirepass_file",
                    "set either server.requirepass or server.requirepass_file, not both",
                ))
            }
            (Some(p), None) if p.is_empty() => None,
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(read_secret("server.requirepass_file", f)?),
            (None, None) => None,
        };
        if s.username.is_empty() || s.username.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "server.username",
                format!("{:?} must be one word", s.username),
            ));
        }
        let client_auth = password.map(|password| ClientAuth {
            username: s.username.clone(),
            password,
        });
        let max_bulk_len = s.max_bulk_len.bytes() as usize;
        let max_query_buffer = s.max_query_buffer.bytes() as usize;
        if max_bulk_len == 0 {
            return Err(ConfigError::invalid("server.max_bulk_len", "must be > 0"));
        }
        if max_query_buffer < max_bulk_len.min(64 * 1024) {
            return Err(ConfigError::invalid(
                "server.max_query_buffer",
                format!("\"{}\" must be at least 64KiB", s.max_query_buffer),
            ));
        }
        if s.max_multibulk_len == 0 || s.max_multibulk_len > i32::MAX as usize {
            return Err(ConfigError::invalid(
                "server.max_multibulk_len",
                format!("{} must be between 1 and {}", s.max_multibulk_len, i32::MAX),
            ));
        }
        let max_inline_len = s.max_inline_len.bytes() as usize;
        if max_inline_len < 64 {
            return Err(ConfigError::invalid(
                "server.max_inline_len",
                format!("\"{}\" must be at least 64B", s.max_inline_len),
            ));
        }
        if s.max_pending_replies == 0 {
            return Err(ConfigError::invalid(
                "server.max_pending_replies",
                "0 must be >= 1",
            ));
        }
        if s.worker_threads == 0 || s.worker_threads > 256 {
            return Err(ConfigError::invalid(
                "server.worker_threads",
                format!("{} must be between 1 and 256", s.worker_threads),
            ));
        }
        let limits = Limits {
            max_bulk_len,
            max_multibulk_len: s.max_multibulk_len,
            max_inline_len,
        };

        let listen_tls = match (&s.tls_cert_file, &s.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                crate::transport::ListenerTls::new(cert, key)
                    .map_err(|e| ConfigError::invalid(format!("server.{}", e.key), e.message))?,
            ),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "server.tls_key_file",
                    "must be set with server.tls_cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "server.tls_cert_file",
                    "must be set with server.tls_key_file",
                ))
            }
        };
        let upstream = super::upstream::validate(&self.upstream)?;

        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::invalid(
                    "log.format",
                    format!("{other:?} must be \"text\" or \"json\""),
                ))
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("{:?}: {e}", self.log.level),
            ));
        }
        let hot = validate_hot(&self)?;
        let (postgres, mappings) = super::loader::validate_loader(&self)?;
        let counters = super::deferred::counters(&self)?;
        let write_behind = super::deferred::write_behind(&self)?;
        if upstream
            .as_ref()
            .is_some_and(|u| u.mode == UpstreamMode::Cluster)
            && !hot.rules.is_empty()
            && hot.coherence == Coherence::Tracking
        {
            return Err(ConfigError::invalid(
                "hot.coherence",
                "\"tracking\" does not work on a Redis Cluster (use \"broadcast\" or \"auto\")",
            ));
        }
        if upstream
            .as_ref()
            .is_some_and(|u| u.mode == UpstreamMode::Cluster)
            && hot.channel_per_prefix
            && hot.coherence != Coherence::Ttl
        {
            if let Some(r) = hot.rules.iter().find(|r| {
                let p = crate::tier::hot::Pattern::parse(&r.pattern).expect("checked above");
                !p.is_literal() && !p.literal_prefix().contains(&b':')
            }) {
                return Err(ConfigError::invalid(
                    "hot.channel_per_prefix",
                    format!("on a Redis Cluster every [[cache]] rule must name its namespace (\"ns:...\"): {:?} can match any (shard channels have no patterns)", r.pattern),
                ));
            }
        }
        let mut warm = Vec::new();
        for (i, w) in self.warm.iter().enumerate() {
            if !mappings.iter().any(|m| m.name == w.mapping) {
                return Err(ConfigError::invalid(
                    format!("warm[{i}].mapping"),
                    format!("{:?} is not the name of a [[mapping]]", w.mapping),
                ));
            }
            if w.query.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("warm[{i}].query"),
                    "must not be empty",
                ));
            }
            warm.push((w.mapping.clone(), w.query.clone()));
        }
        Ok(Validated {
            counters,
            write_behind,
            warm,
            wait_for_warm: self.postgres.wait_for_warm,
            postgres,
            lease: self.postgres.lease.get(),
            mappings,
            hot,
            listen,
            listen_tls,
            listen_tls_reload_interval: s.tls_reload_interval.get(),
            admin_listen,
            max_clients: s.max_clients,
            client_auth,
            limits,
            max_query_buffer,
            max_pending_replies: s.max_pending_replies,
            worker_threads: s.worker_threads,
            upstream,
            log_level: self.log.level.clone(),
            log_json,
            grace_period,
            min_drain,
            config: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validation_error as err;

    #[test]
    fn errors_name_the_key_and_value() {
        assert_eq!(
            err("[upstream]\nurl = \"redis://h\"\ncommand_timeout = \"0s\"\n"),
            "upstream.command_timeout: \"0s\" must be > 0"
        );
        assert!(err("[server]\nlisten = \"nowhere\"\n").starts_with("server.listen: \"nowhere\""));
        assert!(err("[log]\nformat = \"xml\"\n").starts_with("log.format: \"xml\""));
        assert!(err("[upstream]\nurl = \"http://h\"\n").starts_with("upstream.url:"));
        assert_eq!(
            err("[shutdown]\ngrace_period = \"10s\"\nmin_drain = \"10s\"\n"),
            "shutdown.min_drain: \"10s\" must be shorter than shutdown.grace_period (\"10s\")"
        );
    }

    #[test]
    fn cache_rule_errors_name_the_rule() {
        assert_eq!(
            err("[[cache]]\nkeys = \"a:*\"\nttl = \"1s\"\n[[cache]]\nkeys = \"b:*\"\nttl = \"0s\"\n"),
            "cache[1].ttl: \"0s\" must be > 0"
        );
        assert!(err("[[cache]]\nkeys = \"a[b\"\nttl = \"1s\"\n").starts_with("cache[0].keys:"));
        assert!(err("[hot]\ncoherence = \"psychic\"\n").starts_with("hot.coherence:"));
        assert!(err("[hot]\nbroadcast_encoding = \"zip\"\n").starts_with("hot.broadcast_encoding:"));
        assert!(err("[hot]\nbroadcast_relay = true\nchannel = \"a{b}\"\n")
            .ends_with("with hot.broadcast_relay"));
    }

    #[test]
    fn toml_errors_keep_line_and_column() {
        let e = err("[server]\nmax_clients = \"lots\"\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("[server]\nlisten_typo = 1\n");
        assert!(e.contains("unknown field") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn defaults_are_valid_and_listen_on_localhost() {
        let v = Config::default().validate().unwrap();
        assert!(v.listen.ip().is_loopback());
        assert_eq!(v.listen.port(), 6380);
        assert!(v.admin_listen.unwrap().ip().is_loopback());
        assert!(v.upstream.is_none());
    }
}
