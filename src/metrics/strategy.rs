//! The write and freshness strategies' counters, by mapping: write-through outcomes,
//! refresh-ahead reloads and stale answers.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// One mapping's strategy counters, resolved once.
pub struct StrategyMetrics {
    pub write_through_ok: IntCounter,
    pub write_through_error: IntCounter,
    pub refreshes: IntCounter,
    pub stale_answers: IntCounter,
}

pub(super) struct Families {
    write_through: IntCounterVec,
    refreshes: IntCounterVec,
    stale_answers: IntCounterVec,
}

impl Families {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            write_through: super::register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cacheside_write_through_total",
                        "Writes of write-through mappings' keys, by mapping and outcome (ok: the database committed and Redis was updated; error: answered with an error, caches untouched).",
                    ),
                    &["mapping", "outcome"],
                )
                .expect("valid metric"),
            ),
            refreshes: super::register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cacheside_refreshes_total",
                        "Refresh-ahead reloads run by this sidecar (it held the key's lease and queried), by mapping.",
                    ),
                    &["mapping"],
                )
                .expect("valid metric"),
            ),
            stale_answers: super::register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cacheside_stale_answers_total",
                        "Reads answered with a value past its TTL because PostgreSQL failed (stale_if_error), by mapping.",
                    ),
                    &["mapping"],
                )
                .expect("valid metric"),
            ),
        }
    }

    pub(super) fn of(&self, mapping: &str) -> StrategyMetrics {
        StrategyMetrics {
            write_through_ok: self.write_through.with_label_values(&[mapping, "ok"]),
            write_through_error: self.write_through.with_label_values(&[mapping, "error"]),
            refreshes: self.refreshes.with_label_values(&[mapping]),
            stale_answers: self.stale_answers.with_label_values(&[mapping]),
        }
    }
}
