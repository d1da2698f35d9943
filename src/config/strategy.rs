//! `[[mapping]]` write strategy keys (`write`, `write_query`, `delete_query`, `on_delete`,
//! `invalidates`): checked into [`WriteSettings`].

use super::{ConfigError, MappingConfig};
use crate::loader::write::{OnDelete, WriteSettings};
use crate::loader::KeyPattern;

/// A statement that is given and not blank.
fn set(q: &Option<String>) -> Option<String> {
    q.as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_string)
}

/// Checks mapping `i`'s write keys.
pub(super) fn write_settings(i: usize, m: &MappingConfig) -> Result<WriteSettings, ConfigError> {
    let key = |k: &str| format!("mapping[{i}].{k}");
    let mode = super::WriteMode::parse(Some(m.write.as_str()))
        .map_err(|e| ConfigError::invalid(key("write"), e))?;
    let through = mode == super::WriteMode::Through;
    let behind = mode == super::WriteMode::Behind;
    // write = "behind" takes its write_query in `deferred`; here it is not a write-through one.
    let write_query = if behind { None } else { set(&m.write_query) };
    let delete_query = set(&m.delete_query);
    if through && write_query.is_none() {
        return Err(ConfigError::invalid(
            key("write_query"),
            "write = \"through\" needs the statement a SET runs",
        ));
    }
    if !through {
        for (k, q) in [
            ("write_query", &write_query),
            ("delete_query", &delete_query.clone().filter(|_| !behind)),
        ] {
            if q.is_some() {
                return Err(ConfigError::invalid(
                    key(k),
                    "is used only with write = \"through\" or \"behind\"",
                ));
            }
        }
    }
    let on_delete = match (m.on_delete.as_deref(), &delete_query) {
        (None, Some(_)) | (Some("statement"), Some(_)) => OnDelete::Statement,
        (None, None) | (Some("invalidate"), _) => OnDelete::Invalidate,
        (Some("statement"), None) => {
            return Err(ConfigError::invalid(
                key("on_delete"),
                "\"statement\" needs delete_query",
            ))
        }
        (Some(other), _) => {
            return Err(ConfigError::invalid(
                key("on_delete"),
                format!("{other:?} must be \"statement\" or \"invalidate\""),
            ))
        }
    };
    let invalidates = m
        .invalidates
        .iter()
        .enumerate()
        .map(|(j, t)| {
            KeyPattern::parse(t).map_err(|e| {
                ConfigError::invalid(
                    format!("mapping[{i}].invalidates[{j}]"),
                    format!("{t:?}: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // write = "behind": a DEL is queued like a SET and runs the statement in the worker.
    let queued_delete = behind && on_delete == OnDelete::Statement && delete_query.is_some();
    Ok(WriteSettings {
        through,
        queued_delete,
        write_query,
        delete_query,
        on_delete,
        invalidates,
    })
}

/// Checks mapping `i`'s `refresh_ahead`: the share of the TTL, as a fraction.
pub(super) fn refresh_ahead(i: usize, m: &MappingConfig) -> Result<Option<f64>, ConfigError> {
    let Some(text) = m.refresh_ahead.as_deref().map(str::trim) else {
        return Ok(None);
    };
    let share = text
        .strip_suffix('%')
        .and_then(|p| p.trim().parse::<f64>().ok())
        .filter(|p| *p > 0.0 && *p < 100.0);
    match share {
        Some(p) => Ok(Some(p / 100.0)),
        None => Err(ConfigError::invalid(
            format!("mapping[{i}].refresh_ahead"),
            format!("{text:?} must be a percentage of the ttl between 0% and 100%, like \"10%\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(f: impl FnOnce(&mut MappingConfig)) -> Result<WriteSettings, String> {
        let mut m = MappingConfig {
            name: "product".into(),
            key: "product:{id}".into(),
            query: "SELECT 1".into(),
            ..MappingConfig::default()
        };
        f(&mut m);
        write_settings(0, &m).map_err(|e| e.to_string())
    }

    #[test]
    fn write_through_needs_its_statement() {
        let e = mapping(|m| m.write = "through".into()).unwrap_err();
        assert!(e.contains("mapping[0].write_query"), "{e}");
        // write = "behind" is checked with its own keys (config::deferred).
        assert!(!mapping(|m| m.write = "behind".into()).unwrap().through);
        let e = mapping(|m| m.write = "sideways".into()).unwrap_err();
        assert!(e.contains("mapping[0].write"), "{e}");
        let e = mapping(|m| m.write_query = Some("UPDATE x".into())).unwrap_err();
        assert!(e.contains("only with write"), "{e}");
    }

    #[test]
    fn on_delete_defaults_to_the_statement_when_there_is_one() {
        let w = mapping(|m| {
            m.write = "through".into();
            m.write_query = Some("UPDATE x".into());
            m.delete_query = Some("DELETE x".into());
        })
        .unwrap();
        assert_eq!(w.on_delete, OnDelete::Statement);
        assert!(w.deletes_rows());
        let w = mapping(|m| {
            m.write = "through".into();
            m.write_query = Some("UPDATE x".into());
            m.delete_query = Some("DELETE x".into());
            m.on_delete = Some("invalidate".into());
        })
        .unwrap();
        assert!(!w.deletes_rows());
        let e = mapping(|m| {
            m.write = "through".into();
            m.write_query = Some("UPDATE x".into());
            m.on_delete = Some("statement".into());
        })
        .unwrap_err();
        assert!(e.contains("mapping[0].on_delete"), "{e}");
    }

    #[test]
    fn refresh_ahead_is_a_share_of_the_ttl() {
        let m = |v: &str| MappingConfig {
            refresh_ahead: Some(v.into()),
            ..MappingConfig::default()
        };
        assert_eq!(refresh_ahead(0, &m("10%")).unwrap(), Some(0.1));
        for bad in ["0%", "100%", "10", "ten%"] {
            let e = refresh_ahead(0, &m(bad)).unwrap_err().to_string();
            assert!(e.contains("mapping[0].refresh_ahead"), "{e}");
        }
        assert_eq!(refresh_ahead(0, &MappingConfig::default()).unwrap(), None);
    }

    #[test]
    fn related_templates_are_key_patterns() {
        let w = mapping(|m| m.invalidates = vec!["products:category:{category}".into()]).unwrap();
        assert_eq!(w.invalidates[0].captures(), vec!["category"]);
        let e = mapping(|m| m.invalidates = vec!["x:{".into()]).unwrap_err();
        assert!(e.contains("mapping[0].invalidates[0]"), "{e}");
    }
}
