//! A mapping's write strategy, checked: whether SET/DEL of its keys go to PostgreSQL first
//! (write-through), the statements they run, and the related keys each write invalidates.

use super::KeyPattern;

/// What a DEL of a write-through key does in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Runs `delete_query`, then deletes the key in Redis.
    Statement,
    /// Only deletes (invalidates) the cached key, as for a mapping that is not written through.
    Invalidate,
}

/// Checked write settings of one mapping.
#[derive(Debug, Clone)]
pub struct WriteSettings {
    /// `write = "through"`: SET (HSET for hash shapes) runs `write_query` before Redis is told.
    pub through: bool,
    /// `write = "behind"` with a delete statement: DEL/UNLINK of a key is queued with the
    /// key's SETs (see `strategy::behind`), and the key reads as not found until it is applied.
    pub queued_delete: bool,
    pub write_query: Option<String>,
    pub delete_query: Option<String>,
    pub on_delete: OnDelete,
    /// `invalidates`: templates whose captures come from the key and from the old and new rows.
    pub invalidates: Vec<KeyPattern>,
}

impl Default for WriteSettings {
    fn default() -> Self {
        Self {
            through: false,
            queued_delete: false,
            write_query: None,
            delete_query: None,
            on_delete: OnDelete::Invalidate,
            invalidates: Vec::new(),
        }
    }
}

impl WriteSettings {
    /// Whether a DEL of a key runs a statement.
    pub fn deletes_rows(&self) -> bool {
        self.through && self.on_delete == OnDelete::Statement && self.delete_query.is_some()
    }
}

use super::postgres::Step;
use super::{params::Param, LoadError, Loader, Mapping};
use crate::tier::redis::Upstream;
use std::sync::Arc;
use tokio_postgres::types::Type;

/// What a write-through transaction did to a key's row.
#[derive(Debug, Default)]
pub struct Written {
    /// The row before the write, as the read query renders it (`None`: not asked for or absent).
    pub old: Option<String>,
    /// The row after the write.
    pub new: Option<String>,
}

/// A write-through's statement for one key.
pub enum Statement<'a> {
    /// `write_query` with the written value as its last parameter (text).
    Write(&'a [u8]),
    /// `delete_query`.
    Delete,
}

impl Loader {
    /// The upstream Redis the loader fills.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// Prepares a write-through mapping's statements with the types they are run with (the
    /// read query's capture types, then text for the value); the first failure names itself.
    pub(super) async fn prepare_writes(&self, m: &Mapping) -> Result<(), super::DbError> {
        let Some(types) = m.types.get() else {
            return Ok(());
        };
        let named = |what: &str, e: super::DbError| match e {
            super::DbError::Query(msg) => super::DbError::Query(format!("{what}: {msg}")),
            other => other,
        };
        if let Some(q) = &m.write.write_query {
            let mut t = types.clone();
            t.push(Type::TEXT);
            self.db
                .prepare_typed(q, &t)
                .await
                .map_err(|e| named("write_query", e))?;
        }
        if let Some(q) = &m.write.delete_query {
            self.db
                .prepare_typed(q, types)
                .await
                .map_err(|e| named("delete_query", e))?;
        }
        Ok(())
    }

    /// Runs a write-through statement for one key in a transaction and commits, reading the row
    /// before it (`old`) and after it (`new`) in the same transaction when asked.
    pub async fn write_row(
        &self,
        m: &Mapping,
        captures: &[bytes::Bytes],
        statement: Statement<'_>,
        old: bool,
        new: bool,
    ) -> Result<Written, LoadError> {
        let caps = self.params(m, captures).await?;
        let types = m.types.get().cloned().unwrap_or_default();
        let db_err = |err| LoadError::Db {
            mapping: m.name.clone(),
            err,
        };
        let (sql, params, stmt_types) = match statement {
            Statement::Write(value) => {
                let q = m.write.write_query.as_deref();
                let mut p = caps.clone();
                p.push(Param::Text(String::from_utf8_lossy(value).into_owned()));
                let mut t = types.clone();
                t.push(Type::TEXT);
                (q, p, t)
            }
            Statement::Delete => (m.write.delete_query.as_deref(), caps.clone(), types.clone()),
        };
        let Some(sql) = sql else {
            return Err(db_err(super::DbError::Query(
                "no statement configured for this write".into(),
            )));
        };
        let read = |rows: bool| Step {
            sql: &m.sql,
            params: &caps,
            types: &types,
            rows,
        };
        let mut steps = Vec::with_capacity(3);
        if old {
            steps.push(read(true));
        }
        steps.push(Step {
            sql,
            params: &params,
            types: &stmt_types,
            rows: false,
        });
        if new {
            steps.push(read(true));
        }
        let mut out = self.db.transaction(&steps).await.map_err(|err| {
            m.metrics.error(err.kind());
            db_err(err)
        })?;
        let mut first = |rows: Vec<String>| rows.into_iter().next();
        let new_row = if new {
            out.pop().and_then(&mut first)
        } else {
            None
        };
        let old_row = if old {
            out.into_iter().next().and_then(first)
        } else {
            None
        };
        Ok(Written {
            old: old_row,
            new: new_row,
        })
    }

    /// The row a key's read query returns now (no fill, no lease): for the related keys of a
    /// DEL that only invalidates.
    pub async fn current_row(
        &self,
        m: &Mapping,
        captures: &[bytes::Bytes],
    ) -> Result<Option<String>, LoadError> {
        let params = self.params(m, captures).await?;
        let types = m.types.get().cloned().unwrap_or_default();
        m.metrics.queries.inc();
        self.db
            .rows(&m.sql, &params, &types)
            .await
            .map(|rows| rows.into_iter().next())
            .map_err(|err| {
                m.metrics.error(err.kind());
                LoadError::Db {
                    mapping: m.name.clone(),
                    err,
                }
            })
    }
}

impl Loader {
    /// The lease, "not found" marker and stale copy of a mapped key, deleted with every write of it (so a
    /// load in flight gives way); `None` for keys no mapping declares.
    pub fn guard_keys(&self, key: &[u8]) -> Option<Vec<bytes::Bytes>> {
        let (m, _) = self.resolve(key)?;
        let mut keys = vec![super::lease::lease_key(key), super::negative_key(key)];
        if m.stale_if_error.is_some() {
            keys.push(super::stale::stale_key(key));
        }
        Some(keys)
    }

    /// Deletes rows of several keys in one transaction (each key's `delete_query`), reading
    /// each row first when `old` is set; the rows read, in order.
    pub async fn delete_rows(
        &self,
        items: &[(Arc<Mapping>, Vec<bytes::Bytes>)],
        old: bool,
    ) -> Result<Vec<Option<String>>, LoadError> {
        let mut prepared: Vec<(Vec<Param>, Vec<Type>, &str, &Mapping)> = Vec::new();
        for (m, caps) in items {
            let params = self.params(m, caps).await?;
            let types = m.types.get().cloned().unwrap_or_default();
            let sql = m
                .write
                .delete_query
                .as_deref()
                .unwrap_or("SELECT 1 WHERE false");
            prepared.push((params, types, sql, m));
        }
        let mut steps = Vec::new();
        for (params, types, sql, m) in &prepared {
            if old {
                steps.push(Step {
                    sql: &m.sql,
                    params,
                    types,
                    rows: true,
                });
            }
            steps.push(Step {
                sql,
                params,
                types,
                rows: false,
            });
        }
        let Some((_, _, _, first)) = prepared.first() else {
            return Ok(Vec::new());
        };
        let out = self.db.transaction(&steps).await.map_err(|err| {
            first.metrics.error(err.kind());
            LoadError::Db {
                mapping: first.name.clone(),
                err,
            }
        })?;
        Ok(if old {
            out.into_iter()
                .step_by(2)
                .map(|rows| rows.into_iter().next())
                .collect()
        } else {
            vec![None; items.len()]
        })
    }
}

/// A value as Redis returned it (a bulk string, or a hash as a RESP2 array); `None` for a null
/// or anything else.
pub fn value_of_reply(reply: &bytes::Bytes) -> Option<super::Loaded> {
    super::lease::from_reply(reply)
}
