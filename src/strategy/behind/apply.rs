//! One batch of write-behind entries applied to PostgreSQL in one transaction: per key only the
//! latest entry, each in a savepoint, and only if its stream id is newer than the one the
//! database last took for the key (`cacheside_write_versions`, updated in the same savepoint).

use super::BehindSettings;
use crate::loader::params::{self, Param};
use crate::loader::postgres::classify;
use crate::loader::{Database, DbError};
use bytes::{BufMut, Bytes, BytesMut};
use std::error::Error;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS cacheside_write_versions (
    mapping text NOT NULL,
    key bytea NOT NULL,
    ms bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (mapping, key)
)";

/// Takes the key's version if this entry is newer: one row means "apply it".
const VERSION: &str =
    "INSERT INTO cacheside_write_versions (mapping, key, ms, seq) VALUES ($1, $2, $3, $4)
ON CONFLICT (mapping, key) DO UPDATE SET ms = EXCLUDED.ms, seq = EXCLUDED.seq
WHERE (cacheside_write_versions.ms, cacheside_write_versions.seq) < (EXCLUDED.ms, EXCLUDED.seq)";

/// A stream entry id, `<ms>-<seq>`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StreamId(pub(super) i64, pub(super) i64);

impl StreamId {
    pub(super) fn parse(text: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(text).ok()?;
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

/// One entry read from the stream.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The stream it was read from (on a cluster, its key's slot's).
    pub(super) stream: Bytes,
    pub(super) id: StreamId,
    pub(super) id_text: Bytes,
    pub(super) key: Bytes,
    /// The written value; empty for a deletion.
    pub(super) value: Bytes,
    /// A queued DEL/UNLINK: runs `delete_query`.
    pub(super) delete: bool,
}

/// What became of a key's latest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    /// Written by `write_query`.
    Written,
    /// The database already has this key from a later (or the same) entry.
    Older,
    /// The statement failed (a constraint, a bad value): retried up to `max_attempts`.
    Failed(String),
    /// Can never be applied (the key's captures do not convert): dead-lettered at once.
    Poison(String),
}

/// Takes the versions of a whole batch at once; returns the keys whose entry is newer.
const VERSIONS: &str = "INSERT INTO cacheside_write_versions (mapping, key, ms, seq)
SELECT $1, k, m, s FROM unnest($2::bytea[], $3::int8[], $4::int8[]) AS t(k, m, s)
ON CONFLICT (mapping, key) DO UPDATE SET ms = EXCLUDED.ms, seq = EXCLUDED.seq
WHERE (cacheside_write_versions.ms, cacheside_write_versions.seq) < (EXCLUDED.ms, EXCLUDED.seq)
RETURNING key";

/// Applies each entry of `latest` (one per key), in key order (so two sidecars lock version
/// rows in the same order and never deadlock each other), and returns what became of each.
/// `Err` when the database is unavailable or timed out: nothing is committed then.
///
/// First the whole batch in one go: one statement takes every version, then one statement per
/// newer key. If a statement fails, that transaction is rolled back and the batch is applied
/// again key by key, each in a savepoint, to find the entries that fail.
pub(super) async fn apply(
    db: &Database,
    s: &BehindSettings,
    latest: &mut [&Entry],
) -> Result<Vec<Applied>, DbError> {
    latest.sort_by(|a, b| a.key.cmp(&b.key));
    match whole(db, s, latest).await {
        Err(DbError::Query(_)) => key_by_key(db, s, latest).await,
        other => other,
    }
}

async fn prepare(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    prepared: bool,
) -> Result<tokio_postgres::Statement, DbError> {
    if prepared {
        tx.prepare_cached(sql).await
    } else {
        tx.prepare(sql).await
    }
    .map_err(|e| classify(&e))
}

async fn whole(
    db: &Database,
    s: &BehindSettings,
    latest: &[&Entry],
) -> Result<Vec<Applied>, DbError> {
    let (prepared, _) = db.statement_settings();
    let err = |e: tokio_postgres::Error| classify(&e);
    let mut conn = db.connection().await?;
    let tx = conn.transaction().await.map_err(err)?;
    let stmts = Statements::prepare(&tx, s, latest, prepared).await?;
    let versions = prepare(&tx, VERSIONS, prepared).await?;
    let mut out = vec![Applied::Older; latest.len()];
    let (mut at, mut keys, mut ms, mut seq, mut values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, e) in latest.iter().enumerate() {
        match stmts.bind(s, e) {
            Ok(v) => {
                at.push(i);
                keys.push(&e.key[..]);
                ms.push(e.id.0);
                seq.push(e.id.1);
                values.push(v);
            }
            Err(why) => out[i] = Applied::Poison(why),
        }
    }
    let rows = tx
        .query(&versions, &[&s.mapping, &keys, &ms, &seq])
        .await
        .map_err(err)?;
    let newer: std::collections::HashSet<Vec<u8>> = rows
        .iter()
        .filter_map(|r| r.try_get::<_, Vec<u8>>(0).ok())
        .collect();
    let mut refs: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    for (j, i) in at.into_iter().enumerate() {
        if newer.contains(keys[j]) {
            let stmt = stmts
                .of(latest[i])
                .expect("bound entries have their statement");
            refs.push((
                stmt,
                values[j].iter().map(|p| p as &(dyn ToSql + Sync)).collect(),
            ));
            out[i] = Applied::Written;
        }
    }
    // In flight together: the connection sends them as one pipeline.
    all(refs.iter().map(|(st, r)| tx.execute(*st, r)).collect())
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Polls every statement at once (tokio-postgres pipelines the statements in flight on one
/// connection) and returns the first error. After one fails the transaction is aborted, so the
/// others fail too; the caller rolls back.
async fn all<F>(futures: Vec<F>) -> Result<(), tokio_postgres::Error>
where
    F: std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
{
    use std::task::Poll;
    let mut slots: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for slot in slots.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(_)) => *slot = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

/// Errors that say the database is busy or slow, not that the entry is bad: the batch is
/// retried without counting an attempt.
fn transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::QUERY_CANCELED,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ]
    .iter()
    .any(|c| e.code() == Some(c))
}

async fn key_by_key(
    db: &Database,
    s: &BehindSettings,
    latest: &[&Entry],
) -> Result<Vec<Applied>, DbError> {
    let (prepared, limit) = db.statement_settings();
    let err = |e: tokio_postgres::Error| classify(&e);
    let mut conn = db.connection().await?;
    let mut tx = conn.transaction().await.map_err(err)?;
    let stmts = Statements::prepare(&tx, s, latest, prepared).await?;
    let version = prepare(&tx, VERSION, prepared).await?;
    let mut out = Vec::with_capacity(latest.len());
    for e in latest {
        let values = match stmts.bind(s, e) {
            Ok(v) => v,
            Err(why) => {
                out.push(Applied::Poison(why));
                continue;
            }
        };
        let sp = tx.savepoint("cacheside_wb").await.map_err(err)?;
        let result = async {
            let newer = sp
                .execute(&version, &[&s.mapping, &&e.key[..], &e.id.0, &e.id.1])
                .await?;
            if newer == 0 {
                return Ok(Applied::Older);
            }
            let refs: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let stmt = stmts.of(e).expect("bound entries have their statement");
            sp.execute(stmt, &refs).await?;
            Ok::<_, tokio_postgres::Error>(Applied::Written)
        }
        .await;
        match result {
            Ok(a) => {
                sp.commit().await.map_err(err)?;
                out.push(a);
            }
            Err(e) if transient(&e) => return Err(DbError::Timeout(limit)),
            Err(e) => match classify(&e) {
                DbError::Query(msg) => {
                    sp.rollback().await.map_err(err)?;
                    out.push(Applied::Failed(msg));
                }
                other => return Err(other),
            },
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// A batch's statements: `write_query`, and `delete_query` when the batch holds a deletion.
struct Statements {
    write: tokio_postgres::Statement,
    delete: Option<tokio_postgres::Statement>,
}

impl Statements {
    async fn prepare(
        tx: &deadpool_postgres::Transaction<'_>,
        s: &BehindSettings,
        latest: &[&Entry],
        prepared: bool,
    ) -> Result<Self, DbError> {
        let write = prepare(tx, &s.write_query, prepared).await?;
        let delete = match &s.delete_query {
            Some(q) if latest.iter().any(|e| e.delete) => Some(prepare(tx, q, prepared).await?),
            _ => None,
        };
        Ok(Self { write, delete })
    }

    fn of(&self, e: &Entry) -> Option<&tokio_postgres::Statement> {
        if e.delete {
            self.delete.as_ref()
        } else {
            Some(&self.write)
        }
    }

    /// The statement's parameters for an entry: the key's captures, then the value (none for a
    /// deletion).
    fn bind(&self, s: &BehindSettings, e: &Entry) -> Result<Vec<Value>, String> {
        let (name, stmt) = match self.of(e) {
            Some(st) if e.delete => ("delete_query", st),
            Some(st) => ("write_query", st),
            None => return Err("a queued DEL, and the mapping has no delete_query".into()),
        };
        let types = stmt.params();
        let captures = s
            .pattern
            .matches(&e.key)
            .ok_or_else(|| "the key does not match the mapping".to_string())?;
        let want = captures.len() + usize::from(!e.delete);
        if types.len() != want {
            return Err(format!(
                "{name} takes {} parameters; the key gives {} captures{}",
                types.len(),
                captures.len(),
                if e.delete { "" } else { " and the value" }
            ));
        }
        let mut out = Vec::with_capacity(types.len());
        for (t, c) in types.iter().zip(&captures) {
            out.push(Value::Param(params::convert(t, c)?));
        }
        if !e.delete {
            out.push(Value::of(&types[captures.len()], &e.value)?);
        }
        Ok(out)
    }
}

/// A parameter: a converted capture, or the written value as the statement's type takes it.
#[derive(Debug)]
enum Value {
    Param(Param),
    /// Bytes sent as they are in the binary format (text, json, bytea; jsonb with its version).
    Raw(Vec<u8>),
}

impl Value {
    fn of(ty: &Type, v: &[u8]) -> Result<Self, String> {
        let text = || {
            std::str::from_utf8(v)
                .map(|_| v.to_vec())
                .map_err(|_| "the value is not UTF-8".to_string())
        };
        Ok(match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN => {
                Value::Raw(text()?)
            }
            Type::JSONB => {
                let mut b = vec![1u8];
                b.extend(text()?);
                Value::Raw(b)
            }
            Type::BYTEA => Value::Raw(v.to_vec()),
            _ => Value::Param(params::convert(ty, v)?),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Param(p) => p.to_sql(ty, out),
            Value::Raw(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
