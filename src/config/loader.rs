//! `[postgres]` and `[[mapping]]` checked: the database settings and each read-through mapping
//! (its key pattern, query, shape, TTLs, table for `postgres.notify`, and write strategy keys).

use super::validate::{positive, read_secret};
use super::{Config, ConfigError};

pub(super) fn validate_loader(
    c: &Config,
) -> Result<
    (
        Option<crate::loader::DbSettings>,
        Vec<crate::loader::MappingSettings>,
    ),
    ConfigError,
> {
    use crate::loader::{Jitter, KeyPattern, MappingSettings, Shape};
    let p = &c.postgres;
    let db = match p.url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => {
            let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| {
                ConfigError::invalid(
                    "postgres.url",
                    format!("{:?}: {e}", super::url::redact(url)),
                )
            })?;
            if let Some(f) = &p.password_file {
                cfg.password(read_secret("postgres.password_file", f)?);
            }
            if p.pool_size == 0 || p.pool_size > 1024 {
                return Err(ConfigError::invalid(
                    "postgres.pool_size",
                    format!("{} must be between 1 and 1024", p.pool_size),
                ));
            }
            if p.breaker_failures == 0 {
                return Err(ConfigError::invalid(
                    "postgres.breaker_failures",
                    "0 must be >= 1",
                ));
            }
            if p.notify
                && (p.notify_channel.is_empty()
                    || p.notify_channel.len() > 63
                    || !p
                        .notify_channel
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(ConfigError::invalid(
                    "postgres.notify_channel",
                    format!(
                        "{:?} must be 1 to 63 letters, digits or _",
                        p.notify_channel
                    ),
                ));
            }
            Some(crate::loader::DbSettings {
                config: cfg,
                pool_size: p.pool_size,
                connect_timeout: positive("postgres.connect_timeout", p.connect_timeout.get())?,
                statement_timeout: positive(
                    "postgres.statement_timeout",
                    p.statement_timeout.get(),
                )?,
                pool_timeout: positive("postgres.pool_timeout", p.pool_timeout.get())?,
                prepared_statements: p.prepared_statements,
                breaker_failures: p.breaker_failures,
                breaker_cooldown: positive("postgres.breaker_cooldown", p.breaker_cooldown.get())?,
                tls: crate::loader::tls::PgTls::parse(&p.tls, p.ca_file.clone())
                    .map_err(|e| ConfigError::invalid("postgres.tls", e))?,
                notify: p.notify.then(|| p.notify_channel.clone()),
            })
        }
    };
    positive("postgres.lease", p.lease.get())?;
    let mut mappings: Vec<MappingSettings> = Vec::new();
    for (i, m) in c.mapping.iter().enumerate() {
        let key = |k: &str| format!("mapping[{i}].{k}");
        if m.name.is_empty()
            || !m
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                key("name"),
                format!("{:?} must be letters, digits, _ or -", m.name),
            ));
        }
        if mappings.iter().any(|o| o.name == m.name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("{:?} is used by another mapping", m.name),
            ));
        }
        let pattern = KeyPattern::parse(&m.key)
            .map_err(|e| ConfigError::invalid(key("key"), format!("{:?}: {e}", m.key)))?;
        if m.query.trim().is_empty() {
            return Err(ConfigError::invalid(key("query"), "must not be empty"));
        }
        let shape = Shape::parse(&m.shape).map_err(|e| ConfigError::invalid(key("shape"), e))?;
        let ttl = positive(&key("ttl"), m.ttl.get())?;
        let jitter = Jitter::parse(m.jitter.as_deref())
            .map_err(|e| ConfigError::invalid(key("jitter"), e))?;
        let negative_ttl = positive(&key("negative_ttl"), m.negative_ttl.get())?;
        let table = match m.table.as_deref().map(str::trim) {
            Some(t) if crate::loader::notify::is_table_name(t) => Some(t.to_string()),
            Some(t) => {
                return Err(ConfigError::invalid(
                    key("table"),
                    format!("{t:?} must be a table name (schema.table allowed, unquoted)"),
                ))
            }
            None => crate::loader::notify::table_of(&m.query),
        };
        if c.postgres.notify && table.is_none() {
            return Err(ConfigError::invalid(
                key("table"),
                "postgres.notify needs the table this mapping reads: its query has no plain FROM <table>; set table",
            ));
        }
        let write = super::strategy::write_settings(i, m)?;
        let refresh_ahead = super::strategy::refresh_ahead(i, m)?;
        let stale_if_error = match m.stale_if_error {
            Some(d) => Some(positive(&key("stale_if_error"), d.get())?),
            None => None,
        };
        mappings.push(MappingSettings {
            table: table.unwrap_or_default(),
            write,
            refresh_ahead,
            stale_if_error,
            name: m.name.clone(),
            batch_query: m.batch_query.clone(),
            pattern,
            query: m.query.clone(),
            shape,
            ttl,
            jitter,
            negative_ttl,
        });
    }
    if !mappings.is_empty() && db.is_none() {
        return Err(ConfigError::invalid(
            "postgres.url",
            "[[mapping]] entries need a database: set postgres.url (or --postgres, CACHESIDE_POSTGRES_URL)",
        ));
    }
    Ok((db, mappings))
}
