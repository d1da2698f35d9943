//! The flusher: every `flush_every` (or at once for a key past `flush_threshold`) it moves
//! pending deltas from Redis to PostgreSQL, exactly once across sidecars and crashes.
//!
//! A move has two steps, each atomic:
//! 1. In Redis, [`TAKE_SCRIPT`] reads and deletes the key's pending delta and records it in the
//!    counter's moves hash under a fresh random id. Concurrent INCRs either ran before (their
//!    delta is in this move) or after (they start a new pending delta).
//! 2. In PostgreSQL, one transaction inserts the id into `cacheside_counter_flushes` (primary
//!    key) and runs `flush_query`. The insert finding the id already there means the move was
//!    applied before: the query is not run again. Only then is the record deleted from Redis.
//!
//! A crash after step 1 leaves the record: it is applied at the next start of any sidecar,
//! and by every running sidecar once it is older than the stale age. A crash after the commit
//! leaves the record too: its id is found in the table, so it is deleted without being applied
//! twice. Two sidecars applying one record at once are serialized by the primary key: the
//! second insert waits for the first transaction and then finds the id.
//!
//! On a cluster the same moves run per slot (see `cluster.rs`); this file holds what both modes
//! share: the loop, the take, and the apply.

use super::apply;
use super::metrics::Outcome;
use super::{Counter, Counters};
use crate::loader::{call, Database, DbError};
use crate::protocol::request::encode_command;
use crate::protocol::scan::{strings, Value};
use crate::protocol::Proto;
use crate::tier::redis::cluster::slot;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Takes a key's pending delta into a move record. KEYS: pending, dirty, moves. ARGV: key, move
/// id, now (ms). Returns the delta, or nil when there was none.
const TAKE_SCRIPT: &str = "redis.call('SREM', KEYS[2], ARGV[1])
local d = redis.call('GET', KEYS[1])
if not d then return false end
redis.call('DEL', KEYS[1])
if d == '0' then return false end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ':' .. d .. ':' .. ARGV[1])
return d";

const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A key flushed early is taken once more this long after: the INCR that crossed the threshold
/// is counted when it is routed, and may run in Redis just after the first take.
const FOLLOW_UP: Duration = Duration::from_millis(250);
/// Keys taken per round trip, and rounds per cycle (the rest waits for the next cycle).
pub(super) const BATCH: usize = 256;
pub(super) const ROUNDS: usize = 64;
/// A record younger than this may still be applied by the sidecar that took it.
const STALE_MIN: Duration = Duration::from_secs(10);
/// Failed moves remembered for a retry next cycle; past it, they wait for the stale age.
const FAILED_MAX: usize = 10_000;

/// One delta taken from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Move {
    /// The moves hash that holds its record.
    pub(super) hash: Bytes,
    pub(super) id: String,
    pub(super) key: Bytes,
    pub(super) delta: i64,
    /// When it was taken (ms since the epoch).
    pub(super) at: u64,
}

impl Move {
    /// A record of the moves hash `hash`: `<ms>:<delta>:<key>`.
    pub(super) fn parse(hash: &Bytes, id: &[u8], record: &[u8]) -> Option<Self> {
        let mut parts = record.splitn(3, |&b| b == b':');
        let at = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let delta = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let key = Bytes::copy_from_slice(parts.next()?);
        Some(Self {
            hash: hash.clone(),
            id: String::from_utf8(id.to_vec()).ok()?,
            key,
            delta,
            at,
        })
    }
}

/// Starts the flusher; it ends after a last flush once `stop` turns true.
pub fn spawn(
    counters: Arc<Counters>,
    upstream: Arc<Upstream>,
    db: Arc<Database>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let f = Flusher {
        counters,
        upstream,
        db,
        failed: HashSet::new(),
        failed_keys: HashSet::new(),
        swept: false,
    };
    tokio::spawn(f.run(stop))
}

pub(super) struct Flusher {
    pub(super) counters: Arc<Counters>,
    pub(super) upstream: Arc<Upstream>,
    db: Arc<Database>,
    /// Ids of this sidecar's moves that failed: retried next cycle, not after the stale age.
    pub(super) failed: HashSet<String>,
    /// The keys of those moves: their new deltas stay pending in Redis (one number per key)
    /// until the failed move applies, rather than piling up one more failing record a cycle.
    failed_keys: HashSet<Bytes>,
    /// Cluster mode: whether the start sweep (every slot, records of any age) has run.
    pub(super) swept: bool,
}

/// The age from which another sidecar's move records are applied: it may still be applying
/// younger ones itself.
pub(super) fn stale_age(c: &Counter) -> Duration {
    c.settings.flush_every.saturating_mul(5).max(STALE_MIN)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Flusher {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut wait = Duration::from_millis(100);
        while let Err(e) = self.create_table().await {
            tracing::warn!(error = %e, "counters: cannot create cacheside_counter_flushes yet; retrying");
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => wait = (wait * 2).min(Duration::from_secs(5)),
            }
        }
        let counters = self.counters.clone();
        // Whatever a crashed sidecar left recorded is applied first, whatever its age (on a
        // cluster: the start sweep, which `auto` may only reach once it finds the cluster).
        if counters.is_cluster() {
            self.start_sweep().await;
        } else {
            for c in &counters.list {
                self.recover(c, Duration::ZERO).await;
            }
        }
        let start = Instant::now();
        let mut due: Vec<Instant> = counters
            .list
            .iter()
            .map(|c| start + c.settings.flush_every)
            .collect();
        let mut sweep_due: Vec<Instant> = counters
            .list
            .iter()
            .map(|c| start + super::cluster::sweep_wait(c))
            .collect();
        let mut pruned = start;
        // Keys flushed early, to take once more at the instant given (see FOLLOW_UP).
        let mut follow_up: Vec<(Instant, usize, Bytes)> = Vec::new();
        loop {
            let sweeps = sweep_due.iter().filter(|_| counters.is_cluster());
            let next = due
                .iter()
                .chain(sweeps)
                .copied()
                .chain(follow_up.iter().map(|f| f.0))
                .min()
                .unwrap_or(start + PRUNE_EVERY);
            tokio::select! {
                _ = stop.changed() => break,
                _ = counters.wake.notified() => {
                    let urgent = counters.take_urgent();
                    for (i, key) in urgent {
                        if let Some(c) = counters.list.get(i) {
                            self.take_and_apply(c, vec![key.clone()]).await;
                            // One follow-up per key at a time: the list stays as small as the
                            // set of keys flushed early in the last FOLLOW_UP.
                            if !follow_up.iter().any(|f| f.1 == i && f.2 == key) {
                                follow_up.push((Instant::now() + FOLLOW_UP, i, key));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    let (ready, later): (Vec<_>, Vec<_>) =
                        follow_up.drain(..).partition(|f| f.0 <= now);
                    follow_up = later;
                    for (_, i, key) in ready {
                        if let Some(c) = counters.list.get(i) {
                            self.take_and_apply(c, vec![key]).await;
                        }
                    }
                    if counters.is_cluster() && !self.swept {
                        self.start_sweep().await;
                    }
                    for (i, c) in counters.list.iter().enumerate() {
                        if due[i] <= now {
                            self.cycle(c).await;
                            due[i] = Instant::now() + c.settings.flush_every;
                        }
                        if counters.is_cluster() && sweep_due[i] <= now {
                            self.periodic_sweep(c).await;
                            sweep_due[i] = Instant::now() + super::cluster::sweep_wait(c);
                        }
                    }
                    if now.duration_since(pruned) >= PRUNE_EVERY {
                        pruned = now;
                        self.prune().await;
                    }
                }
            }
        }
        // Draining: one last flush of everything pending.
        for c in &counters.list {
            self.cycle(c).await;
        }
    }

    async fn create_table(&self) -> Result<(), DbError> {
        let conn = self.db.connection().await?;
        match conn.batch_execute(apply::TABLE).await {
            Ok(()) => Ok(()),
            // Two sidecars creating it at once: one of them gets a unique violation on the
            // catalog; the table is there either way.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Ok(())
            }
            Err(e) => Err(crate::loader::postgres::classify(&e)),
        }
    }

    async fn prune(&self) {
        if let Ok(conn) = self.db.connection().await {
            if let Err(e) = conn.batch_execute(apply::PRUNE).await {
                tracing::warn!(error = %e, "counters: cannot prune cacheside_counter_flushes");
            }
        }
    }

    /// One flush of a counter: recorded moves first (stale ones of other sidecars, and this
    /// one's that failed), then every key marked dirty, in batches.
    async fn cycle(&mut self, c: &Arc<Counter>) {
        if let Ok(mut local) = c.local.lock() {
            local.clear();
        }
        if self.counters.is_cluster() {
            return self.cluster_cycle(c).await;
        }
        if !self.recover(c, stale_age(c)).await {
            return;
        }
        for _ in 0..ROUNDS {
            let cmd =
                encode_command(&[&b"SRANDMEMBER"[..], &c.dirty, BATCH.to_string().as_bytes()]);
            let Ok(r) = call(&self.upstream, cmd, 1).await else {
                return;
            };
            let keys = strings(&r[0]);
            let full = keys.len() >= BATCH;
            if keys.is_empty() || !self.take_and_apply(c, keys).await || !full {
                return;
            }
        }
    }

    /// Applies recorded moves older than `stale` (and this sidecar's failed ones); false if the
    /// database failed, so that no more is taken from Redis meanwhile.
    async fn recover(&mut self, c: &Arc<Counter>, stale: Duration) -> bool {
        let cmd = encode_command(&[&b"HGETALL"[..], &c.moves]);
        let Ok(r) = call(&self.upstream, cmd, 1).await else {
            return false;
        };
        let (due, _) = self.due(&c.moves, &r[0], stale);
        self.apply_all(c, due).await
    }

    /// The records of an HGETALL reply of moves hash `hash` to apply now: those older than
    /// `stale`, and this sidecar's failed ones. Also how many records wait (younger).
    pub(super) fn due(&self, hash: &Bytes, reply: &Bytes, stale: Duration) -> (Vec<Move>, usize) {
        let now = now_ms();
        let stale_ms = stale.as_millis() as u64;
        let mut due = Vec::new();
        let mut waiting = 0;
        for pair in strings(reply).chunks_exact(2) {
            let Some(m) = Move::parse(hash, &pair[0], &pair[1]) else {
                // Not a record of ours: left alone rather than guessed at.
                continue;
            };
            if self.failed.contains(&m.id) || now.saturating_sub(m.at) >= stale_ms {
                due.push(m);
            } else {
                waiting += 1;
            }
        }
        (due, waiting)
    }

    /// Takes the pending deltas of `keys` and applies each; false if the database failed.
    pub(super) async fn take_and_apply(&mut self, c: &Arc<Counter>, mut keys: Vec<Bytes>) -> bool {
        keys.retain(|k| !self.failed_keys.contains(k));
        if keys.is_empty() {
            return true;
        }
        let cluster = self.counters.is_cluster();
        let now = now_ms().to_string();
        let mut pipeline = Vec::new();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let id = format!("{:032x}", rand::random::<u128>());
            let names = c.names(&key, cluster);
            pipeline.extend_from_slice(&encode_command(&[
                b"EVAL",
                TAKE_SCRIPT.as_bytes(),
                b"3",
                &names.pending,
                &names.dirty,
                &names.moves,
                &key,
                id.as_bytes(),
                now.as_bytes(),
            ]));
            taken.push((key, id, names.moves));
        }
        let n = taken.len() as u32;
        let Ok(replies) = call(&self.upstream, Bytes::from(pipeline), n).await else {
            for (key, _, _) in &taken {
                self.unsure(c, key, cluster);
            }
            return true;
        };
        let at = now_ms();
        let mut moves = Vec::with_capacity(taken.len());
        for ((key, id, hash), reply) in taken.into_iter().zip(replies) {
            let value = Value::parse(&reply, Proto::Resp2).map(|(v, _)| v);
            if value.as_ref().is_some_and(|v| v.is_null()) {
                continue;
            }
            let Some(delta) = value
                .and_then(|v| v.string())
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok())
            else {
                // An error (a cluster that is down, a slot moving): the take may not have run,
                // or ran and its reply was lost.
                self.unsure(c, &key, cluster);
                continue;
            };
            moves.push(Move {
                hash,
                id,
                key,
                delta,
                at,
            });
        }
        self.apply_all(c, moves).await
    }

    /// A take whose outcome is unknown. On one Redis the key stays dirty or its record is
    /// recovered after the stale age; on a cluster its slot must stay looked at for that to
    /// happen.
    fn unsure(&self, c: &Counter, key: &[u8], cluster: bool) {
        if cluster {
            let slot = slot::of(key);
            c.marks.mark(slot);
            if let Ok(mut a) = c.active.lock() {
                a.recheck(slot, stale_age(c), Instant::now());
            }
        }
    }

    /// A move left recorded after a failure: retried next cycle by this sidecar (bounded: past
    /// `FAILED_MAX`, failed moves wait for the stale age like anyone else's).
    fn remember_failed(&mut self, c: &Counter, m: &Move) {
        if self.failed.len() < FAILED_MAX {
            self.failed.insert(m.id.clone());
            self.failed_keys.insert(m.key.clone());
        }
        if self.counters.is_cluster() {
            if let Ok(mut a) = c.active.lock() {
                a.recheck(slot::of(&m.hash), stale_age(c), Instant::now());
            }
        }
    }

    /// Applies moves in batches of one transaction each, in key order (two sidecars recovering
    /// the same records lock them in the same order). A batch whose statement fails is applied
    /// again one move per transaction. False if the database failed: the moves not applied stay
    /// recorded and are retried next cycle.
    pub(super) async fn apply_all(&mut self, c: &Arc<Counter>, mut moves: Vec<Move>) -> bool {
        moves.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
        let (_, limit) = self.db.statement_settings();
        let mut chunks = moves.chunks(BATCH);
        while let Some(chunk) = chunks.next() {
            let budget = limit * (chunk.len() as u32 + 3);
            let outcomes = match tokio::time::timeout(budget, apply::batch(&self.db, c, chunk))
                .await
            {
                Ok(Ok(o)) => o,
                Ok(Err(DbError::Query(_))) => {
                    for m in chunk {
                        if !self.apply(c, m.clone()).await {
                            self.keep_failed(c, chunks.flatten());
                            return false;
                        }
                    }
                    continue;
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(counter = %c.settings.name, error = %why, "counter flush failed; will retry");
                    self.keep_failed(c, chunk.iter().chain(chunks.flatten()));
                    return false;
                }
            };
            // One HDEL per moves hash (one on one Redis; one per slot on a cluster).
            let mut hdels: HashMap<&Bytes, Vec<&[u8]>> = HashMap::new();
            for (m, o) in chunk.iter().zip(&outcomes) {
                c.metrics.outcome(*o, 1);
                if *o == Outcome::Applied {
                    c.metrics.flushed.inc_by(m.delta.unsigned_abs());
                }
                self.failed.remove(&m.id);
                self.failed_keys.remove(&m.key);
                hdels
                    .entry(&m.hash)
                    .or_insert_with(|| vec![&b"HDEL"[..], &m.hash[..]])
                    .push(m.id.as_bytes());
            }
            let mut pipeline = Vec::new();
            for hdel in hdels.values() {
                pipeline.extend_from_slice(&encode_command(hdel));
            }
            // If this fails the records stay: a later recovery finds their ids applied.
            let _ = call(&self.upstream, Bytes::from(pipeline), hdels.len() as u32).await;
        }
        true
    }

    /// Moves left recorded after a failure: counted, and retried next cycle by this sidecar.
    fn keep_failed<'m>(&mut self, c: &Counter, moves: impl Iterator<Item = &'m Move>) {
        for m in moves {
            c.metrics.outcome(Outcome::Error, 1);
            self.remember_failed(c, m);
        }
    }

    /// Applies one move and forgets its record; false if the database failed (the record
    /// stays, to be retried). A statement that fails for this move alone (a constraint, a
    /// value its column refuses) keeps the record too, to be retried next cycle, but the
    /// others go on: one bad key does not hold up the rest.
    async fn apply(&mut self, c: &Arc<Counter>, m: Move) -> bool {
        let (_, limit) = self.db.statement_settings();
        let (outcome, db_up) = match tokio::time::timeout(limit * 3, apply::one(&self.db, c, &m))
            .await
        {
            Ok(Ok(o)) => (o, true),
            Ok(Err(e)) => {
                tracing::warn!(counter = %c.settings.name, error = %e, "counter flush failed; will retry");
                (Outcome::Error, matches!(e, DbError::Query(_)))
            }
            Err(_) => {
                tracing::warn!(counter = %c.settings.name, "counter flush timed out; will retry");
                (Outcome::Error, false)
            }
        };
        c.metrics.outcome(outcome, 1);
        if outcome == Outcome::Error {
            self.remember_failed(c, &m);
            return db_up;
        }
        if outcome == Outcome::Applied {
            c.metrics.flushed.inc_by(m.delta.unsigned_abs());
        }
        let cmd = encode_command(&[&b"HDEL"[..], &m.hash, m.id.as_bytes()]);
        // If this fails the record stays: a later recovery finds the id applied.
        let _ = call(&self.upstream, cmd, 1).await;
        self.failed.remove(&m.id);
        self.failed_keys.remove(&m.key);
        true
    }
}
