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

use super::apply::{self, Applied, Entry, StreamId};
use super::{Behind, Queue};
use crate::loader::{call, Database};
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use crate::protocol::Proto;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(super) const GROUP: &[u8] = b"cacheside";
/// Entries per read.
const BATCH: usize = 256;
/// Pause when the stream has nothing for this consumer (no BLOCK: the connections are shared).
const IDLE: Duration = Duration::from_millis(20);
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

struct Worker {
    q: Arc<Queue>,
    upstream: Arc<Upstream>,
    db: Arc<Database>,
    consumer: Bytes,
    /// Failed attempts per entry id (this sidecar's count; bounded).
    attempts: HashMap<Bytes, u32>,
    /// The newest entry acknowledged since version rows were last pruned (see `prune`).
    applied: Option<StreamId>,
}

/// What a round found.
enum Round {
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
        let mut backoff = Duration::from_millis(50);
        let mut claimed_at = Instant::now();
        let mut pruned_at = Instant::now();
        let mut consumers_at = Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            let mut round = self.round(b"0").await;
            if matches!(round, Round::Idle)
                && claimed_at.elapsed() >= self.q.settings.claim_idle / 2
            {
                claimed_at = Instant::now();
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
            let pause = match round {
                Round::Done => {
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Round::Idle => IDLE,
                Round::Failed => {
                    let b = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    b
                }
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

    /// XREADGROUP from `from` (`0`: this consumer's unacknowledged entries; `>`: new ones).
    async fn round(&mut self, from: &[u8]) -> Round {
        let count = BATCH.to_string();
        let cmd = encode_command(&[
            &b"XREADGROUP"[..],
            b"GROUP",
            GROUP,
            &self.consumer,
            b"COUNT",
            count.as_bytes(),
            b"STREAMS",
            &self.q.stream,
            from,
        ]);
        let Ok(r) = call(&self.upstream, cmd, 1).await else {
            return Round::Failed;
        };
        let (entries, gone) = read_entries(&r[0]);
        if entries.is_empty() && gone.is_empty() {
            return Round::Idle;
        }
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
        let Some((v, _)) = Value::parse(&r[0], Proto::Resp2) else {
            return Round::Failed;
        };
        let Some(claimed) = v.items().and_then(|mut i| {
            i.next();
            i.next()
        }) else {
            return Round::Idle;
        };
        let (entries, gone) = entries_of(&r[0], claimed);
        if entries.is_empty() && gone.is_empty() {
            return Round::Idle;
        }
        self.q.metrics.claimed.inc_by(entries.len() as u64);
        tracing::info!(mapping = %self.q.settings.mapping, entries = entries.len(), "write-behind: took over entries another sidecar held too long");
        self.process(entries, gone).await
    }

    /// Applies a batch and acknowledges what is done with. `gone`: ids whose entries were
    /// deleted from the stream already (acknowledged only).
    async fn process(&mut self, entries: Vec<Entry>, gone: Vec<Bytes>) -> Round {
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
        let mut done: Vec<Bytes> = gone;
        let mut dead: Vec<(&Entry, String)> = Vec::new();
        let mut failed_keys: Vec<&Bytes> = Vec::new();
        for (e, r) in latest.iter().zip(results) {
            match r {
                Applied::Written | Applied::Older => {}
                Applied::Poison(why) => dead.push((e, why)),
                Applied::Failed(why) => {
                    let n = self.attempts.entry(e.id_text.clone()).or_insert(0);
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
                done.push(e.id_text.clone());
                flushed += 1;
            }
        }
        for (e, why) in &dead {
            if !self.dead_letter(e, why).await {
                return Round::Failed;
            }
            self.attempts.remove(&e.id_text);
            for other in entries.iter().filter(|o| o.key == e.key) {
                done.push(other.id_text.clone());
            }
        }
        // Markers of applied (or dead-lettered) deletions go before the entries: a crash in
        // between leaves the entries to be applied again, which changes nothing.
        let unmark: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.delete && done.contains(&e.id_text))
            .collect();
        if !self.unmark(&unmark).await {
            return Round::Failed;
        }
        if !self.ack(&done).await {
            return Round::Failed;
        }
        let newest = entries
            .iter()
            .filter(|e| done.contains(&e.id_text))
            .map(|e| e.id)
            .max();
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
        let markers: Vec<Bytes> = deletions
            .iter()
            .map(|e| crate::loader::negative_key(&e.key))
            .collect();
        let n = deletions.len().to_string();
        let mut args: Vec<&[u8]> = vec![b"EVAL", super::UNMARK_SCRIPT.as_bytes(), n.as_bytes()];
        args.extend(markers.iter().map(|m| &m[..]));
        args.extend(deletions.iter().map(|e| &e.id_text[..]));
        matches!(call(&self.upstream, encode_command(&args), 1).await, Ok(r) if !r[0].starts_with(b"-"))
    }

    /// XACK then XDEL: the stream holds only entries not yet applied, so XLEN is the backlog.
    async fn ack(&self, ids: &[Bytes]) -> bool {
        if ids.is_empty() {
            return true;
        }
        let mut ack: Vec<&[u8]> = vec![b"XACK", &self.q.stream, GROUP];
        ack.extend(ids.iter().map(|b| &b[..]));
        let mut del: Vec<&[u8]> = vec![b"XDEL", &self.q.stream];
        del.extend(ids.iter().map(|b| &b[..]));
        let mut pipeline = encode_command(&ack).to_vec();
        pipeline.extend_from_slice(&encode_command(&del));
        matches!(call(&self.upstream, Bytes::from(pipeline), 2).await, Ok(r) if r.iter().all(|x| !x.starts_with(b"-")))
    }
}

/// The entries of an XREADGROUP reply (`[[stream, [[id, [k, key, v, value]], ...]]]`), and the
/// ids of entries deleted since they were delivered (their fields are nil).
fn read_entries(reply: &Bytes) -> (Vec<Entry>, Vec<Bytes>) {
    let Some((v, _)) = Value::parse(reply, Proto::Resp2) else {
        return (Vec::new(), Vec::new());
    };
    let Some(stream) = v.items().and_then(|mut s| s.next()) else {
        return (Vec::new(), Vec::new());
    };
    match stream.items().and_then(|mut i| {
        i.next();
        i.next()
    }) {
        Some(list) => entries_of(reply, list),
        None => (Vec::new(), Vec::new()),
    }
}

/// XRANGE's reply: a list of entries.
pub(super) fn read_range(reply: &Bytes) -> (Vec<Entry>, Vec<Bytes>) {
    match Value::parse(reply, Proto::Resp2) {
        Some((v, _)) => entries_of(reply, v),
        None => (Vec::new(), Vec::new()),
    }
}

fn entries_of(reply: &Bytes, list: Value<'_>) -> (Vec<Entry>, Vec<Bytes>) {
    let (mut entries, mut gone) = (Vec::new(), Vec::new());
    let Some(items) = list.items() else {
        return (entries, gone);
    };
    for item in items {
        let Some(mut parts) = item.items() else {
            continue;
        };
        let Some(id_text) = parts.next().and_then(|i| i.string()) else {
            continue;
        };
        let id_text = reply.slice_ref(id_text);
        let Some(id) = StreamId::parse(&id_text) else {
            continue;
        };
        let fields = parts.next();
        let mut key = None;
        let mut value = None;
        let mut delete = false;
        if let Some(mut f) = fields.and_then(|f| f.items()) {
            while let (Some(name), Some(v)) = (f.next(), f.next()) {
                match (name.string(), v.string()) {
                    (Some(b"k"), Some(k)) => key = Some(reply.slice_ref(k)),
                    (Some(b"v"), Some(val)) => value = Some(reply.slice_ref(val)),
                    (Some(b"d"), Some(_)) => delete = true,
                    _ => {}
                }
            }
        }
        if delete && value.is_none() {
            value = Some(Bytes::new());
        }
        match (key, value) {
            (Some(key), Some(value)) => entries.push(Entry {
                id,
                id_text,
                key,
                value,
                delete,
            }),
            _ => gone.push(id_text),
        }
    }
    (entries, gone)
}
