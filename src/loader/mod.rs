//! Read-through from PostgreSQL: a miss of a key that a `[[mapping]]` declares is resolved by
//! the mapping's query, written to Redis with the mapping's TTL, and answered.
//!
//! One query per key: concurrent misses of a key in one sidecar share one load (single-flight);
//! across sidecars, a fill lease in Redis (`SET cacheside:lease:<key> <token> NX PX`) lets one
//! sidecar query while the others poll Redis briefly for its fill, then query themselves.
//!
//! No stale fills: the fill is a script that writes the value only if the lease still holds the
//! loader's token, and deletes it. Every write to a mapped key through any sidecar deletes the
//! key's lease (see [`Loader::write_cleanup`]) in the same pipeline as the write, so a load that
//! was in flight when the write ran finds its lease gone and does not overwrite the write.
//! Not found is remembered in `cacheside:neg:<key>` for `negative_ttl`; clients never see it.

pub mod encode;
mod flight;
pub mod mapping;
pub mod params;
pub mod postgres;
pub mod tls;

pub use encode::Loaded;
pub use mapping::{Jitter, KeyPattern, Shape};
pub use postgres::{Database, DbError, DbSettings};

use crate::error::UpstreamError;
use crate::metrics::OriginMetrics;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::encode_command;
use crate::protocol::scan::{integer, Value};
use crate::tier::redis::Upstream;
use bytes::Bytes;
use flight::Lead;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

const LEASE_PREFIX: &[u8] = b"cacheside:lease:";
const NEGATIVE_PREFIX: &[u8] = b"cacheside:neg:";
/// How often a sidecar that lost the lease looks for the winner's fill.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// Writes the loaded value only while the lease still holds our token, and releases it.
/// KEYS: key, lease, negative. ARGV: token, kind (v|n|h), value, ttl ms, field, value, ...
const FILL_SCRIPT: &str = r#"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] == 'v' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'n' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1"#;

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
    types: OnceCell<Vec<Type>>,
    /// The batch wrapper (several keys in one query), if the mapping has one capture and a
    /// batch query that Postgres accepts; decided when the mapping is prepared.
    batch_sql: Option<String>,
    batch_ok: OnceCell<bool>,
    pub metrics: OriginMetrics,
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
    mappings: Vec<Arc<Mapping>>,
    db: Database,
    upstream: Option<Arc<Upstream>>,
    inflight: Mutex<HashMap<Bytes, flight::Flight>>,
    /// Orders reads against loads (see `flight`).
    tickets: std::sync::atomic::AtomicU64,
    lease: Duration,
    /// Called with keys whose loaded value Redis did not take (see `on_unfilled`).
    unfilled: std::sync::OnceLock<UnfilledHook>,
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(prefix.len() + key.len());
    b.extend_from_slice(prefix);
    b.extend_from_slice(key);
    b.into()
}

/// The Redis key that remembers "not found" for `key`.
pub fn negative_key(key: &[u8]) -> Bytes {
    prefixed(NEGATIVE_PREFIX, key)
}

fn lease_key(key: &[u8]) -> Bytes {
    prefixed(LEASE_PREFIX, key)
}

impl Loader {
    pub fn new(
        settings: Vec<MappingSettings>,
        db: Database,
        upstream: Option<Arc<Upstream>>,
        lease: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let mappings = settings
            .into_iter()
            .map(|s| {
                let captures = s.pattern.captures();
                let batch_sql = match (captures.as_slice(), &s.batch_query) {
                    ([one], Some(q)) => Some(encode::wrap_batch(q, one)),
                    ([one], None) => {
                        encode::derive_batch(&s.query).map(|q| encode::wrap_batch(&q, one))
                    }
                    _ => None,
                };
                Arc::new(Mapping {
                    metrics: metrics.origin(&s.name),
                    batch_sql,
                    batch_ok: OnceCell::new(),
                    sql: encode::wrap(&s.query),
                    name: s.name,
                    pattern: s.pattern,
                    shape: s.shape,
                    ttl: s.ttl,
                    jitter: s.jitter,
                    negative_ttl: s.negative_ttl,
                    types: OnceCell::new(),
                })
            })
            .collect();
        Self {
            mappings,
            db,
            upstream,
            inflight: Mutex::new(HashMap::new()),
            tickets: std::sync::atomic::AtomicU64::new(0),
            lease,
            unfilled: std::sync::OnceLock::new(),
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

    /// The mapping that declares `key` (first match), with the key's captures.
    /// The first mapping (in config order) whose pattern matches `key` with captures that
    /// convert to its query's parameter types (once those are known): a key whose capture is
    /// not a valid value for its parameter is not that mapping's key, and passes through.
    pub fn resolve(&self, key: &[u8]) -> Option<(Arc<Mapping>, Vec<Bytes>)> {
        self.mappings.iter().find_map(|m| {
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
        for m in &self.mappings {
            let types = self
                .db
                .param_types(&m.sql)
                .await
                .map_err(|e| (m.name.clone(), e))?;
            if types.len() != m.pattern.captures().len() {
                return Err((
                    m.name.clone(),
                    DbError::Query(format!(
                        "the query has {} parameter(s) but the key pattern has {} capture(s)",
                        types.len(),
                        m.pattern.captures().len()
                    )),
                ));
            }
            let _ = m.types.set(types);
            self.batch_usable(m).await;
        }
        Ok(())
    }

    /// Whether `m` can load several keys in one query (prepared once, remembered).
    async fn batch_usable(&self, m: &Mapping) -> bool {
        let Some(sql) = &m.batch_sql else {
            return false;
        };
        *m.batch_ok
            .get_or_init(|| async {
                match self.db.prepare(sql).await {
                    Ok(t) if t.len() == 1 && matches!(t[0].kind(), tokio_postgres::types::Kind::Array(member) if params::supported(member)) => true,
                    Ok(_) => false,
                    Err(e) => {
                        tracing::info!(mapping = %m.name, error = %e, "batch query not usable; MGET loads keys of this mapping one by one");
                        false
                    }
                }
            })
            .await
    }

    /// Loads several keys of one mapping (an MGET's misses): leases taken in one pipeline, one
    /// query for the keys whose lease this sidecar got, their fills in one pipeline; keys leased
    /// by another sidecar wait for its fill as single loads do. Results are in `items` order.
    /// `begun` is the latest ticket of the reads the keys are loaded for (see `flight`).
    pub async fn load_many(
        &self,
        m: &Arc<Mapping>,
        items: &[(Bytes, Vec<Bytes>)],
        upstream_down: bool,
        begun: u64,
    ) -> Vec<Result<Loaded, LoadError>> {
        let upstream = match &self.upstream {
            Some(u) if items.len() >= 2 && !upstream_down && self.batch_usable(m).await => u,
            _ => return self.load_each(m, items, upstream_down, begun).await,
        };
        // Convert every capture first: a bad one fails only its own key.
        let mut results: Vec<Option<Result<Loaded, LoadError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut params = Vec::new();
        for (i, (_, caps)) in items.iter().enumerate() {
            match self.params(m, caps).await {
                Ok(mut p) if p.len() == 1 => params.push((i, p.remove(0))),
                Ok(_) => results[i] = Some(single_error(m, "a batch needs exactly one capture")),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let token = new_token();
        // As for one key: each lease taken is followed by a read of the key, which sees any fill
        // made before the lease was free.
        let mut acquire = Vec::new();
        for (i, _) in &params {
            acquire.extend_from_slice(&self.take_lease(m, &items[*i].0, &token));
        }
        let Ok(replies) = call(upstream, Bytes::from(acquire), 2 * params.len() as u32).await
        else {
            return self.load_each(m, items, true, begun).await;
        };
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let mut release = Vec::new();
        let mut released = 0u32;
        for ((i, param), pair) in params.into_iter().zip(replies.chunks(2)) {
            match (pair[0].starts_with(b"+OK"), from_reply(&pair[1])) {
                (true, Some(found)) => {
                    release.extend_from_slice(&encode_command(&[
                        &b"DEL"[..],
                        &lease_key(&items[i].0),
                    ]));
                    released += 1;
                    results[i] = Some(Ok(found));
                }
                (true, None) => mine.push(((i, param), ())),
                (false, _) => theirs.push(((i, param), ())),
            }
        }
        if released > 0 {
            let _ = call(upstream, Bytes::from(release), released).await;
        }
        if !mine.is_empty() {
            m.metrics.queries.inc();
            let started = Instant::now();
            let values: Vec<params::Param> = mine.iter().map(|((_, p), _)| p.clone()).collect();
            let rows = self
                .db
                .batch_rows(m.batch_sql.as_deref().unwrap_or_default(), values)
                .await;
            m.metrics.latency.observe(started.elapsed().as_secs_f64());
            match rows {
                Err(err) => {
                    m.metrics.error(err.kind());
                    for ((i, _), _) in &mine {
                        results[*i] = Some(Err(LoadError::Db {
                            mapping: m.name.clone(),
                            err: err.clone(),
                        }));
                    }
                }
                Ok(rows) => {
                    m.metrics.rows.inc_by(rows.len() as u64);
                    let ty = m
                        .types
                        .get()
                        .and_then(|t| t.first().cloned())
                        .unwrap_or(Type::TEXT);
                    let mut fills = Vec::new();
                    let mut filled_keys = Vec::new();
                    for ((i, param), _) in &mine {
                        // Rows are matched to keys by value (the column as Postgres renders it,
                        // converted back), so "042" and "42" of an int key are the same key.
                        let own: Vec<String> = rows
                            .iter()
                            .filter(|(k, _)| {
                                params::convert(&ty, k.as_bytes()).ok().as_ref() == Some(param)
                            })
                            .map(|(_, json)| json.clone())
                            .collect();
                        let loaded =
                            encode::encode(m.shape, &own).map_err(|detail| LoadError::Encode {
                                mapping: m.name.clone(),
                                detail,
                            });
                        if let Ok(l) = &loaded {
                            fills.push(self.fill_command(m, &items[*i].0, &token, l));
                            filled_keys.push(&items[*i].0);
                        }
                        results[*i] = Some(loaded);
                    }
                    let n = fills.len() as u32;
                    let replies = call(upstream, Bytes::from(fills.concat()), n)
                        .await
                        .unwrap_or_default();
                    for (i, key) in filled_keys.into_iter().enumerate() {
                        if !counted_fill(m, replies.get(i).and_then(|r| integer(r))) {
                            self.forget(key);
                        }
                    }
                }
            }
        }
        for ((i, _), _) in theirs {
            let (k, caps) = &items[i];
            results[i] = Some(self.load(m, k, caps, upstream_down, begun).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| single_error(m, "not loaded")))
            .collect()
    }

    async fn load_each(
        &self,
        m: &Arc<Mapping>,
        items: &[(Bytes, Vec<Bytes>)],
        upstream_down: bool,
        begun: u64,
    ) -> Vec<Result<Loaded, LoadError>> {
        let mut out = Vec::with_capacity(items.len());
        for (k, c) in items {
            out.push(self.load(m, k, c, upstream_down, begun).await);
        }
        out
    }

    /// Loads every key whose captures `query` returns (one row per key, columns in capture
    /// order), in batches, logging progress. Returns how many keys were loaded.
    pub async fn warm(&self, mapping: &str, query: &str) -> Result<usize, LoadError> {
        let Some(m) = self.mappings.iter().find(|m| m.name == mapping).cloned() else {
            return Ok(0);
        };
        let rows = self
            .db
            .rows(&encode::wrap(query), &[], &[])
            .await
            .map_err(|err| LoadError::Db {
                mapping: m.name.clone(),
                err,
            })?;
        let items: Vec<(Bytes, Vec<Bytes>)> = rows
            .iter()
            .filter_map(|row| {
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(row).ok()?;
                let caps: Vec<Bytes> = obj
                    .values()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Bytes::from(s.clone()),
                        other => Bytes::from(other.to_string()),
                    })
                    .collect();
                let refs: Vec<&[u8]> = caps.iter().map(|c| &c[..]).collect();
                Some((Bytes::from(m.pattern.render(&refs)), caps))
            })
            .collect();
        let total = items.len();
        let mut done = 0;
        for chunk in items.chunks(100) {
            let results = self.load_many(&m, chunk, false, self.ticket()).await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
            done += chunk.len();
            tracing::info!(mapping = %m.name, done, total, "warming");
        }
        Ok(total)
    }

    /// For a write to `key`: the commands that make any load in flight for it give way (its
    /// lease is deleted) and forget a remembered "not found". `None` for unmapped keys.
    pub fn write_cleanup(&self, key: &[u8]) -> Option<Bytes> {
        self.resolve(key)?;
        Some(encode_command(&[
            &b"DEL"[..],
            &lease_key(key),
            &negative_key(key),
        ]))
    }

    /// Loads as the leader; with the value, whether it is Redis's (found there, or filled by
    /// us under our lease), and the ticket taken just before the read that produced it.
    async fn lead(
        &self,
        m: &Arc<Mapping>,
        key: &Bytes,
        captures: &[Bytes],
        upstream_down: bool,
    ) -> Result<Lead, LoadError> {
        let params = self.params(m, captures).await?;
        let Some(upstream) = self.upstream.as_ref().filter(|_| !upstream_down) else {
            m.metrics.degraded.inc();
            return self.query_unkept(m, &params).await;
        };
        let token = new_token();
        // The key is read again right after the lease is taken: holding a free lease means any
        // earlier holder has already filled (or given up), and its fill is visible to that read.
        let mut acquire = self.take_lease(m, key, &token);
        acquire.extend_from_slice(&encode_command(&[&b"EXISTS"[..], &negative_key(key)]));
        let read_at = self.ticket();
        match call(upstream, Bytes::from(acquire), 3).await {
            Err(_) => {
                m.metrics.degraded.inc();
                self.query_unkept(m, &params).await
            }
            Ok(r) if r[0].starts_with(b"+OK") => {
                let filled = from_reply(&r[1])
                    .or_else(|| r[2].starts_with(b":1").then_some(Loaded::NotFound));
                if let Some(found) = filled {
                    let _ =
                        call(upstream, encode_command(&[&b"DEL"[..], &lease_key(key)]), 1).await;
                    if found == Loaded::NotFound {
                        m.metrics.negative_hits.inc();
                    }
                    return Ok(Lead {
                        loaded: found,
                        kept: true,
                        read_at,
                    });
                }
                let read_at = self.ticket();
                let loaded = self.query(m, &params).await?;
                let kept = self.fill(upstream, m, key, &token, &loaded).await;
                Ok(Lead {
                    loaded,
                    kept,
                    read_at,
                })
            }
            Ok(_) => {
                m.metrics.lease_waits.inc();
                match self.await_fill(upstream, m, key).await {
                    Some((loaded, read_at)) => Ok(Lead {
                        loaded,
                        kept: true,
                        read_at,
                    }),
                    // The holder did not fill in time (or a write removed its lease): query,
                    // without filling, since the lease is not ours.
                    None => self.query_unkept(m, &params).await,
                }
            }
        }
    }

    /// Queries without filling Redis: the value is not Redis's.
    async fn query_unkept(&self, m: &Mapping, params: &[params::Param]) -> Result<Lead, LoadError> {
        let read_at = self.ticket();
        Ok(Lead {
            loaded: self.query(m, params).await?,
            kept: false,
            read_at,
        })
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

    /// Writes the loaded value to Redis if our lease still holds; a failure (e.g. maxmemory)
    /// only skips the fill: the value is still returned. Whether Redis took it.
    async fn fill(
        &self,
        upstream: &Upstream,
        m: &Mapping,
        key: &Bytes,
        token: &Bytes,
        loaded: &Loaded,
    ) -> bool {
        let reply = call(upstream, self.fill_command(m, key, token, loaded), 1).await;
        counted_fill(m, reply.as_ref().ok().and_then(|r| integer(&r[0])))
    }

    /// The compare-and-set fill of one loaded key (see FILL_SCRIPT).
    fn fill_command(&self, m: &Mapping, key: &Bytes, token: &Bytes, loaded: &Loaded) -> Bytes {
        let (kind, ttl): (&[u8], Duration) = match loaded {
            Loaded::Value(_) => (b"v", m.jitter.apply(m.ttl)),
            Loaded::Hash(_) => (b"h", m.jitter.apply(m.ttl)),
            Loaded::NotFound => (b"n", m.negative_ttl),
        };
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let mut args: Vec<Bytes> = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(FILL_SCRIPT.as_bytes()),
            Bytes::from_static(b"3"),
            key.clone(),
            lease_key(key),
            negative_key(key),
            token.clone(),
            Bytes::copy_from_slice(kind),
        ];
        match loaded {
            Loaded::Value(v) => args.push(v.clone()),
            _ => args.push(Bytes::new()),
        }
        args.push(Bytes::from(ttl_ms));
        if let Loaded::Hash(pairs) = loaded {
            if pairs.is_empty() {
                // An all-NULL row: nothing to store as a hash; remember it as not found instead.
                args[7] = Bytes::from_static(b"n");
            }
            for (f, v) in pairs {
                args.push(f.clone());
                args.push(v.clone());
            }
        }
        encode_command(&args)
    }

    /// `SET <lease> <token> NX PX <lease>`, then a read of the key (GET, or HGETALL for hashes).
    fn take_lease(&self, m: &Mapping, key: &[u8], token: &[u8]) -> Vec<u8> {
        let lease_ms = self.lease.as_millis().max(1).to_string();
        let mut out = encode_command(&[
            &b"SET"[..],
            &lease_key(key),
            token,
            b"NX",
            b"PX",
            lease_ms.as_bytes(),
        ])
        .to_vec();
        out.extend_from_slice(&encode_command(&[read_command(m), key]));
        out
    }

    /// Polls Redis for another sidecar's fill while its lease lasts; with the fill, the ticket
    /// taken before the poll that found it.
    async fn await_fill(
        &self,
        upstream: &Upstream,
        m: &Mapping,
        key: &Bytes,
    ) -> Option<(Loaded, u64)> {
        let read = read_command(m);
        // The lease is asked about first: the fill script deletes it and writes the value in one
        // step, so once the lease is seen gone, the reads after it see the fill (or its absence).
        let mut probe = encode_command(&[&b"EXISTS"[..], &lease_key(key)]).to_vec();
        probe.extend_from_slice(&encode_command(&[read, key]));
        probe.extend_from_slice(&encode_command(&[&b"EXISTS"[..], &negative_key(key)]));
        let probe = Bytes::from(probe);
        let deadline = Instant::now() + self.lease;
        while Instant::now() < deadline {
            tokio::time::sleep(LEASE_POLL).await;
            let read_at = self.ticket();
            let Ok(r) = call(upstream, probe.clone(), 3).await else {
                return None;
            };
            if let Some(found) = from_reply(&r[1]) {
                return Some((found, read_at));
            }
            if r[2].starts_with(b":1") {
                m.metrics.negative_hits.inc();
                return Some((Loaded::NotFound, read_at));
            }
            if r[0].starts_with(b":0") {
                return None;
            }
        }
        None
    }
}

type UnfilledHook = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Counts what the fill script answered (1 filled, 0 lost the lease, anything else an error);
/// whether Redis took the value.
fn counted_fill(m: &Mapping, answer: Option<i64>) -> bool {
    match answer {
        Some(1) => m.metrics.fills.inc(),
        Some(0) => m.metrics.fills_skipped_raced.inc(),
        _ => m.metrics.fills_skipped_error.inc(),
    }
    answer == Some(1)
}

/// A fresh lease token.
fn new_token() -> Bytes {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// How a mapping's value is read back from Redis.
fn read_command(m: &Mapping) -> &'static [u8] {
    if m.shape == Shape::Hash {
        b"HGETALL"
    } else {
        b"GET"
    }
}

fn single_error(m: &Mapping, detail: &str) -> Result<Loaded, LoadError> {
    Err(LoadError::Encode {
        mapping: m.name.clone(),
        detail: detail.into(),
    })
}

/// Sends `n` commands on a shared RESP2 connection and splits the replies.
async fn call(upstream: &Upstream, bytes: Bytes, n: u32) -> Result<Vec<Bytes>, UpstreamError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // Any shared connection: each call is awaited before the next that depends on it, and
    // spreading them keeps loader traffic off the connection clients of id 0 mod n use.
    let replies = upstream
        .send(Proto::Resp2, rand::random::<u32>() as u64, bytes, n)
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Closed {
                addr: "upstream".into(),
            })
        })?;
    match reply::split(&replies, n as usize, Proto::Resp2) {
        Some(frames) => Ok(frames.into_iter().map(|(b, _)| b).collect()),
        None => Err(UpstreamError::Protocol {
            addr: "upstream".into(),
            detail: "short reply".into(),
        }),
    }
}

/// A value found in Redis (a bulk string, or a non-empty hash as a RESP2 array); `None` for a
/// null, an empty hash, or a reply of any other shape.
fn from_reply(b: &Bytes) -> Option<Loaded> {
    let (v, _) = Value::parse(b, Proto::Resp2)?;
    if v.is_null() {
        return None;
    }
    if let Some(s) = v.string().filter(|_| b.first() == Some(&b'$')) {
        return Some(Loaded::Value(b.slice_ref(s)));
    }
    let mut items = v.items()?;
    if items.is_empty() || items.len() % 2 != 0 {
        return None;
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    while let (Some(f), Some(v)) = (items.next(), items.next()) {
        pairs.push((b.slice_ref(f.string()?), b.slice_ref(v.string()?)));
    }
    Some(Loaded::Hash(pairs))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(&lease_key(b"product:1")[..], b"cacheside:lease:product:1");
        assert_eq!(&negative_key(b"product:1")[..], b"cacheside:neg:product:1");
    }
}
