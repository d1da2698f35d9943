//! Invalidation from database changes (`postgres.notify`): writes that bypass cacheside (another
//! service, psql, a migration) still invalidate.
//!
//! `cacheside db install-notify` installs a trigger on each table the mappings read; it sends
//! the table and the changed rows' key columns (the columns named like the key's captures, old
//! and new values) with `pg_notify` when the transaction commits. Each sidecar LISTENs on a
//! connection of its own, maps every changed row back to the keys of the mappings that read the
//! table, and evicts them: from its hot tier, and upstream (`DEL` of the key, its fill lease and
//! its "not found" marker, so a load in flight of the old row cannot fill, and a new row is not
//! hidden by a remembered miss). While the LISTEN connection is down the hot tier is emptied
//! and bypassed: changes made meanwhile are unknown.

use super::{negative_key, Loader};
use crate::metrics::InvalidationSource;
use crate::protocol::request::encode_command;
use crate::tier::hot::HotTier;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Notifications heard but not yet applied, at most.
const QUEUE: usize = 65_536;

/// `schema.table` or `table`, unquoted identifiers.
pub fn is_table_name(t: &str) -> bool {
    let ident = |s: &str| {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    match t.split_once('.') {
        Some((schema, table)) => ident(schema) && ident(table),
        None => ident(t),
    }
}

/// The table a mapping's query reads: the name after its first `FROM`, lower-cased as
/// PostgreSQL folds unquoted names. `None` for anything else (a subquery, a quoted name).
pub fn table_of(query: &str) -> Option<String> {
    let lower = query.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let at = words.iter().position(|w| *w == "from")?;
    let name = words.get(at + 1)?;
    is_table_name(name).then(|| name.to_string())
}

/// The SQL that installs the trigger function and one trigger per table the mappings read.
pub fn install_sql(mappings: &[(String, Vec<String>)], channel: &str) -> String {
    // Per table, every key column any mapping of it captures.
    let mut tables: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (table, columns) in mappings {
        if table.is_empty() {
            continue;
        }
        let cols = tables.entry(table.as_str()).or_default();
        cols.extend(columns.iter().map(String::as_str));
    }
    let mut sql = format!(
        r#"-- cacheside: NOTIFY '{channel}' with the key columns of rows that change.
CREATE OR REPLACE FUNCTION cacheside_notify() RETURNS trigger LANGUAGE plpgsql AS $cacheside$
DECLARE
  changed jsonb := '[]'::jsonb;
  r jsonb;
  one jsonb;
  i int;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify('{channel}', json_build_object('s', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME, 'op', TG_OP)::text);
    RETURN NULL;
  END IF;
  FOREACH r IN ARRAY ARRAY[
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
  ] LOOP
    IF r IS NOT NULL THEN
      one := '{{}}'::jsonb;
      FOR i IN 0 .. TG_NARGS - 1 LOOP
        one := one || jsonb_build_object(TG_ARGV[i], r -> TG_ARGV[i]);
      END LOOP;
      changed := changed || jsonb_build_array(one);
    END IF;
  END LOOP;
  PERFORM pg_notify('{channel}', json_build_object('s', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME, 'op', TG_OP, 'r', changed)::text);
  RETURN NULL;
END
$cacheside$;
"#
    );
    for (table, cols) in tables {
        let trigger = format!("cacheside_notify_{}", table.replace('.', "_"));
        let args: Vec<String> = cols.iter().map(|c| format!("'{c}'")).collect();
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table}\n  FOR EACH ROW EXECUTE FUNCTION cacheside_notify({});\n\
             CREATE OR REPLACE TRIGGER {trigger}_truncate AFTER TRUNCATE ON {table}\n  FOR EACH STATEMENT EXECUTE FUNCTION cacheside_notify();\n",
            args.join(", ")
        ));
    }
    sql
}

/// What one notification asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// These keys changed.
    Keys(Vec<Bytes>),
    /// A mapped table was truncated: every key of it may have changed.
    All,
    /// Nothing this sidecar maps.
    None,
}

impl Loader {
    /// The `(table, capture names)` of every mapping, for `install_sql`.
    pub fn notify_tables(&self) -> Vec<(String, Vec<String>)> {
        self.mappings
            .load()
            .iter()
            .map(|m| {
                let caps = m.pattern.captures().into_iter().map(String::from).collect();
                (m.table.clone(), caps)
            })
            .collect()
    }

    /// Maps a notification's payload to the keys it changes.
    pub fn change(&self, payload: &str) -> Change {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
            return Change::None;
        };
        let (schema, table) = (
            v.get("s").and_then(|s| s.as_str()).unwrap_or("public"),
            v.get("t").and_then(|t| t.as_str()).unwrap_or(""),
        );
        let reads = |mt: &str| match mt.split_once('.') {
            Some((s, t)) => s == schema && t == table,
            None => mt == table,
        };
        let all = self.mappings.load();
        let mapped: Vec<_> = all.iter().filter(|m| reads(&m.table)).collect();
        if mapped.is_empty() {
            return Change::None;
        }
        if v.get("op").and_then(|o| o.as_str()) == Some("TRUNCATE") {
            return Change::All;
        }
        let rows = v
            .get("r")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default();
        let mut keys = BTreeSet::new();
        for m in mapped {
            for row in &rows {
                let caps: Option<Vec<String>> = m
                    .pattern
                    .captures()
                    .iter()
                    .map(|c| match row.get(*c)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Null => None,
                        other => Some(other.to_string()),
                    })
                    .collect();
                if let Some(caps) = caps {
                    let refs: Vec<&[u8]> = caps.iter().map(|c| c.as_bytes()).collect();
                    keys.insert(Bytes::from(m.pattern.render(&refs)));
                }
            }
        }
        Change::Keys(keys.into_iter().collect())
    }
}

/// Listens for row changes until the process ends, reconnecting with backoff.
pub async fn listen(loader: Arc<Loader>, hot: Option<Arc<HotTier>>, channel: String) {
    let mut attempt = 0u32;
    loop {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        match loader.db.listen(&channel, tx).await {
            Ok(_client) => {
                loader.notify_metrics.listening.set(1);
                attempt = 0;
                if let Some(h) = &hot {
                    h.set_db_listening(true).await;
                }
                tracing::info!(channel, "listening for row changes (postgres.notify)");
                while let Some(payload) = rx.recv().await {
                    apply(&loader, hot.as_deref(), &payload).await;
                }
                loader.notify_metrics.listening.set(0);
                tracing::warn!(
                    channel,
                    "PostgreSQL LISTEN connection lost: hot tier bypassed until it is back"
                );
            }
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!(channel, error = %e, "cannot LISTEN for row changes: hot tier bypassed until it can");
                }
            }
        }
        if let Some(h) = &hot {
            h.set_db_listening(false).await;
        }
        tokio::time::sleep(crate::tier::redis::backoff(
            attempt,
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
        .await;
        attempt = attempt.saturating_add(1);
    }
}

/// Evicts what one notification changed: locally at once, then upstream (the key, its lease and
/// its "not found" marker), then locally again so no fill that raced the DEL stays.
async fn apply(loader: &Loader, hot: Option<&HotTier>, payload: &str) {
    let m = &loader.notify_metrics;
    m.notifications.inc();
    let keys = match loader.change(payload) {
        Change::None => return,
        Change::All => {
            if let Some(h) = hot {
                h.invalidate_all(InvalidationSource::DbNotify).await;
            }
            tracing::warn!("a mapped table was truncated: this sidecar's hot tier is emptied; keys in Redis expire by their TTL");
            return;
        }
        Change::Keys(keys) => keys,
    };
    if let Some(h) = hot {
        for k in &keys {
            h.invalidate(k, InvalidationSource::DbNotify).await;
        }
    }
    m.keys.inc_by(keys.len() as u64);
    if let Some(upstream) = loader.upstream.as_ref() {
        let mut bytes = Vec::new();
        let mut n = 0;
        for k in &keys {
            bytes.extend_from_slice(&encode_command(&[&b"DEL"[..], k, &negative_key(k)]));
            n += 1;
            if let Some(c) = loader.write_cleanup(k, false) {
                bytes.extend_from_slice(&c);
                n += 1;
            }
        }
        if let Err(e) = super::lease::call(upstream, Bytes::from(bytes), n).await {
            m.failed.inc();
            tracing::warn!(error = %e, keys = keys.len(), "row change heard but not applied upstream");
        }
    }
    if let Some(h) = hot {
        for k in &keys {
            h.evict(k).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_first_plain_from() {
        assert_eq!(
            table_of("SELECT id, name FROM products WHERE id = $1").as_deref(),
            Some("products")
        );
        assert_eq!(
            table_of("select p.name from Shop.Products p, pg_sleep(1) where p.id = $1").as_deref(),
            Some("shop.products")
        );
        assert_eq!(table_of("SELECT 1"), None);
        assert_eq!(table_of("SELECT * FROM (SELECT 1) s"), None);
        assert_eq!(table_of("SELECT * FROM \"Quoted\""), None);
        assert!(
            is_table_name("public.products") && !is_table_name("a.b.c") && !is_table_name("1x")
        );
    }

    #[test]
    fn one_trigger_per_table_with_every_captured_column() {
        let sql = install_sql(
            &[
                ("products".into(), vec!["id".into()]),
                ("products".into(), vec!["category".into()]),
                ("users".into(), vec!["id".into()]),
                (String::new(), vec!["x".into()]),
            ],
            "chan",
        );
        assert!(sql.contains("pg_notify('chan'"));
        assert!(sql.contains(
            "CREATE OR REPLACE TRIGGER cacheside_notify_products AFTER INSERT OR UPDATE OR DELETE ON products\n  FOR EACH ROW EXECUTE FUNCTION cacheside_notify('category', 'id');"
        ));
        assert!(sql.contains("ON users\n  FOR EACH ROW EXECUTE FUNCTION cacheside_notify('id');"));
        assert!(sql.contains("cacheside_notify_users_truncate AFTER TRUNCATE ON users"));
        assert_eq!(sql.matches("FOR EACH ROW").count(), 2);
    }
}
