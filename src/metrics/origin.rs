//! Read-through's counters, one set per `[[mapping]]` (label `mapping`: from the configured
//! names only).

use super::{register, LATENCY_BUCKETS};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// One read-through mapping's counters (label `mapping`: from the configured names only).
pub struct OriginMetrics {
    pub queries: IntCounter,
    pub latency: Histogram,
    pub rows: IntCounter,
    pub negative_hits: IntCounter,
    pub coalesced: IntCounter,
    pub lease_waits: IntCounter,
    pub fills: IntCounter,
    pub fills_skipped_raced: IntCounter,
    pub fills_skipped_error: IntCounter,
    pub degraded: IntCounter,
    errors: IntCounterVec,
    name: String,
}

impl OriginMetrics {
    pub fn error(&self, kind: &str) {
        self.errors
            .with_label_values(&[self.name.as_str(), kind])
            .inc();
    }
}

pub(super) struct OriginFamilies {
    queries: IntCounterVec,
    latency: prometheus::HistogramVec,
    rows: IntCounterVec,
    negative_hits: IntCounterVec,
    coalesced: IntCounterVec,
    lease_waits: IntCounterVec,
    fills: IntCounterVec,
    fills_skipped: IntCounterVec,
    degraded: IntCounterVec,
    errors: IntCounterVec,
}

impl OriginFamilies {
    pub(super) fn new(r: &Registry) -> Self {
        let by_mapping = |name: &str, help: &str| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), &["mapping"]).expect("valid metric"),
            )
        };
        Self {
        queries: by_mapping("cacheside_origin_queries_total", "Queries run against PostgreSQL, by mapping."),
        latency: register(
            r,
            prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "cacheside_origin_query_duration_seconds",
                    "PostgreSQL query latency, by mapping.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["mapping"],
            )
            .expect("valid metric"),
        ),
        rows: by_mapping("cacheside_origin_rows_total", "Rows returned by PostgreSQL, by mapping."),
        negative_hits: by_mapping(
            "cacheside_origin_negative_hits_total",
            "Reads answered nil from a remembered \"not found\", by mapping.",
        ),
        coalesced: by_mapping(
            "cacheside_origin_coalesced_total",
            "Misses that waited for another load of the same key in this sidecar, by mapping.",
        ),
        lease_waits: by_mapping(
            "cacheside_origin_lease_waits_total",
            "Misses that waited for another sidecar's fill (its lease), by mapping.",
        ),
        fills: by_mapping("cacheside_origin_fills_total", "Loaded values written to Redis, by mapping."),
        fills_skipped: register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_origin_fills_skipped_total",
                    "Loads not written to Redis, by mapping and reason (raced: a write won; error: Redis refused).",
                ),
                &["mapping", "reason"],
            )
            .expect("valid metric"),
        ),
        degraded: by_mapping(
            "cacheside_origin_degraded_total",
            "Mapped reads answered from PostgreSQL directly because Redis was unavailable, by mapping.",
        ),
        errors: register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_origin_errors_total",
                    "Failed loads, by mapping and kind (pool_timeout, unavailable, timeout, query, circuit_open).",
                ),
                &["mapping", "kind"],
            )
            .expect("valid metric"),
        ),
    }
    }

    /// The counters of one mapping.
    pub(super) fn of(&self, mapping: &str) -> OriginMetrics {
        OriginMetrics {
            queries: self.queries.with_label_values(&[mapping]),
            latency: self.latency.with_label_values(&[mapping]),
            rows: self.rows.with_label_values(&[mapping]),
            negative_hits: self.negative_hits.with_label_values(&[mapping]),
            coalesced: self.coalesced.with_label_values(&[mapping]),
            lease_waits: self.lease_waits.with_label_values(&[mapping]),
            fills: self.fills.with_label_values(&[mapping]),
            fills_skipped_raced: self.fills_skipped.with_label_values(&[mapping, "raced"]),
            fills_skipped_error: self.fills_skipped.with_label_values(&[mapping, "error"]),
            degraded: self.degraded.with_label_values(&[mapping]),
            errors: self.errors.clone(),
            name: mapping.to_string(),
        }
    }
}
