//! Write-behind metrics, by mapping (a configured name): queue depth and lag, what became of
//! entries, and writes refused for lag.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub(super) struct Families {
    depth: IntGaugeVec,
    lag: prometheus::GaugeVec,
    flushed: IntCounterVec,
    retried: IntCounterVec,
    dead: IntCounterVec,
    claimed: IntCounterVec,
    lag_refusals: IntCounterVec,
    full_refusals: IntCounterVec,
    sweeps: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["mapping"]).expect("valid metric");
    // One `Behind` per process registry; a failed registration leaves the series unexported.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Families {
    pub(super) fn register(r: &Registry) -> Self {
        let depth = IntGaugeVec::new(
            Opts::new(
                "cacheside_write_behind_queue_depth",
                "Entries in the write-behind stream (queued or being applied; on a cluster, summed over the slots this sidecar knows), by mapping.",
            ),
            &["mapping"],
        )
        .expect("valid metric");
        let _ = r.register(Box::new(depth.clone()));
        let lag = prometheus::GaugeVec::new(
            Opts::new(
                "cacheside_write_behind_lag_seconds",
                "Age of the oldest entry in the write-behind stream (on a cluster, of the slots this sidecar knows; 0 when empty), by mapping.",
            ),
            &["mapping"],
        )
        .expect("valid metric");
        let _ = r.register(Box::new(lag.clone()));
        Self {
            depth,
            lag,
            flushed: counter(
                r,
                "cacheside_write_behind_flushed_total",
                "Write-behind entries acknowledged after their transaction committed (applied, or superseded by a later write of the key), by mapping.",
            ),
            retried: counter(
                r,
                "cacheside_write_behind_retried_total",
                "Write-behind entries whose transaction failed and that will be retried, by mapping.",
            ),
            dead: counter(
                r,
                "cacheside_write_behind_dead_lettered_total",
                "Write-behind entries moved to the dead-letter stream, by mapping.",
            ),
            lag_refusals: counter(
                r,
                "cacheside_write_behind_lag_refusals_total",
                "Write-behind writes refused because the queue's oldest entry was older than write_behind_max_lag, by mapping.",
            ),
            full_refusals: counter(
                r,
                "cacheside_write_behind_full_refusals_total",
                "Write-behind writes refused because the stream held write_behind_max_queue entries, by mapping.",
            ),
            claimed: counter(
                r,
                "cacheside_write_behind_claimed_total",
                "Write-behind entries taken over from another sidecar that held them past write_behind_claim_idle, by mapping.",
            ),
            sweeps: counter(
                r,
                "cacheside_write_behind_sweeps_total",
                "Cluster mode: sweeps of every slot's write-behind stream this sidecar completed, by mapping (at start, then when it held the fleet's lease).",
            ),
        }
    }

    pub(super) fn mapping(&self, name: &str) -> BehindMetrics {
        BehindMetrics {
            depth: self.depth.with_label_values(&[name]),
            lag: self.lag.with_label_values(&[name]),
            flushed: self.flushed.with_label_values(&[name]),
            retried: self.retried.with_label_values(&[name]),
            dead: self.dead.with_label_values(&[name]),
            claimed: self.claimed.with_label_values(&[name]),
            lag_refusals: self.lag_refusals.with_label_values(&[name]),
            full_refusals: self.full_refusals.with_label_values(&[name]),
            sweeps: self.sweeps.with_label_values(&[name]),
        }
    }
}

pub(super) struct BehindMetrics {
    pub(super) depth: IntGauge,
    pub(super) lag: prometheus::Gauge,
    pub(super) flushed: IntCounter,
    pub(super) retried: IntCounter,
    pub(super) dead: IntCounter,
    pub(super) claimed: IntCounter,
    pub(super) lag_refusals: IntCounter,
    pub(super) full_refusals: IntCounter,
    pub(super) sweeps: IntCounter,
}
