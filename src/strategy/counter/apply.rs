//! A counter's moves applied in PostgreSQL. Each transaction records the moves' ids in
//! `cacheside_counter_flushes` (primary key) and runs `flush_query` only for the ids it
//! inserted: an id already there was applied before, and is not applied again.

use super::flush::Move;
use super::metrics::Outcome;
use super::Counter;
use crate::loader::params::{self, Param};
use crate::loader::postgres::classify;
use crate::loader::{Database, DbError};
use std::collections::HashSet;
use tokio_postgres::types::{ToSql, Type};

pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS cacheside_counter_flushes (
    id text PRIMARY KEY,
    counter text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";
const RECORD: &str =
    "INSERT INTO cacheside_counter_flushes (id, counter) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
/// Ids older than this are forgotten: a move record still in Redis after a day (every sidecar
/// down between a commit and the cleanup, for a day) would be applied again.
pub(super) const PRUNE: &str =
    "DELETE FROM cacheside_counter_flushes WHERE applied_at < now() - interval '1 day'";
/// The ids of a batch recorded at once; returns those that were not there.
const RECORD_BATCH: &str = "INSERT INTO cacheside_counter_flushes (id, counter)
SELECT unnest($1::text[]), $2 ON CONFLICT (id) DO NOTHING RETURNING id";

async fn statement(
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

/// One move in its own transaction.
pub(super) async fn one(db: &Database, c: &Counter, m: &Move) -> Result<Outcome, DbError> {
    let (prepared, _) = db.statement_settings();
    let err = |e: tokio_postgres::Error| classify(&e);
    let mut conn = db.connection().await?;
    let tx = conn.transaction().await.map_err(err)?;
    let fresh = tx
        .execute(RECORD, &[&m.id, &c.settings.name])
        .await
        .map_err(err)?;
    if fresh == 0 {
        return Ok(Outcome::Duplicate);
    }
    let stmt = statement(&tx, &c.settings.flush_query, prepared).await?;
    let outcome = run(&tx, &stmt, c, m).await?;
    tx.commit().await.map_err(err)?;
    Ok(outcome)
}

/// Several moves in one transaction; any failed statement fails them all (nothing committed).
pub(super) async fn batch(
    db: &Database,
    c: &Counter,
    moves: &[Move],
) -> Result<Vec<Outcome>, DbError> {
    let (prepared, _) = db.statement_settings();
    let err = |e: tokio_postgres::Error| classify(&e);
    let mut conn = db.connection().await?;
    let tx = conn.transaction().await.map_err(err)?;
    let ids: Vec<&str> = moves.iter().map(|m| m.id.as_str()).collect();
    let fresh: HashSet<String> = tx
        .query(RECORD_BATCH, &[&ids, &c.settings.name])
        .await
        .map_err(err)?
        .iter()
        .filter_map(|r| r.try_get::<_, String>(0).ok())
        .collect();
    let stmt = statement(&tx, &c.settings.flush_query, prepared).await?;
    let mut out = Vec::with_capacity(moves.len());
    for m in moves {
        out.push(if fresh.contains(&m.id) {
            run(&tx, &stmt, c, m).await?
        } else {
            Outcome::Duplicate
        });
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Runs `flush_query` for a move whose id this transaction recorded.
async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    stmt: &tokio_postgres::Statement,
    c: &Counter,
    m: &Move,
) -> Result<Outcome, DbError> {
    let params = match bind(c, m, stmt.params())? {
        Ok(p) => p,
        Err(why) => {
            // The id is recorded with the rest, so the record is not retried forever.
            tracing::warn!(counter = %c.settings.name, error = %why, "counter key does not convert to flush_query's parameters; delta dropped");
            return Ok(Outcome::Dropped);
        }
    };
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    tx.execute(stmt, &refs).await.map_err(|e| classify(&e))?;
    Ok(Outcome::Applied)
}

/// The key's captures and the delta as the statement's parameters. The outer error is the
/// query's fault (it takes another number of parameters); the inner one the key's.
fn bind(c: &Counter, m: &Move, types: &[Type]) -> Result<Result<Vec<Param>, String>, DbError> {
    let Some(captures) = c.settings.pattern.matches(&m.key) else {
        return Ok(Err("the key does not match the counter".into()));
    };
    let delta = m.delta.to_string();
    let raw: Vec<&[u8]> = captures
        .iter()
        .copied()
        .chain(std::iter::once(delta.as_bytes()))
        .collect();
    if types.len() != raw.len() {
        return Err(DbError::Query(format!(
            "flush_query takes {} parameters; the key gives {} captures and the delta",
            types.len(),
            raw.len() - 1
        )));
    }
    Ok(types
        .iter()
        .zip(&raw)
        .map(|(t, v)| params::convert(t, v))
        .collect())
}
