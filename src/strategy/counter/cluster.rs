//! The flusher on a Redis Cluster: the moves of `flush.rs`, run per slot. Each cycle reads the
//! moves hashes where records may wait, then the dirty sets, of the slots in the counter's
//! [`Active`](super::slots::Active) set, pipelined: the cluster routing sends each
//! command to its slot's primary, grouped per primary, and follows `-MOVED`/`-ASK` when a slot
//! moves. A slot's dirty set, moves hash and pending deltas share the slot, so they move with
//! it and the scripts keep working on the new primary.
//!
//! Sweeps find what no running sidecar knows of: deltas and records left in slots that only a
//! sidecar that died wrote to. Every sidecar sweeps once at start (records of any age are then
//! applied, as on one Redis); after that, one sidecar of the fleet per `sweep_every` (whoever
//! takes the lease `cacheside:counter:sweep:<name>` first). A sweep is 16,384 `EXISTS dirty
//! moves`, 1,024 per round trip, each group split per primary by the routing.

use super::flush::{stale_age, Flusher, BATCH, ROUNDS};
use super::slots::{dirty_key, moves_key};
use super::Counter;
use crate::loader::call;
use crate::protocol::request::encode_command;
use crate::protocol::scan::{strings, Value};
use crate::protocol::Proto;
use crate::tier::redis::cluster::slot::SLOTS;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Slots read per round trip in a cycle (one command each).
const PROBE: usize = 128;
/// Slots asked per round trip by a sweep (one EXISTS each).
const SWEEP_CHUNK: usize = 1024;
/// How long a slot an INCR was routed to is looked at, even when found empty: the INCR is
/// marked when routed and may run in Redis after the next cycle read the slot.
const GRACE: Duration = Duration::from_secs(2);

/// The wait before a counter's next periodic sweep: 80% to 100% of `sweep_every`, so that
/// sidecars started together drift apart, and with the lease held for 75% of it, one sweep of
/// the fleet's runs about every `sweep_every` (at most that far apart while one sidecar runs).
pub(super) fn sweep_wait(c: &Counter) -> Duration {
    // Capped so that adding it to an instant cannot overflow, whatever the config says.
    c.settings
        .sweep_every
        .min(Duration::from_secs(86_400 * 365))
        .mul_f64(0.8 + 0.2 * rand::random::<f64>())
}

/// The strings of an array reply; `None` for anything else (an error: the slot is unknown).
fn array(reply: &Bytes) -> Option<Vec<Bytes>> {
    Value::parse(reply, Proto::Resp2)?.0.items()?;
    Some(strings(reply))
}

impl Flusher {
    /// One flush of a counter on a cluster, in two steps as on one Redis. First the moves hashes
    /// to recheck are read and their due records applied; if the database fails, nothing is
    /// taken. Then the dirty sets are read in groups of `PROBE` slots and their keys taken and
    /// applied; slots whose batch was full are read again next round, up to `ROUNDS * BATCH`
    /// keys per cycle (the next cycle starts where this one stopped). On any failure the cycle
    /// ends and every slot stays in the set.
    pub(super) async fn cluster_cycle(&mut self, c: &Arc<Counter>) {
        let now = Instant::now();
        let name = c.settings.name.as_str();
        let (slots, recheck): (Vec<u16>, Vec<(u16, Duration)>) = {
            let Ok(mut a) = c.active.lock() else {
                return;
            };
            for s in c.marks.take() {
                a.touch(s, now + GRACE);
            }
            let slots = a.slots();
            let recheck = slots
                .iter()
                .filter_map(|&s| a.rechecked(s).map(|stale| (s, stale)))
                .collect();
            (slots, recheck)
        };
        // Slots found holding something (a record, a dirty key, an error): kept in the set.
        let mut busy = HashSet::new();
        let mut clean = Vec::new();
        for chunk in recheck.chunks(PROBE) {
            let mut pipeline = Vec::new();
            for &(slot, _) in chunk {
                pipeline
                    .extend_from_slice(&encode_command(&[&b"HGETALL"[..], &moves_key(name, slot)]));
            }
            let Ok(replies) = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32).await
            else {
                return;
            };
            let mut due = Vec::new();
            for (&(slot, stale), r) in chunk.iter().zip(&replies) {
                if array(r).is_none() {
                    busy.insert(slot);
                    continue;
                }
                let (d, waiting) = self.due(&moves_key(name, slot), r, stale);
                if waiting == 0 {
                    clean.push(slot);
                }
                if waiting > 0 || !d.is_empty() {
                    busy.insert(slot);
                }
                due.extend(d);
            }
            if !self.apply_all(c, due).await {
                return;
            }
        }
        let batch = BATCH.to_string();
        let mut budget = ROUNDS * BATCH;
        let mut todo = slots.clone();
        while !todo.is_empty() {
            let mut more = Vec::new();
            for chunk in todo.chunks(PROBE) {
                if budget == 0 {
                    if let (Ok(mut a), Some(&first)) = (c.active.lock(), chunk.first()) {
                        a.resume_at(first);
                    }
                    return;
                }
                let mut pipeline = Vec::new();
                for &slot in chunk {
                    pipeline.extend_from_slice(&encode_command(&[
                        &b"SRANDMEMBER"[..],
                        &dirty_key(name, slot),
                        batch.as_bytes(),
                    ]));
                }
                let Ok(replies) =
                    call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32).await
                else {
                    return;
                };
                let mut keys = Vec::new();
                for (&slot, r) in chunk.iter().zip(&replies) {
                    match array(r) {
                        None => {
                            busy.insert(slot);
                        }
                        Some(k) if k.is_empty() => {}
                        Some(k) => {
                            busy.insert(slot);
                            if k.len() >= BATCH {
                                more.push(slot);
                            }
                            keys.extend(k);
                        }
                    }
                }
                keys.truncate(budget);
                budget -= keys.len();
                for group in keys.chunks(BATCH) {
                    if !self.take_and_apply(c, group.to_vec()).await {
                        return;
                    }
                }
            }
            todo = more;
        }
        let empty: Vec<u16> = slots.into_iter().filter(|s| !busy.contains(s)).collect();
        if let Ok(mut a) = c.active.lock() {
            a.settle(&clean, &empty, Instant::now());
        }
    }

    /// The slots where counter `c` has a dirty set or a moves hash; `None` if some part of the
    /// cluster could not be asked.
    async fn sweep(&self, c: &Counter) -> Option<Vec<u16>> {
        let name = c.settings.name.as_str();
        let mut found = Vec::new();
        let slots: Vec<u16> = (0..SLOTS as u16).collect();
        for chunk in slots.chunks(SWEEP_CHUNK) {
            let mut pipeline = Vec::new();
            for &s in chunk {
                pipeline.extend_from_slice(&encode_command(&[
                    &b"EXISTS"[..],
                    &dirty_key(name, s),
                    &moves_key(name, s),
                ]));
            }
            let replies = call(&self.upstream, Bytes::from(pipeline), chunk.len() as u32)
                .await
                .ok()?;
            for (&s, r) in chunk.iter().zip(&replies) {
                match crate::protocol::scan::integer(r)? {
                    0 => {}
                    _ => found.push(s),
                }
            }
        }
        c.metrics.sweeps.inc();
        Some(found)
    }

    /// At start (or when `auto` finds the cluster): every counter's slots with work are
    /// flushed, their records whatever their age. Retried each tick until it succeeds.
    pub(super) async fn start_sweep(&mut self) {
        let counters = self.counters.clone();
        let mut all = true;
        for c in &counters.list {
            let Some(found) = self.sweep(c).await else {
                all = false;
                continue;
            };
            if found.is_empty() {
                continue;
            }
            tracing::info!(counter = %c.settings.name, slots = found.len(), "counters: slots with deltas or moves left by earlier sidecars; flushing them");
            if let Ok(mut a) = c.active.lock() {
                let now = Instant::now();
                for s in found {
                    a.recheck(s, Duration::ZERO, now);
                }
            }
            self.cluster_cycle(c).await;
        }
        self.swept = all;
    }

    /// Every `sweep_every` or so: if no other sidecar swept lately (the lease), looks in every
    /// slot; what it finds is flushed from the next cycle on (records once stale).
    pub(super) async fn periodic_sweep(&mut self, c: &Arc<Counter>) {
        let lease = format!("cacheside:counter:sweep:{}", c.settings.name);
        let every = c.settings.sweep_every;
        if !crate::strategy::marks::take_sweep_lease(&self.upstream, &lease, every).await {
            return;
        }
        let Some(found) = self.sweep(c).await else {
            return;
        };
        if let Ok(mut a) = c.active.lock() {
            let now = Instant::now();
            for s in found {
                a.recheck(s, stale_age(c), now);
            }
            tracing::debug!(counter = %c.settings.name, slots = a.len(), "counters: swept every slot");
        }
    }
}
