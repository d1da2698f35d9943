//! The write-behind worker: one task per mapping in every sidecar, a consumer of the mapping's
//! stream in the group `cacheside`.
//!
//! Each round it reads, in this order: entries delivered to it before and not acknowledged
//! (retries, and what it held when it last stopped, if its name is the same), entries another
//! consumer has held longer than `write_behind_claim_idle` (XAUTOCLAIM: a dead sidecar's), then
//! new ones. A batch is applied in one transaction ([`super::apply`]), the latest entry per key
//! only, each guarded by the key's stream-id version, so re-applying any entry (after a crash
//! between the commit and the XACK, or by two sidecars) never moves the database backwards.
//! Entries are acknowledged and deleted from the stream only after the commit. A statement that
//! fails is retried with backoff; after `write_behind_max_attempts` failures the entry moves to
//! `cacheside:wb:<mapping>:dead` (XADD of key, value, id and error) and is acknowledged.
//!
//! On a Redis Cluster the rounds read the streams of many slots instead ([`super::cluster`]);
//! applying and acknowledging is the same, each entry acknowledged in its own stream.

use super::apply::{self, Applied, Entry, StreamId};
use super::entries::{read_claim, read_group};
use super::{Behind, Queue};
use crate::loader::{call, Database};
use crate::protocol::request::encode_command;
use crate::tier::redis::cluster::slot;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(super) const GROUP: &[u8] = b"cacheside";
/// Entries per read.
pub(super) const BATCH: usize = 256;
/// Pause when the stream has nothing for this consumer (no BLOCK: the connections are shared).
const IDLE: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts one worker per write-behind mapping, and its gauges; each ends once `stop` turns true.
pub fn spawn(
    behind: Arc<Behind>,
    upstream: Arc<Upstream>,
    db: Arc<Database>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cacheside".into());
    behind
        .list
        .iter()
        .flat_map(|q| {
            let w = Worker {
                q: q.clone(),
                upstream: upstream.clone(),
                db: db.clone(),
                consumer: Bytes::from(format!("{host}-{:08x}", rand::random::<u32>())),
                attempts: HashMap::new(),
                applied: None,
                active: super::slots::Active::default(),
                swept: false,
                sweep_due: Instant::now() + super::cluster::sweep_wait(&q.settings),
                claimed_at: Instant::now(),
            };
            [
                tokio::spawn(w.run(stop.clone())),
                tokio::spawn(super::gauges::run(
                    q.clone(),
                    upstream.clone(),
                    stop.clone(),
                )),
            ]
        })
        .collect()
}

pub(super) struct Worker {
    pub(super) q: Arc<Queue>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) db: Arc<Database>,
    pub(super) consumer: Bytes,
    /// Failed attempts per entry (stream, id) (this sidecar's count; bounded).
    attempts: HashMap<(Bytes, Bytes), u32>,
    /// The newest entry acknowledged since version rows were last pruned (see `prune`).
    applied: Option<StreamId>,
    /// Cluster mode: the streams this worker reads.
    pub(super) active: super::slots::Active,
    /// Cluster mode: whether the start sweep (every slot) has run.
    pub(super) swept: bool,
    /// Cluster mode: when this worker next tries to take the sweep lease.
    pub(super) sweep_due: Instant,
    /// When entries idle past `claim_idle` were last claimed.
    pub(super) claimed_at: Instant,
}

/// What a round found.
pub(super) enum Round {
    /// Nothing to do.
    Idle,
    /// Applied and acknowledged what it read.
    Done,
    /// The database or Redis failed: wait before the next round.
    Failed,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut wait = Duration::from_millis(50);
        while !self.setup().await {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => wait = (wait * 2).min(BACKOFF_MAX),
            }
        }
        let mut backoff = BACKOFF_MIN;
        let mut pruned_at = Instant::now();
        let mut consumers_at = Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if self.q.is_cluster() {
                let round = self.cluster_step().await;
                let Some(pause) = pause(round, &mut backoff) else {
                    continue;
                };
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            let mut round = self.round(b"0").await;
            if matches!(round, Round::Idle)
                && self.claimed_at.elapsed() >= self.q.settings.claim_idle / 2
            {
                self.claimed_at = Instant::now();
                round = self.claim().await;
            }
            if matches!(round, Round::Idle) {
                round = self.round(b">").await;
            }
            // Version rows: pruned when the stream runs empty, and now and then under load.
            let due = match round {
                Round::Idle => pruned_at.elapsed() >= Duration::from_secs(1),
                Round::Done => pruned_at.elapsed() >= super::prune::EVERY,
                Round::Failed => false,
            };
            if let Some(applied) = self.applied.filter(|_| due) {
                pruned_at = Instant::now();
                if let Some(n) = super::prune::run(&self.q, &self.upstream, &self.db, applied).await
                {
                    tracing::debug!(mapping = %self.q.settings.mapping, rows = n, "write-behind: version rows pruned");
                    self.applied = None;
                }
            }
            if consumers_at.elapsed() >= super::prune::EVERY {
                consumers_at = Instant::now();
                if let Some(n) = super::prune::forget_gone_consumers(&self.q, &self.upstream)
                    .await
                    .filter(|n| *n > 0)
                {
                    tracing::info!(mapping = %self.q.settings.mapping, consumers = n, "write-behind: removed the group's consumers of sidecars that are gone");
                }
            }
            let Some(pause) = pause(round, &mut backoff) else {
                continue;
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The consumer group (from the stream's start, so writes queued before any worker ran
    /// are read) and the versions table.
    async fn setup(&self) -> bool {
        let cmd = encode_command(&[
            &b"XGROUP"[..],
            b"CREATE",
            &self.q.stream,
            GROUP,
            b"0",
            b"MKSTREAM",
        ]);
        match call(&self.upstream, cmd, 1).await {
            Ok(r) if r[0].starts_with(b"+") || r[0].starts_with(b"-BUSYGROUP") => {}
            Ok(r) => {
                tracing::warn!(mapping = %self.q.settings.mapping, reply = %String::from_utf8_lossy(&r[0]), "write-behind: cannot create the consumer group");
                return false;
            }
            Err(_) => return false,
        }
        let Ok(conn) = self.db.connection().await else {
            return false;
        };
        match conn.batch_execute(apply::TABLE).await {
            Ok(()) => true,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => true,
            Err(e) => {
                tracing::warn!(error = %e, "write-behind: cannot create cacheside_write_versions yet");
                false
            }
        }
    }

    /// XREADGROUP of up to `count` entries of `stream` from `from` (`0`: this consumer's
    /// unacknowledged entries; `>`: new ones).
    pub(super) fn read_command(&self, stream: &[u8], count: usize, from: &[u8]) -> Bytes {
        let count = count.to_string();
        encode_command(&[
            &b"XREADGROUP"[..],
            b"GROUP",
            GROUP,
            &self.consumer,
            b"COUNT",
            count.as_bytes(),
            b"STREAMS",
            stream,
            from,
        ])
    }

    /// XREADGROUP from `from` (`0`: this consumer's unacknowledged entries; `>`: new ones).
    async fn round(&mut self, from: &[u8]) -> Round {
        let cmd = self.read_command(&self.q.stream, BATCH, from);
        let Ok(r) = call(&self.upstream, cmd, 1).await else {
            return Round::Failed;
        };
        let (entries, gone) = read_group(&r[0], &self.q.stream);
        if entries.is_empty() && gone.is_empty() {
            return Round::Idle;
        }
        let gone = gone
            .into_iter()
            .map(|id| (self.q.stream.clone(), id))
            .collect();
        self.process(entries, gone).await
    }

    /// Takes over entries idle longer than `claim_idle` (their sidecar died or is stuck).
    async fn claim(&mut self) -> Round {
        let idle = self.q.settings.claim_idle.as_millis().to_string();
        let count = BATCH.to_string();
        let cmd = encode_command(&[
            &b"XAUTOCLAIM"[..],
            &self.q.stream,
            GROUP,
            &self.consumer,
            idle.as_bytes(),
            b"0-0",
            b"COUNT",
            count.as_bytes(),
        ]);
        let Ok(r) = call(&self.upstream, cmd, 1).await else {
            return Round::Failed;
        };
        let Some((entries, gone)) = read_claim(&r[0], &self.q.stream) else {
            return Round::Failed;
        };
        if entries.is_empty() && gone.is_empty() {
            return Round::Idle;
        }
        let gone = gone
            .into_iter()
            .map(|id| (self.q.stream.clone(), id))
            .collect();
        self.claimed(entries, gone).await
    }

    /// Applies entries taken over from another consumer.
    pub(super) async fn claimed(
        &mut self,
        entries: Vec<Entry>,
        gone: Vec<(Bytes, Bytes)>,
    ) -> Round {
        self.q.metrics.claimed.inc_by(entries.len() as u64);
        tracing::info!(mapping = %self.q.settings.mapping, entries = entries.len(), "write-behind: took over entries another sidecar held too long");
        self.process(entries, gone).await
    }

    /// Applies a batch and acknowledges what is done with. `gone`: (stream, id) of entries
    /// deleted from their stream already (acknowledged only).
    pub(super) async fn process(
        &mut self,
        entries: Vec<Entry>,
        gone: Vec<(Bytes, Bytes)>,
    ) -> Round {
        // The latest entry per key; the earlier ones are superseded by it.
        let mut latest: HashMap<&Bytes, &Entry> = HashMap::new();
        for e in &entries {
            match latest.get(&e.key) {
                Some(l) if l.id >= e.id => {}
                _ => {
                    latest.insert(&e.key, e);
                }
            }
        }
        let mut latest: Vec<&Entry> = latest.into_values().collect();
        let (_, limit) = self.db.statement_settings();
        let budget = limit * (latest.len() as u32 + 3);
        let results = match tokio::time::timeout(
            budget,
            apply::apply(&self.db, &self.q.settings, &mut latest),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(mapping = %self.q.settings.mapping, error = %e, "write-behind: database unavailable; will retry");
                self.q.metrics.retried.inc_by(entries.len() as u64);
                return Round::Failed;
            }
            Err(_) => {
                tracing::warn!(mapping = %self.q.settings.mapping, "write-behind: batch timed out; will retry");
                self.q.metrics.retried.inc_by(entries.len() as u64);
                return Round::Failed;
            }
        };
        let mut done: Vec<(Bytes, Bytes)> = gone;
        let mut dead: Vec<(&Entry, String)> = Vec::new();
        let mut failed_keys: Vec<&Bytes> = Vec::new();
        for (e, r) in latest.iter().zip(results) {
            match r {
                Applied::Written | Applied::Older => {}
                Applied::Poison(why) => dead.push((e, why)),
                Applied::Failed(why) => {
                    let n = self
                        .attempts
                        .entry((e.stream.clone(), e.id_text.clone()))
                        .or_insert(0);
                    *n += 1;
                    if *n >= self.q.settings.max_attempts {
                        dead.push((e, why));
                    } else {
                        tracing::warn!(mapping = %self.q.settings.mapping, attempt = *n, error = %why, "write-behind: write failed; will retry");
                        failed_keys.push(&e.key);
                    }
                }
            }
        }
        if self.attempts.len() > 100_000 {
            self.attempts.clear();
        }
        // A key whose latest entry failed keeps all its entries for the retry.
        let mut flushed = 0u64;
        for e in &entries {
            if !failed_keys.contains(&&e.key) && !dead.iter().any(|(d, _)| d.key == e.key) {
                done.push((e.stream.clone(), e.id_text.clone()));
                flushed += 1;
            }
        }
        for (e, why) in &dead {
            if !self.dead_letter(e, why).await {
                return Round::Failed;
            }
            self.attempts.remove(&(e.stream.clone(), e.id_text.clone()));
            for other in entries.iter().filter(|o| o.key == e.key) {
                done.push((other.stream.clone(), other.id_text.clone()));
            }
        }
        // Markers of applied (or dead-lettered) deletions go before the entries: a crash in
        // between leaves the entries to be applied again, which changes nothing.
        let is_done = |e: &Entry| {
            done.iter()
                .any(|(s, id)| *s == e.stream && *id == e.id_text)
        };
        let unmark: Vec<&Entry> = entries.iter().filter(|e| e.delete && is_done(e)).collect();
        if !self.unmark(&unmark).await {
            return Round::Failed;
        }
        if !self.ack(&done).await {
            return Round::Failed;
        }
        let newest = entries.iter().filter(|e| is_done(e)).map(|e| e.id).max();
        self.applied = self.applied.max(newest);
        self.q.metrics.flushed.inc_by(flushed);
        if failed_keys.is_empty() {
            Round::Done
        } else {
            self.q.metrics.retried.inc_by(failed_keys.len() as u64);
            // Retries come back through `round(b"0")` after the backoff.
            Round::Failed
        }
    }

    async fn dead_letter(&self, e: &Entry, why: &str) -> bool {
        tracing::warn!(mapping = %self.q.settings.mapping, id = %String::from_utf8_lossy(&e.id_text), error = %why, "write-behind: entry moved to the dead-letter stream");
        let cmd = encode_command(&[
            &b"XADD"[..],
            &self.q.dead,
            b"*",
            b"k",
            &e.key,
            if e.delete { b"d" } else { b"v" },
            if e.delete { b"1" } else { &e.value },
            b"id",
            &e.id_text,
            b"error",
            why.as_bytes(),
        ]);
        match call(&self.upstream, cmd, 1).await {
            Ok(r) if !r[0].starts_with(b"-") => {
                self.q.metrics.dead.inc();
                true
            }
            _ => false,
        }
    }

    /// Removes the "not found" markers of applied deletions that still hold their entry's id
    /// (see `DEL_SCRIPT`): reads then find the database's answer.
    async fn unmark(&self, deletions: &[&Entry]) -> bool {
        if deletions.is_empty() {
            return true;
        }
        // One script per slot: on a cluster each marker lives in its key's slot.
        let mut by_slot: HashMap<u16, Vec<&Entry>> = HashMap::new();
        for e in deletions {
            by_slot.entry(slot::of(&e.key)).or_default().push(e);
        }
        let mut pipeline = Vec::new();
        for group in by_slot.values() {
            let markers: Vec<Bytes> = group
                .iter()
                .map(|e| crate::loader::negative_key(&e.key))
                .collect();
            let n = group.len().to_string();
            let mut args: Vec<&[u8]> = vec![
                b"EVAL",
                super::scripts::UNMARK_SCRIPT.as_bytes(),
                n.as_bytes(),
            ];
            args.extend(markers.iter().map(|m| &m[..]));
            args.extend(group.iter().map(|e| &e.id_text[..]));
            pipeline.extend_from_slice(&encode_command(&args));
        }
        let n = by_slot.len() as u32;
        matches!(call(&self.upstream, Bytes::from(pipeline), n).await, Ok(r) if r.iter().all(|x| !x.starts_with(b"-")))
    }

    /// XACK then XDEL, per stream: a stream holds only entries not yet applied, so XLEN is the
    /// backlog.
    async fn ack(&self, ids: &[(Bytes, Bytes)]) -> bool {
        if ids.is_empty() {
            return true;
        }
        let mut by_stream: HashMap<&Bytes, Vec<&[u8]>> = HashMap::new();
        for (s, id) in ids {
            by_stream.entry(s).or_default().push(id);
        }
        let mut pipeline = Vec::new();
        for (stream, ids) in &by_stream {
            let mut ack: Vec<&[u8]> = vec![b"XACK", stream, GROUP];
            ack.extend(ids);
            let mut del: Vec<&[u8]> = vec![b"XDEL", stream];
            del.extend(ids);
            pipeline.extend_from_slice(&encode_command(&ack));
            pipeline.extend_from_slice(&encode_command(&del));
        }
        let n = 2 * by_stream.len() as u32;
        matches!(call(&self.upstream, Bytes::from(pipeline), n).await, Ok(r) if r.iter().all(|x| !x.starts_with(b"-")))
    }
}

/// The wait before the next round: none after one that applied entries (the backoff starts
/// over), `IDLE` after an empty one, the backoff (doubled for the next failure) after a failure.
fn pause(round: Round, backoff: &mut Duration) -> Option<Duration> {
    match round {
        Round::Done => {
            *backoff = BACKOFF_MIN;
            None
        }
        Round::Idle => Some(IDLE),
        Round::Failed => {
            let b = *backoff;
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            Some(b)
        }
    }
}
