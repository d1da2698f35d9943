//! Read-through from PostgreSQL: a miss of a key that a `[[mapping]]` declares is resolved by
//! the mapping's query, written to Redis with the mapping's TTL, and answered.
//!
//! One query per key: concurrent misses of a key in one sidecar share one load (single-flight);
//! across sidecars, a fill lease in Redis (`SET cacheside:lease:{<key>} <token> NX PX`) lets one
//! sidecar query while the others poll Redis briefly for its fill, then query themselves.
//!
//! No stale fills: the fill is a script that writes the value only if the lease still holds the
//! loader's token, and deletes it. Every write to a mapped key through any sidecar deletes the
//! key's lease (see [`Loader::write_cleanup`]) in the same pipeline as the write, so a load that
//! was in flight when the write ran finds its lease gone and does not overwrite the write.
//! Not found is remembered in `cacheside:neg:{<key>}` for `negative_ttl`; clients never see it.

mod batch;
pub mod encode;
mod flight;
mod lease;
pub mod mapping;
pub mod notify;
pub mod params;
pub mod postgres;
mod refresh;
mod reload;
mod stale;
pub mod tls;
pub mod write;

pub use encode::Loaded;
pub(crate) use lease::call;
pub use mapping::{Jitter, KeyPattern, Shape};
pub use postgres::{Database, DbError, DbSettings};

use crate::metrics::OriginMetrics;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

const NEGATIVE_PREFIX: &[u8] = b"cacheside:neg:";

/// One compiled `[[mapping]]`.
pub struct Mapping {
    pub name: String,
    pub pattern: KeyPattern,
    /// The query wrapped to return one JSON text per row.
    sql: String,
    pub shape: Shape,
    pub ttl: Duration,
    pub jitter: Jitter,
    pub negative_ttl: Duration,
    /// Row changes of this table invalidate the mapping's keys (`postgres.notify`).
    pub table: String,
    types: OnceCell<Vec<Type>>,
    /// The batch wrapper (several keys in one query), if the mapping has one capture and a
    /// batch query that Postgres accepts; decided when the mapping is prepared.
    batch_sql: Option<String>,
    batch_ok: OnceCell<bool>,
    pub metrics: OriginMetrics,
    /// How writes to the mapping's keys are handled (see `crate::strategy`).
    pub write: write::WriteSettings,
    pub strategy_metrics: crate::metrics::StrategyMetrics,
    /// `refresh_ahead`, as a fraction of `ttl`.
    pub refresh_ahead: Option<f64>,
    /// Where reads ask for background refreshes (shared by the loader's mappings).
    refresher: Arc<refresh::Queue>,
    /// `stale_if_error`, and when a stale answer was last logged.
    pub stale_if_error: Option<Duration>,
    stale_logged: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("name", &self.name).finish()
    }
}

/// Checked settings of one mapping.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub name: String,
    pub pattern: KeyPattern,
    pub query: String,
    pub shape: Shape,
    pub ttl: Duration,
    pub jitter: Jitter,
    pub negative_ttl: Duration,
    pub batch_query: Option<String>,
    /// The table whose row changes invalidate the mapping's keys (`postgres.notify`).
    pub table: String,
    pub write: write::WriteSettings,
    /// `refresh_ahead`: the last share of the TTL in which a read reloads the key.
    pub refresh_ahead: Option<f64>,
    /// `stale_if_error`: how long a copy of each loaded value outlives its TTL.
    pub stale_if_error: Option<Duration>,
}

/// Why a mapped read could not be answered. The text goes to the client after `-ERR cacheside: `.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("mapping {mapping}: capture {capture} {detail}")]
    BadCapture {
        mapping: String,
        capture: String,
        detail: String,
    },
    #[error("mapping {mapping}: {err}")]
    Db { mapping: String, err: DbError },
    #[error("mapping {mapping}: bad row: {detail}")]
    Encode { mapping: String, detail: String },
}

pub struct Loader {
    /// Swapped whole by a config reload (see `reload`): one atomic load per lookup, no lock.
    mappings: arc_swap::ArcSwap<Vec<Arc<Mapping>>>,
    db: Database,
    upstream: Option<Arc<Upstream>>,
    inflight: Mutex<HashMap<Bytes, flight::Flight>>,
    /// Orders reads against loads (see `flight`).
    tickets: std::sync::atomic::AtomicU64,
    lease: Duration,
    /// Called with keys whose loaded value Redis did not take (see `on_unfilled`).
    unfilled: std::sync::OnceLock<UnfilledHook>,
    notify_metrics: crate::metrics::NotifyMetrics,
    /// Keys waiting for a refresh-ahead reload.
    refresher: Arc<refresh::Queue>,
}

/// A companion of `key` in cacheside's namespace, in `key`'s cluster slot (so that one script
/// can use both on a Redis Cluster): `prefix{key}`, or `prefix` + key when the key has a hash
/// tag (see [`crate::tier::redis::cluster::slot::companion`]).
fn prefixed(prefix: &[u8], key: &[u8]) -> Bytes {
    crate::tier::redis::cluster::slot::companion(prefix, key).into()
}

/// The Redis key that remembers "not found" for `key`.
pub fn negative_key(key: &[u8]) -> Bytes {
    prefixed(NEGATIVE_PREFIX, key)
}

impl Loader {
    pub fn new(
        settings: Vec<MappingSettings>,
        db: Database,
        upstream: Option<Arc<Upstream>>,
        lease: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let refresher = Arc::new(refresh::Queue::default());
        let mappings = settings
            .into_iter()
            .map(|s| compile(s, metrics, &refresher))
            .collect();
        Self {
            mappings: arc_swap::ArcSwap::from_pointee(mappings),
            db,
            upstream,
            inflight: Mutex::new(HashMap::new()),
            tickets: std::sync::atomic::AtomicU64::new(0),
            lease,
            unfilled: std::sync::OnceLock::new(),
            notify_metrics: metrics.notify.clone(),
            refresher,
        }
    }

    /// What to call with a key whose loaded value did not become Redis's (its fill lost the
    /// lease, failed, or Redis was not used): the hot tier forgets it, so a load that raced a
    /// write is never served after that write, even where the write produced no invalidation
    /// (a DEL of a key Redis did not hold).
    pub fn on_unfilled(&self, f: impl Fn(&[u8]) + Send + Sync + 'static) {
        let _ = self.unfilled.set(Box::new(f));
    }

    fn forget(&self, key: &[u8]) {
        if let Some(f) = self.unfilled.get() {
            f(key);
        }
    }

    /// The mappings in force now, in config order.
    pub fn mappings(&self) -> Arc<Vec<Arc<Mapping>>> {
        self.mappings.load_full()
    }

    /// The mapping that declares `key` (first match), with the key's captures.
    /// The first mapping (in config order) whose pattern matches `key` with captures that
    /// convert to its query's parameter types (once those are known): a key whose capture is
    /// not a valid value for its parameter is not that mapping's key, and passes through.
    pub fn resolve(&self, key: &[u8]) -> Option<(Arc<Mapping>, Vec<Bytes>)> {
        self.mappings.load().iter().find_map(|m| {
            let caps = m.pattern.matches(key)?;
            if let Some(types) = m.types.get() {
                let fits = types
                    .iter()
                    .zip(&caps)
                    .all(|(ty, raw)| params::convert(ty, raw).is_ok());
                if !fits {
                    return None;
                }
            }
            Some((
                m.clone(),
                caps.into_iter().map(Bytes::copy_from_slice).collect(),
            ))
        })
    }

    /// Prepares every mapping's query; the first failure names its mapping.
    pub async fn prepare_all(&self) -> Result<(), (String, DbError)> {
        for m in self.mappings().iter() {
            self.prepare(m).await.map_err(|e| (m.name.clone(), e))?;
        }
        Ok(())
    }

    /// Prepares one mapping's query (and its write statements and batch form).
    pub async fn prepare(&self, m: &Mapping) -> Result<(), DbError> {
        let types = self.db.param_types(&m.sql).await?;
        if types.len() != m.pattern.captures().len() {
            return Err(DbError::Query(format!(
                "the query has {} parameter(s) but the key pattern has {} capture(s)",
                types.len(),
                m.pattern.captures().len()
            )));
        }
        let _ = m.types.set(types);
        self.prepare_writes(m).await?;
        self.batch_usable(m).await;
        Ok(())
    }

    async fn params(
        &self,
        m: &Mapping,
        captures: &[Bytes],
    ) -> Result<Vec<params::Param>, LoadError> {
        let types = m
            .types
            .get_or_try_init(|| self.db.param_types(&m.sql))
            .await
            .map_err(|err| LoadError::Db {
                mapping: m.name.clone(),
                err,
            })?;
        let names = m.pattern.captures();
        types
            .iter()
            .zip(captures)
            .enumerate()
            .map(|(i, (ty, raw))| {
                params::convert(ty, raw).map_err(|detail| LoadError::BadCapture {
                    mapping: m.name.clone(),
                    capture: names.get(i).copied().unwrap_or("?").to_string(),
                    detail,
                })
            })
            .collect()
    }

    async fn query(&self, m: &Mapping, params: &[params::Param]) -> Result<Loaded, LoadError> {
        let types = m.types.get().map(Vec::as_slice).unwrap_or(&[]);
        m.metrics.queries.inc();
        let started = Instant::now();
        let rows = self.db.rows(&m.sql, params, types).await;
        m.metrics.latency.observe(started.elapsed().as_secs_f64());
        let rows = rows.map_err(|err| {
            m.metrics.error(err.kind());
            LoadError::Db {
                mapping: m.name.clone(),
                err,
            }
        })?;
        m.metrics.rows.inc_by(rows.len() as u64);
        encode::encode(m.shape, &rows).map_err(|detail| LoadError::Encode {
            mapping: m.name.clone(),
            detail,
        })
    }
}

/// Compiles one mapping's settings; its metrics are those of its name.
fn compile(
    s: MappingSettings,
    metrics: &crate::metrics::Metrics,
    refresher: &Arc<refresh::Queue>,
) -> Arc<Mapping> {
    let captures = s.pattern.captures();
    let batch_sql = match (captures.as_slice(), &s.batch_query) {
        ([one], Some(q)) => Some(encode::wrap_batch(q, one)),
        ([one], None) => encode::derive_batch(&s.query).map(|q| encode::wrap_batch(&q, one)),
        _ => None,
    };
    Arc::new(Mapping {
        metrics: metrics.origin(&s.name),
        strategy_metrics: metrics.strategy(&s.name),
        write: s.write,
        refresh_ahead: s.refresh_ahead,
        stale_if_error: s.stale_if_error,
        stale_logged: std::sync::atomic::AtomicU64::new(0),
        refresher: refresher.clone(),
        batch_sql,
        batch_ok: OnceCell::new(),
        sql: encode::wrap(&s.query),
        name: s.name,
        pattern: s.pattern,
        shape: s.shape,
        ttl: s.ttl,
        jitter: s.jitter,
        negative_ttl: s.negative_ttl,
        table: s.table,
        types: OnceCell::new(),
    })
}

type UnfilledHook = Box<dyn Fn(&[u8]) + Send + Sync>;

fn single_error(m: &Mapping, detail: &str) -> Result<Loaded, LoadError> {
    Err(LoadError::Encode {
        mapping: m.name.clone(),
        detail: detail.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::lease::{from_reply, lease_key};
    use super::*;

    #[test]
    fn values_found_in_redis_are_parsed_back() {
        assert_eq!(
            from_reply(&Bytes::from_static(b"$3\r\nabc\r\n")),
            Some(Loaded::Value(Bytes::from_static(b"abc")))
        );
        assert_eq!(from_reply(&Bytes::from_static(b"$-1\r\n")), None);
        assert_eq!(
            from_reply(&Bytes::from_static(b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n")),
            Some(Loaded::Hash(vec![(
                Bytes::from_static(b"f"),
                Bytes::from_static(b"v")
            )]))
        );
        assert_eq!(from_reply(&Bytes::from_static(b"*0\r\n")), None);
        // Replies of another shape (a middlebox, a wrong upstream) are not values, never a panic.
        for odd in [
            &b"*1\r\n+x\r\n"[..],
            b"*2\r\n+f\r\n:1\r\n",
            b"*2\r\n*0\r\n*0\r\n",
            b"+OK\r\n",
            b":1\r\n",
            b"-ERR x\r\n",
            b"$5\r\nab",
            b"",
        ] {
            assert_eq!(from_reply(&Bytes::copy_from_slice(odd)), None, "{odd:?}");
        }
    }

    #[test]
    fn lease_and_negative_keys_are_namespaced() {
        assert_eq!(&lease_key(b"product:1")[..], b"cacheside:lease:{product:1}");
        assert_eq!(
            &negative_key(b"product:1")[..],
            b"cacheside:neg:{product:1}"
        );
        assert_eq!(&negative_key(b"u:{1}:x")[..], b"cacheside:neg:u:{1}:x");
    }
}
