//! What a new config changes that only a restart applies: named by key path, never by value
//! (values may be secrets).

use crate::config::Config;
use crate::strategy::behind::BehindSettings;
use serde::Serialize;

/// The sections read once at start (listeners, upstream, database, hot tier sizing and
/// coherence, logging, drain timings, counters), each as a TOML value to compare key by key.
fn sections(c: &Config) -> [(&'static str, Option<toml::Value>); 8] {
    fn v<T: Serialize>(t: &T) -> Option<toml::Value> {
        toml::Value::try_from(t).ok()
    }
    [
        ("server", v(&c.server)),
        ("upstream", v(&c.upstream)),
        ("admin", v(&c.admin)),
        ("log", v(&c.log)),
        ("shutdown", v(&c.shutdown)),
        ("hot", v(&c.hot)),
        ("postgres", v(&c.postgres)),
        ("counter", v(&c.counter)),
    ]
}

/// The key paths whose values differ between `old` and `new` (both from one section).
fn changed_keys(
    path: &str,
    old: Option<&toml::Value>,
    new: Option<&toml::Value>,
    out: &mut Vec<String>,
) {
    match (old, new) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                changed_keys(&format!("{path}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (a, b) if a != b => out.push(path.to_string()),
        _ => {}
    }
}

/// Every setting that differs and is applied only at start, by key path (`upstream.url`,
/// `warm`, `mapping "orders" write-behind`).
pub fn needs_restart(
    old: &Config,
    new: &Config,
    old_behind: &[BehindSettings],
    new_behind: &[BehindSettings],
) -> Vec<String> {
    let mut out = Vec::new();
    for ((name, a), (_, b)) in sections(old).into_iter().zip(sections(new)) {
        changed_keys(name, a.as_ref(), b.as_ref(), &mut out);
    }
    if old.warm != new.warm {
        out.push("warm".into());
    }
    if old_behind != new_behind {
        let mut names: Vec<&str> = old_behind
            .iter()
            .chain(new_behind)
            .map(|b| b.mapping.as_str())
            .filter(|n| {
                old_behind.iter().find(|b| b.mapping == *n)
                    != new_behind.iter().find(|b| b.mapping == *n)
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        for n in names {
            out.push(format!("mapping {n:?} write-behind"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::needs_restart;
    use crate::config::Config;

    #[test]
    fn restart_settings_are_named_by_path_without_values() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.listen = "127.0.0.1:7000".into();
        new.upstream.url = Some("redis://:s3cret@10.0.0.1:6379".into());
        new.hot.coherence = "ttl".into();
        let named = needs_restart(&old, &new, &[], &[]);
        assert_eq!(named, ["server.listen", "upstream.url", "hot.coherence"]);
        assert!(named.iter().all(|n| !n.contains("s3cret")));
    }

    #[test]
    fn rules_and_mappings_need_no_restart() {
        let old = Config::default();
        let new: Config = toml::from_str(
            "[[cache]]\nkeys = \"p:*\"\nttl = \"5s\"\n\n[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1\"\nttl = \"1m\"\n",
        )
        .expect("parses");
        assert!(needs_restart(&old, &new, &[], &[]).is_empty());
    }
}
