//! Each write-behind queue's depth and lag, read twice a second by a task of their own, so a
//! flush stalled on the database (a lock, a slow statement) never stalls the reading: the lag
//! is what `write_behind_max_lag` refuses writes on.
//!
//! On a cluster the queue is one stream per slot: depth and lag are over the streams the
//! worker reads (its own slots and those sweeps found holding entries), each read at most
//! every [`EVERY`] and at most [`CLUSTER_STREAMS`] per reading (so a sidecar that knows every
//! slot reads each about every 2 s), the sum of the lengths and the oldest entry of all.

use super::entries::read_range;
use super::Queue;
use crate::loader::call;
use crate::protocol::request::encode_command;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often depth and lag are read.
const EVERY: Duration = Duration::from_millis(500);
/// Cluster mode: streams read per reading.
const CLUSTER_STREAMS: usize = 4096;
/// Cluster mode: streams per round trip.
const CHUNK: usize = 512;

/// Cluster mode: each known stream's length and oldest entry (ms), as last read.
#[derive(Default)]
struct Streams {
    read: HashMap<Bytes, (u64, Option<i64>)>,
    /// Where the next reading starts in the known streams.
    cursor: usize,
}

/// Reads the gauges every [`EVERY`] until `stop` turns true.
pub(super) async fn run(q: Arc<Queue>, upstream: Arc<Upstream>, mut stop: watch::Receiver<bool>) {
    let mut streams = Streams::default();
    loop {
        if *stop.borrow() {
            return;
        }
        if q.is_cluster() {
            read_cluster(&q, &upstream, &mut streams).await;
        } else {
            read(&q, &upstream).await;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn publish(q: &Queue, depth: u64, oldest: Option<i64>) {
    let lag_ms = oldest.map_or(0, |ms| (now_ms() - ms).max(0) as u64);
    q.depth.store(depth, Ordering::Relaxed);
    q.metrics.depth.set(depth.min(i64::MAX as u64) as i64);
    q.lag_ms.store(lag_ms, Ordering::Relaxed);
    q.metrics.lag.set(lag_ms as f64 / 1000.0);
}

/// The pipeline of XLEN and the oldest entry of `stream`.
fn ask(pipeline: &mut Vec<u8>, stream: &Bytes) {
    pipeline.extend_from_slice(&encode_command(&[&b"XLEN"[..], stream]));
    pipeline.extend_from_slice(&encode_command(&[
        &b"XRANGE"[..],
        stream,
        b"-",
        b"+",
        b"COUNT",
        b"1",
    ]));
}

/// Queue depth (XLEN) and the age of the oldest entry: its stream id is Redis's clock at the
/// XADD, compared with this sidecar's. When Redis cannot be read the last values stay (writes
/// fail then anyway).
async fn read(q: &Queue, upstream: &Upstream) {
    let mut pipeline = Vec::new();
    ask(&mut pipeline, &q.stream);
    let Ok(r) = call(upstream, Bytes::from(pipeline), 2).await else {
        return;
    };
    let Some(n) = crate::protocol::scan::integer(&r[0]) else {
        return;
    };
    let (oldest, _) = read_range(&r[1], &q.stream);
    publish(q, n.max(0) as u64, oldest.first().map(|e| e.id.0));
}

/// The same over the known streams of a cluster, up to [`CLUSTER_STREAMS`] of them per call
/// (the others keep their last reading).
async fn read_cluster(q: &Queue, upstream: &Upstream, streams: &mut Streams) {
    let known: Vec<Bytes> = q.known.lock().map(|k| k.clone()).unwrap_or_default();
    let set: HashSet<&Bytes> = known.iter().collect();
    streams.read.retain(|s, _| set.contains(s));
    let start = if streams.cursor < known.len() {
        streams.cursor
    } else {
        0
    };
    let take: Vec<&Bytes> = known
        .iter()
        .cycle()
        .skip(start)
        .take(known.len().min(CLUSTER_STREAMS))
        .collect();
    streams.cursor = start + take.len();
    for chunk in take.chunks(CHUNK) {
        let mut pipeline = Vec::new();
        for s in chunk {
            ask(&mut pipeline, s);
        }
        let Ok(r) = call(upstream, Bytes::from(pipeline), 2 * chunk.len() as u32).await else {
            return;
        };
        for (s, r) in chunk.iter().zip(r.chunks(2)) {
            let Some(n) = r.first().and_then(|b| crate::protocol::scan::integer(b)) else {
                continue;
            };
            let oldest = r
                .get(1)
                .and_then(|b| read_range(b, s).0.first().map(|e| e.id.0));
            streams.read.insert((*s).clone(), (n.max(0) as u64, oldest));
        }
    }
    let depth = streams.read.values().map(|(n, _)| n).sum();
    let oldest = streams.read.values().filter_map(|(_, o)| *o).min();
    publish(q, depth, oldest);
}
