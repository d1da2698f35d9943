//! What the history checkers share: waiting for a sidecar's hot tier to be coherent, and
//! ending a run (stop the tasks, add up reads and stale reads, count the readers' hot hits).

use super::{metric, Proxy};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Polls until the proxy's hot tier reports coherent (its invalidation connection is up).
pub async fn wait_coherent(proxy: &Proxy) {
    let start = Instant::now();
    while metric(
        &proxy.admin_get("/metrics").await.1,
        "cacheside_cache_coherent",
    ) != Some(1.0)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never coherent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one run of a checker saw.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub reads: u64,
    pub stale: u64,
    pub hot_hits: f64,
}

/// Lets the writer and reader tasks run for `run`, stops them, and adds up what they saw
/// (each task returns its reads and stale reads) and the hot hits of `readers`.
pub async fn finish(
    run: Duration,
    stop: &AtomicBool,
    tasks: Vec<JoinHandle<(u64, u64)>>,
    readers: &[Proxy],
) -> Outcome {
    tokio::time::sleep(run).await;
    stop.store(true, SeqCst);
    let (mut reads, mut stale) = (0, 0);
    for t in tasks {
        let (r, s) = t.await.expect("checker task");
        reads += r;
        stale += s;
    }
    let mut hot_hits = 0.0;
    for p in readers {
        hot_hits += metric(
            &p.admin_get("/metrics").await.1,
            "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
        )
        .unwrap_or(0.0);
    }
    Outcome {
        reads,
        stale,
        hot_hits,
    }
}

impl Outcome {
    /// Prints the run's figures and fails the test unless it ran (at least `min_reads`), the hot
    /// tier served some of the reads, and none was stale (`what` names a stale read).
    pub fn assert_clean(&self, mode: &str, min_reads: u64, what: &str) {
        let Outcome {
            reads,
            stale,
            hot_hits,
        } = *self;
        eprintln!("{mode}: {reads} reads, {hot_hits} hot hits, {stale} stale");
        assert!(reads > min_reads, "the checker ran ({reads} reads)");
        assert!(
            hot_hits > 0.0,
            "the hot tier served some reads, so it was exercised"
        );
        assert_eq!(stale, 0, "{mode}: {stale} of {reads} reads {what}");
    }
}
