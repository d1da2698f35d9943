//! `[[counter]]` sections and `write = "behind"` mappings: the strategies that apply writes to the
//! database later ([`crate::strategy::counter`], [`crate::strategy::behind`]), and their checks.

use super::units::Human;
use super::{Config, ConfigError};
use crate::loader::KeyPattern;
use crate::strategy::behind::BehindSettings;
use crate::strategy::counter::CounterSettings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One `[[counter]]`: INCR/INCRBY/DECR/DECRBY of matching keys, with the deltas moved to
/// PostgreSQL by `flush_query` every `flush_every`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// Used in metric labels and in the names of cacheside's own keys; default: `key`.
    #[serde(default)]
    pub name: Option<String>,
    pub key: String,
    /// `$1..$n` are the key's captures, the last parameter the delta.
    pub flush_query: String,
    #[serde(default = "CounterConfig::default_flush_every")]
    pub flush_every: Human,
    /// Flush a key early once the deltas routed through this sidecar reach this (absolute).
    #[serde(default)]
    pub flush_threshold: Option<u64>,
    /// Cluster mode: how often one sidecar of the fleet looks in every slot for deltas left by
    /// sidecars that died.
    #[serde(default = "CounterConfig::default_sweep_every")]
    pub sweep_every: Human,
}

impl CounterConfig {
    fn default_flush_every() -> Human {
        Human::secs(1)
    }

    pub fn default_sweep_every() -> Human {
        Human::secs(60)
    }
}

/// How writes to a mapping's keys reach the database (`[[mapping]] write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Writes go to Redis only (the default).
    #[default]
    None,
    /// The database first, then Redis (see `config::strategy`).
    Through,
    /// Acknowledged once durably queued in Redis; a worker applies them to PostgreSQL.
    Behind,
}

impl WriteMode {
    /// The one place `write = "..."` is read.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.map(str::trim) {
            None | Some("none") => Ok(Self::None),
            Some("through") => Ok(Self::Through),
            Some("behind") => Ok(Self::Behind),
            Some(other) => Err(format!(
                "{other:?} must be \"none\", \"through\" or \"behind\""
            )),
        }
    }
}

/// Checks every `[[counter]]`.
pub(super) fn counters(c: &Config) -> Result<Vec<CounterSettings>, ConfigError> {
    let mut out: Vec<CounterSettings> = Vec::new();
    for (i, k) in c.counter.iter().enumerate() {
        let key = |f: &str| format!("counter[{i}].{f}");
        let pattern = KeyPattern::parse(&k.key)
            .map_err(|e| ConfigError::invalid(key("key"), format!("{:?}: {e}", k.key)))?;
        let name = k.name.clone().unwrap_or_else(|| k.key.clone());
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("{name:?} must be a word without spaces"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("{name:?} is used by another counter"),
            ));
        }
        let params = pattern.captures().len() + 1;
        if !k.flush_query.contains(&format!("${params}")) {
            return Err(ConfigError::invalid(
                key("flush_query"),
                format!(
                    "{:?} must use ${params} (the delta; $1..${} are the key's captures)",
                    k.flush_query,
                    params - 1
                ),
            ));
        }
        let flush_every = super::validate::positive(&key("flush_every"), k.flush_every.get())?;
        if k.flush_threshold == Some(0) {
            return Err(ConfigError::invalid(
                key("flush_threshold"),
                "0 must be >= 1",
            ));
        }
        let sweep_every = super::validate::positive(&key("sweep_every"), k.sweep_every.get())?;
        out.push(CounterSettings {
            name,
            pattern,
            flush_query: k.flush_query.clone(),
            flush_every,
            flush_threshold: k.flush_threshold,
            sweep_every,
        });
    }
    if !out.is_empty()
        && c.postgres
            .url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            "postgres.url",
            "[[counter]] entries need a database: set postgres.url (or --postgres, CACHESIDE_POSTGRES_URL)",
        ));
    }
    if !out.is_empty()
        && c.upstream
            .url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            "upstream.url",
            "[[counter]] entries need an upstream Redis (the counters live there)",
        ));
    }
    Ok(out)
}

/// The smallest `write_behind_max_lag`: below it, the twice-a-second reading would decide.
const MIN_LAG: Duration = Duration::from_secs(1);

/// The `write = "behind"` mappings' settings; other write keys on a mapping without it are
/// errors, so a typo never silently leaves writes out of the database.
pub(super) fn write_behind(c: &Config) -> Result<Vec<BehindSettings>, ConfigError> {
    let mut out = Vec::new();
    for (i, m) in c.mapping.iter().enumerate() {
        let key = |f: &str| format!("mapping[{i}].{f}");
        let mode = WriteMode::parse(Some(m.write.as_str()))
            .map_err(|e| ConfigError::invalid(key("write"), e))?;
        if mode != WriteMode::Behind {
            for (f, set) in [
                // write = "through" uses write_query too (checked in `strategy`).
                (
                    "write_query",
                    m.write_query.is_some() && mode != WriteMode::Through,
                ),
                (
                    "write_behind_max_attempts",
                    m.write_behind_max_attempts.is_some(),
                ),
                ("write_behind_max_queue", m.write_behind_max_queue.is_some()),
                (
                    "write_behind_claim_idle",
                    m.write_behind_claim_idle.is_some(),
                ),
                ("write_behind_max_lag", m.write_behind_max_lag.is_some()),
                (
                    "write_behind_sweep_every",
                    m.write_behind_sweep_every.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key(f),
                        if f == "write_query" {
                            "is used only with write = \"through\" or \"behind\""
                        } else {
                            "is used only with write = \"behind\""
                        },
                    ));
                }
            }
            continue;
        }
        let pattern = KeyPattern::parse(&m.key)
            .map_err(|e| ConfigError::invalid(key("key"), format!("{:?}: {e}", m.key)))?;
        if m.shape == "hash" {
            return Err(ConfigError::invalid(
                key("write"),
                "\"behind\" takes SET/SETEX/PSETEX values: not a hash shape",
            ));
        }
        if !m.invalidates.is_empty() && !c.postgres.notify {
            // Related keys must go after the worker's commit, not at the client's write (a
            // reload before the commit would cache the old list again): row notifications do
            // exactly that, for the old and the new row.
            return Err(ConfigError::invalid(
                key("invalidates"),
                "a write-behind mapping's writes reach the database later, in the worker: set postgres.notify = true (and install the triggers) so the rows it writes evict the related keys",
            ));
        }
        let Some(query) = m.write_query.clone().filter(|q| !q.trim().is_empty()) else {
            return Err(ConfigError::invalid(
                key("write_query"),
                "must be set with write = \"behind\"",
            ));
        };
        let last = pattern.captures().len() + 1;
        if !query.contains(&format!("${last}")) {
            return Err(ConfigError::invalid(
                key("write_query"),
                format!("{query:?} must use ${last} (the written value; $1..${} are the key's captures)", last - 1),
            ));
        }
        let max_attempts = m.write_behind_max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            return Err(ConfigError::invalid(
                key("write_behind_max_attempts"),
                "0 must be >= 1",
            ));
        }
        let max_queue = m.write_behind_max_queue.unwrap_or(100_000);
        if max_queue == 0 {
            return Err(ConfigError::invalid(
                key("write_behind_max_queue"),
                "0 must be >= 1",
            ));
        }
        let claim_idle = match m.write_behind_claim_idle {
            Some(h) => super::validate::positive(&key("write_behind_claim_idle"), h.get())?,
            None => Duration::from_secs(30),
        };
        let sweep_every = match m.write_behind_sweep_every {
            Some(h) => super::validate::positive(&key("write_behind_sweep_every"), h.get())?,
            None => Duration::from_secs(60),
        };
        let max_lag = m
            .write_behind_max_lag
            .map(|h| h.get())
            .filter(|d| !d.is_zero());
        if let Some(lag) = max_lag.filter(|d| *d < MIN_LAG) {
            return Err(ConfigError::invalid(
                key("write_behind_max_lag"),
                format!(
                    "{:?} must be 0 (no bound) or at least 1s (the lag is read twice a second)",
                    Human(lag).to_string()
                ),
            ));
        }
        if c.upstream
            .url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "upstream.url",
                "write = \"behind\" needs an upstream Redis (the queue is a stream there)",
            ));
        }
        out.push(BehindSettings {
            mapping: m.name.clone(),
            pattern,
            write_query: query,
            delete_query: m
                .delete_query
                .clone()
                .filter(|q| !q.trim().is_empty() && m.on_delete.as_deref() != Some("invalidate")),
            max_attempts,
            max_queue,
            max_lag,
            claim_idle,
            sweep_every,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validation_error as err;

    #[test]
    fn write_behind_related_keys_need_row_notifications() {
        let m = "[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1 FROM t WHERE id = $1\"\nttl = \"1m\"\nwrite = \"behind\"\nwrite_query = \"UPDATE t SET v = $2 WHERE id = $1\"\ninvalidates = [\"l:{id}\"]\n";
        let e = err(&format!("{BASE}{m}"));
        assert!(
            e.contains("mapping[0].invalidates") && e.contains("postgres.notify"),
            "{e}"
        );
        let with_notify = BASE.replace("[postgres]\n", "[postgres]\nnotify = true\n");
        let c = Config::from_toml(&format!("{with_notify}{m}"), "t").unwrap();
        assert!(write_behind(&c).is_ok());
    }

    const BASE: &str = "[upstream]\nurl = \"redis://h\"\n[postgres]\nurl = \"postgres://u@h/d\"\n";

    #[test]
    fn counter_errors_name_the_counter_and_key() {
        let e = err(&format!(
            "{BASE}[[counter]]\nkey = \"p:{{id}}:views\"\nflush_query = \"UPDATE t SET v = v + $1\"\n"
        ));
        assert!(e.starts_with("counter[0].flush_query:"), "{e}");
        let e = err(&format!(
            "{BASE}[[counter]]\nkey = \"p:{{id}}\"\nflush_query = \"UPDATE t SET v = v + $2 WHERE id = $1\"\nflush_every = \"0s\"\n"
        ));
        assert_eq!(e, "counter[0].flush_every: \"0s\" must be > 0");
        let e = err("[[counter]]\nkey = \"p:{id}\"\nflush_query = \"$1 $2\"\n");
        assert!(e.starts_with("postgres.url:"), "{e}");
    }

    #[test]
    fn a_counter_defaults_to_one_second_and_its_key_as_name() {
        let v = Config::from_toml(
            &format!("{BASE}[[counter]]\nkey = \"p:{{id}}:views\"\nflush_query = \"UPDATE t SET v = v + $2 WHERE id = $1\"\n"),
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.counters[0].name, "p:{id}:views");
        assert_eq!(v.counters[0].flush_every, std::time::Duration::from_secs(1));
        assert_eq!(
            v.counters[0].sweep_every,
            std::time::Duration::from_secs(60)
        );
    }

    #[test]
    fn counters_and_write_behind_run_on_a_cluster() {
        let cluster = BASE.replace(
            "url = \"redis://h\"\n",
            "url = \"redis://h\"\nmode = \"cluster\"\n",
        );
        let counter = "[[counter]]\nname = \"views\"\nkey = \"p:{id}:views\"\nflush_query = \"UPDATE t SET v = v + $2 WHERE id = $1\"\nsweep_every = \"30s\"\n";
        let v = Config::from_toml(&format!("{cluster}{counter}"), "t")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.counters[0].sweep_every, Duration::from_secs(30));
        let behind = "[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1\"\nttl = \"1h\"\nwrite = \"behind\"\nwrite_query = \"INSERT $1 $2\"\n";
        let v = Config::from_toml(&format!("{cluster}{counter}{behind}"), "t")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.write_behind[0].sweep_every, Duration::from_secs(60));
        let v = Config::from_toml(
            &format!("{cluster}{behind}write_behind_sweep_every = \"10s\"\n"),
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.write_behind[0].sweep_every, Duration::from_secs(10));
        let e = err(&format!(
            "{cluster}{behind}write_behind_sweep_every = \"0s\"\n"
        ));
        assert_eq!(e, "mapping[0].write_behind_sweep_every: \"0s\" must be > 0");
        let e = err(&format!(
            "{BASE}{}sweep_every = \"0s\"\n",
            counter.replace("sweep_every = \"30s\"\n", "")
        ));
        assert_eq!(e, "counter[0].sweep_every: \"0s\" must be > 0");
    }

    #[test]
    fn write_behind_needs_its_query_and_rejects_stray_keys() {
        let m = "[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1\"\nttl = \"1h\"\n";
        let e = err(&format!("{BASE}{m}write = \"behind\"\n"));
        assert_eq!(
            e,
            "mapping[0].write_query: must be set with write = \"behind\""
        );
        let e = err(&format!("{BASE}{m}write_query = \"INSERT $1 $2\"\n"));
        assert_eq!(
            e,
            "mapping[0].write_query: is used only with write = \"through\" or \"behind\""
        );
        let e = err(&format!("{BASE}{m}write = \"sideways\"\n"));
        assert!(e.starts_with("mapping[0].write: \"sideways\""), "{e}");
        let e = err(&format!(
            "{BASE}{m}write = \"behind\"\nwrite_query = \"INSERT $1\"\n"
        ));
        assert!(e.starts_with("mapping[0].write_query:"), "{e}");
        let v = Config::from_toml(
            &format!("{BASE}{m}write = \"behind\"\nwrite_query = \"INSERT $1 $2\"\n"),
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.write_behind[0].max_attempts, 5);
        assert_eq!(v.write_behind[0].max_queue, 100_000);
        assert_eq!(v.write_behind[0].max_lag, None);
    }

    #[test]
    fn write_behind_max_lag_is_off_unset_or_zero_and_at_least_a_second() {
        let m = "[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1\"\nttl = \"1h\"\nwrite = \"behind\"\nwrite_query = \"INSERT $1 $2\"\n";
        let lag = |v: &str| {
            Config::from_toml(&format!("{BASE}{m}write_behind_max_lag = \"{v}\"\n"), "t")
                .unwrap()
                .validate()
                .map(|v| v.write_behind[0].max_lag)
        };
        assert_eq!(lag("0").unwrap(), None);
        assert_eq!(lag("90s").unwrap(), Some(Duration::from_secs(90)));
        let e = err(&format!("{BASE}{m}write_behind_max_lag = \"200ms\"\n"));
        assert_eq!(
            e,
            "mapping[0].write_behind_max_lag: \"200ms\" must be 0 (no bound) or at least 1s (the lag is read twice a second)"
        );
        let e = err(&format!(
            "{BASE}[[mapping]]\nname = \"p\"\nkey = \"p:{{id}}\"\nquery = \"SELECT 1\"\nttl = \"1h\"\nwrite_behind_max_lag = \"1m\"\n"
        ));
        assert_eq!(
            e,
            "mapping[0].write_behind_max_lag: is used only with write = \"behind\""
        );
    }

    #[test]
    fn write_mode_is_none_or_behind() {
        assert_eq!(WriteMode::parse(None), Ok(WriteMode::None));
        assert_eq!(WriteMode::parse(Some("behind")), Ok(WriteMode::Behind));
        assert!(WriteMode::parse(Some("sideways")).is_err());
    }
}
