//! The write-behind worker on a Redis Cluster: one stream per slot, so each round reads the
//! streams of the slots in the worker's [`Active`](super::slots::Active) set, pipelined (the
//! cluster routing sends each command to its slot's primary, grouped per primary, and follows
//! `-MOVED`/`-ASK` when a slot moves; a stream moves with its slot, entries, ids and group).
//! Per stream: this consumer's unacknowledged entries (`0`), new ones (`>`) and the length.
//! The entries are applied and acknowledged as on one Redis ([`Worker::process`]).
//!
//! Sweeps find what no running sidecar reads: streams of slots that only a sidecar that died
//! wrote to. Every sidecar sweeps once at start; after that, one sidecar of the fleet per
//! `write_behind_sweep_every` (whoever takes the lease `cacheside:wb:sweep:<mapping>` first).
//! A sweep is one XLEN per slot (16,384, 1,024 per round trip, each group split per primary by
//! the routing), plus one for the mapping's single-Redis stream: a cluster that `auto` found
//! after the start may have taken entries there. What it finds joins the set; entries another
//! consumer held are taken over after `write_behind_claim_idle` (XAUTOCLAIM).
//!
//! The sweeper also prunes `cacheside_write_versions`: a key's entries are all in its slot's
//! stream, and a stream's new ids are above its last one, so a version row can only turn away
//! an entry still in its stream. Rows below the oldest entry of every non-empty stream (and a
//! minute old) are deleted, unless the slot map changed during the sweep (a stream being
//! migrated may have been missed).

use super::apply::StreamId;
use super::entries::{read_claim, read_group, read_range};
use super::slots::Found;
use super::worker::{Round, Worker, BATCH, GROUP};
use super::BehindSettings;
use crate::loader::call;
use crate::protocol::request::encode_command;
use crate::protocol::scan::integer;
use crate::tier::redis::cluster::slot::SLOTS;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Streams read per round trip (three commands each).
const PROBE: usize = 32;
/// Streams asked per round trip by a sweep (one XLEN each).
const SWEEP_CHUNK: usize = 1024;
/// Version rows younger than this are never pruned on a cluster.
const PRUNE_MARGIN: Duration = Duration::from_secs(60);

/// Entries read per stream, so that a round trip reads about one batch however many streams
/// it covers.
fn per_stream(streams: usize) -> usize {
    (BATCH / streams.max(1)).clamp(8, BATCH)
}

/// The wait before a mapping's next periodic sweep: 80% to 100% of `sweep_every` (sidecars
/// started together drift apart); with the lease held for 75% of it, one sweep of the fleet's
/// runs about every `sweep_every`.
pub(super) fn sweep_wait(s: &BehindSettings) -> Duration {
    s.sweep_every
        .min(Duration::from_secs(86_400 * 365))
        .mul_f64(0.8 + 0.2 * rand::random::<f64>())
}

impl Worker {
    /// One step on a cluster: the start sweep until it succeeds, a periodic sweep when due,
    /// entries held too long by others when due, then a round over the due streams.
    pub(super) async fn cluster_step(&mut self) -> Round {
        if !self.swept {
            if let Some(found) = self.sweep().await {
                self.swept = true;
                if !found.is_empty() {
                    tracing::info!(mapping = %self.q.settings.mapping, streams = found.len(), "write-behind: entries left in slots by earlier sidecars; applying them");
                }
                let now = Instant::now();
                for (s, n) in found {
                    self.active.found(s, n, now);
                }
            }
        }
        if Instant::now() >= self.sweep_due {
            self.sweep_due = Instant::now() + sweep_wait(&self.q.settings);
            self.periodic_sweep().await;
        }
        if self.claimed_at.elapsed() >= self.q.settings.claim_idle / 2 {
            self.claimed_at = Instant::now();
            if matches!(self.cluster_claim().await, Round::Failed) {
                return Round::Failed;
            }
        }
        self.cluster_round().await
    }

    /// Reads every due stream, applies what it finds, and settles each stream in the set.
    async fn cluster_round(&mut self) -> Round {
        let now = Instant::now();
        for s in self.q.marks.take() {
            self.active.marked(self.q.slot_stream(s), now);
        }
        if let Ok(mut known) = self.q.known.lock() {
            *known = self.active.all();
        }
        let due = self.active.due(now);
        let mut any = false;
        for chunk in due.chunks(PROBE) {
            let count = per_stream(chunk.len());
            let mut pipeline = Vec::new();
            for s in chunk {
                for from in [&b"0"[..], b">"] {
                    pipeline.extend_from_slice(&self.read_command(s, count, from));
                }
                pipeline.extend_from_slice(&encode_command(&[&b"XLEN"[..], s]));
            }
            let n = 3 * chunk.len() as u32;
            let Ok(r) = call(&self.upstream, Bytes::from(pipeline), n).await else {
                return Round::Failed;
            };
            let (mut entries, mut gone, mut found) = (Vec::new(), Vec::new(), Vec::new());
            for (s, r) in chunk.iter().zip(r.chunks(3)) {
                // No group yet: the stream was never written (a write refused or not sent).
                let bad = |b: &Bytes| b.starts_with(b"-") && !b.starts_with(b"-NOGROUP");
                if r.len() < 3 || bad(&r[0]) || bad(&r[1]) {
                    found.push(Found::Unknown);
                    continue;
                }
                let (own, own_gone) = read_group(&r[0], s);
                let (new, new_gone) = read_group(&r[1], s);
                let got = !(own.is_empty()
                    && new.is_empty()
                    && own_gone.is_empty()
                    && new_gone.is_empty());
                entries.extend(own.into_iter().chain(new));
                gone.extend(
                    own_gone
                        .into_iter()
                        .chain(new_gone)
                        .map(|id| (s.clone(), id)),
                );
                found.push(match (got, integer(&r[2])) {
                    (true, _) => Found::Entries,
                    (false, Some(len)) => Found::Len(len.max(0) as u64),
                    (false, None) => Found::Unknown,
                });
            }
            let failed = if entries.is_empty() && gone.is_empty() {
                false
            } else {
                any = true;
                matches!(self.process(entries, gone).await, Round::Failed)
            };
            let mut left = Vec::new();
            for (s, f) in chunk.iter().zip(found) {
                if self.active.settle(s, f, now) {
                    left.push(s.clone());
                }
            }
            self.leave(&left).await;
            if failed {
                return Round::Failed;
            }
        }
        if any {
            Round::Done
        } else {
            Round::Idle
        }
    }

    /// Takes over entries idle longer than `claim_idle` in the streams that held entries at
    /// their last read.
    async fn cluster_claim(&mut self) -> Round {
        let idle = self.q.settings.claim_idle.as_millis().to_string();
        let holding = self.active.holding();
        let mut any = false;
        for chunk in holding.chunks(PROBE) {
            let count = per_stream(chunk.len()).to_string();
            let mut pipeline = Vec::new();
            for s in chunk {
                pipeline.extend_from_slice(&encode_command(&[
                    &b"XAUTOCLAIM"[..],
                    s,
                    GROUP,
                    &self.consumer,
                    idle.as_bytes(),
                    b"0-0",
                    b"COUNT",
                    count.as_bytes(),
                ]));
            }
            let Ok(r) = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32).await
            else {
                return Round::Failed;
            };
            let (mut entries, mut gone) = (Vec::new(), Vec::new());
            for (s, r) in chunk.iter().zip(&r) {
                if let Some((e, g)) = read_claim(r, s) {
                    entries.extend(e);
                    gone.extend(g.into_iter().map(|id| (s.clone(), id)));
                }
            }
            if entries.is_empty() && gone.is_empty() {
                continue;
            }
            any = true;
            if matches!(self.claimed(entries, gone).await, Round::Failed) {
                return Round::Failed;
            }
        }
        if any {
            Round::Done
        } else {
            Round::Idle
        }
    }

    /// This consumer leaves the groups of the streams it no longer reads (found empty, so it
    /// holds nothing there), with the consumers of sidecars that are gone (nothing pending,
    /// idle an hour: see `prune`), so that a fleet's restarts and kills do not pile up
    /// consumers in the slots' groups.
    async fn leave(&self, streams: &[Bytes]) {
        for chunk in streams.chunks(PROBE) {
            let mut pipeline = Vec::new();
            for s in chunk {
                pipeline.extend_from_slice(&encode_command(&[
                    &b"XINFO"[..],
                    b"CONSUMERS",
                    s,
                    GROUP,
                ]));
            }
            let Ok(r) = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32).await
            else {
                return;
            };
            let mut pipeline = Vec::new();
            let mut n = 0;
            for (s, r) in chunk.iter().zip(&r) {
                let mut names = super::prune::gone_consumers(r);
                names.push(self.consumer.to_vec());
                for name in &names {
                    pipeline.extend_from_slice(&encode_command(&[
                        &b"XGROUP"[..],
                        b"DELCONSUMER",
                        s,
                        GROUP,
                        name,
                    ]));
                    n += 1;
                }
            }
            // Best effort: a consumer left behind holds nothing, and goes with a later leave.
            let _ = call(&self.upstream, Bytes::from(pipeline), n).await;
        }
    }

    /// Every stream of the mapping that holds entries, with its length; `None` if some part
    /// of the cluster could not be asked.
    async fn sweep(&self) -> Option<Vec<(Bytes, u64)>> {
        let mut streams: Vec<Bytes> = (0..SLOTS as u16).map(|s| self.q.slot_stream(s)).collect();
        streams.push(self.q.stream.clone());
        let mut found = Vec::new();
        for chunk in streams.chunks(SWEEP_CHUNK) {
            let mut pipeline = Vec::new();
            for s in chunk {
                pipeline.extend_from_slice(&encode_command(&[&b"XLEN"[..], s]));
            }
            let replies = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32)
                .await
                .ok()?;
            for (s, r) in chunk.iter().zip(&replies) {
                let n = integer(r)?;
                if n > 0 {
                    found.push((s.clone(), n as u64));
                }
            }
        }
        self.q.metrics.sweeps.inc();
        Some(found)
    }

    /// Every `write_behind_sweep_every` or so: if no other sidecar swept lately (the lease),
    /// looks in every slot; what it finds is read from the next round on. Then prunes the
    /// version rows.
    async fn periodic_sweep(&mut self) {
        let lease = format!("cacheside:wb:sweep:{}", self.q.settings.mapping);
        let every = self.q.settings.sweep_every;
        if !crate::strategy::marks::take_sweep_lease(&self.upstream, &lease, every).await {
            return;
        }
        let before = self.slot_map();
        let Some(found) = self.sweep().await else {
            return;
        };
        let now = Instant::now();
        for (s, n) in &found {
            self.active.found(s.clone(), *n, now);
        }
        tracing::debug!(mapping = %self.q.settings.mapping, streams = self.active.len(), "write-behind: swept every slot");
        let same = match (before, self.slot_map()) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
            _ => false,
        };
        if same {
            if let Some(n) = self.prune_cluster(&found).await {
                tracing::debug!(mapping = %self.q.settings.mapping, rows = n, "write-behind: version rows pruned");
            }
        }
    }

    fn slot_map(&self) -> Option<Arc<crate::tier::redis::cluster::Topology>> {
        self.upstream.cluster().and_then(|c| c.topology())
    }

    /// Deletes the version rows below the oldest entry of every stream the sweep found
    /// holding entries, and a minute old at least; the rows deleted, or `None`.
    async fn prune_cluster(&self, found: &[(Bytes, u64)]) -> Option<u64> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut below = StreamId(now_ms - PRUNE_MARGIN.as_millis() as i64, 0);
        for chunk in found.chunks(SWEEP_CHUNK) {
            let mut pipeline = Vec::new();
            for (s, _) in chunk {
                pipeline.extend_from_slice(&encode_command(&[
                    &b"XRANGE"[..],
                    s,
                    b"-",
                    b"+",
                    b"COUNT",
                    b"1",
                ]));
            }
            let replies = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32)
                .await
                .ok()?;
            for ((s, _), r) in chunk.iter().zip(&replies) {
                if r.starts_with(b"-") {
                    return None;
                }
                let (entries, gone) = read_range(r, s);
                let oldest = entries
                    .first()
                    .map(|e| e.id)
                    .or_else(|| gone.first().and_then(|g| StreamId::parse(g)));
                if let Some(o) = oldest {
                    below = below.min(o);
                }
            }
        }
        super::prune::delete_below(&self.db, &self.q.settings.mapping, below).await
    }
}
