//! Each write-behind queue's depth and lag, read twice a second by a task of their own, so a
//! flush stalled on the database (a lock, a slow statement) never stalls the reading: the lag
//! is what `write_behind_max_lag` refuses writes on.

use super::worker::read_range;
use super::Queue;
use crate::loader::call;
use crate::protocol::request::encode_command;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often depth and lag are read.
const EVERY: Duration = Duration::from_millis(500);

/// Reads the gauges every [`EVERY`] until `stop` turns true.
pub(super) async fn run(q: Arc<Queue>, upstream: Arc<Upstream>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        read(&q, &upstream).await;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Queue depth (XLEN) and the age of the oldest entry: its stream id is Redis's clock at the
/// XADD, compared with this sidecar's. When Redis cannot be read the last values stay (writes
/// fail then anyway).
async fn read(q: &Queue, upstream: &Upstream) {
    let mut pipeline = encode_command(&[&b"XLEN"[..], &q.stream]).to_vec();
    pipeline.extend_from_slice(&encode_command(&[
        &b"XRANGE"[..],
        &q.stream,
        b"-",
        b"+",
        b"COUNT",
        b"1",
    ]));
    let Ok(r) = call(upstream, Bytes::from(pipeline), 2).await else {
        return;
    };
    if let Some(n) = crate::protocol::scan::integer(&r[0]) {
        q.metrics.depth.set(n);
    }
    let (oldest, _) = read_range(&r[1]);
    let lag_ms = oldest.first().map_or(0, |e| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (now - e.id.0).max(0) as u64
    });
    q.lag_ms.store(lag_ms, Ordering::Relaxed);
    q.metrics.lag.set(lag_ms as f64 / 1000.0);
}
