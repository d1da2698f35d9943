//! Every metric, registered once into a registry that is passed in; label values from closed sets.
//!
//! Labelled children are resolved when `Metrics` is built, so the request path increments a
//! plain atomic and never hashes a label set.

use crate::protocol::Family;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

mod labels;
mod origin;
pub mod reload;
mod strategy;
pub use labels::{InvalidationSource, Outcome, UpstreamFailure, LATENCY_BUCKETS};
use origin::OriginFamilies;
pub use origin::OriginMetrics;
pub use strategy::StrategyMetrics;

/// The hot tier's counters, resolved once.
pub struct CacheMetrics {
    pub hot_hits: IntCounter,
    pub hot_misses: IntCounter,
    pub upstream_hits: IntCounter,
    pub upstream_misses: IntCounter,
    pub evicted_size: IntCounter,
    pub evicted_expiry: IntCounter,
    pub evicted_invalidation: IntCounter,
    pub fills_stored: IntCounter,
    pub fills_raced: IntCounter,
    pub fills_too_large: IntCounter,
    pub fills_expired: IntCounter,
    pub size_bytes: IntGauge,
    pub entries: IntGauge,
    pub coherent: IntGauge,
    /// Broadcast mode: PUBLISHes sent by the announcer, and the keys they carried.
    pub announcements: IntCounter,
    pub announced_keys: IntCounter,
    pub relay_fallbacks: IntCounter,
    pub relayed: IntCounter,
    invalidations: Vec<IntCounter>,
}

impl CacheMetrics {
    pub fn invalidation(&self, source: InvalidationSource) {
        let i = InvalidationSource::ALL
            .iter()
            .position(|s| *s == source)
            .unwrap_or(0);
        self.invalidations[i].inc();
    }
}

type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// `postgres.notify`: row changes heard and applied.
#[derive(Clone)]
pub struct NotifyMetrics {
    pub notifications: IntCounter,
    pub keys: IntCounter,
    pub failed: IntCounter,
    pub listening: IntGauge,
}

pub struct Metrics {
    registry: Registry,
    pub cache: CacheMetrics,
    pub notify: NotifyMetrics,
    origin: OriginFamilies,
    strategy: strategy::Families,
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_rejections_max_clients: IntCounter,
    pub protocol_errors: IntCounter,
    pub session_panics: IntCounter,
    commands: Vec<IntCounter>,
    pub upstream_connections: IntGauge,
    pub pinned_connections: IntGauge,
    /// Pinned connections handed to a client from the idle ones instead of opened.
    pub pinned_reused: IntCounter,
    upstream_failures: Vec<IntCounter>,
    pub upstream_error_replies: IntCounter,
    /// Cluster mode: redirections followed, by kind (moved, ask); slot map reads.
    pub cluster_moved: IntCounter,
    pub cluster_ask: IntCounter,
    pub cluster_refreshes: IntCounter,
    /// Cluster mode: EXECs under WATCH answered null because a watched slot moved.
    pub cluster_watches_failed: IntCounter,
    /// `cacheside_request_duration_seconds` by where the answer came from.
    pub latency: Latency,
}

/// Request latency by `source`: `hot` (a hot-tier hit, per request), `upstream` (per pipelined
/// batch sent to Redis), `origin` (a read answered by a PostgreSQL load, per request).
pub struct Latency {
    pub hot: Histogram,
    pub upstream: Histogram,
    pub origin: Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once, with a unique name");
    c
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        let gauge = |name: &str, help: &str| {
            register(r, IntGauge::new(name, help).expect("valid metric name"))
        };
        let counter = |name: &str, help: &str| {
            register(r, IntCounter::new(name, help).expect("valid metric name"))
        };
        let commands_vec = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_commands_total",
                    "Client commands by family and outcome.",
                ),
                &["family", "outcome"],
            )
            .expect("valid metric"),
        );
        let mut commands = Vec::with_capacity(Family::ALL.len() * Outcome::ALL.len());
        for f in Family::ALL {
            for o in Outcome::ALL {
                commands.push(commands_vec.with_label_values(&[f.as_str(), o.as_str()]));
            }
        }
        let failures_vec = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_upstream_errors_total",
                    "Upstream connection failures and redirections by kind (connect, handshake, auth, tls, timeout, closed, protocol, readonly, moved, ask).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let upstream_failures = UpstreamFailure::ALL
            .iter()
            .map(|k| failures_vec.with_label_values(&[k.as_str()]))
            .collect();
        let durations = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cacheside_request_duration_seconds",
                    "Time from dispatch to reply ready, by source: hot (per hit), upstream (per pipelined batch), origin (per read loaded from PostgreSQL).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["source"],
            )
            .expect("valid metric"),
        );
        let latency = Latency {
            hot: durations.with_label_values(&["hot"]),
            upstream: durations.with_label_values(&["upstream"]),
            origin: durations.with_label_values(&["origin"]),
        };
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cacheside_build_info",
                    "Always 1; labels: the version and the git commit built.",
                ),
                &["version", "commit"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("CACHESIDE_GIT_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        let vec2 = |name: &str, help: &str, label: &str| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let gets = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_cache_gets_total",
                    "Cached reads by tier (hot: in-process; upstream: fills from Redis) and result.",
                ),
                &["tier", "result"],
            )
            .expect("valid metric"),
        );
        let evictions = vec2(
            "cacheside_cache_evictions_total",
            "Hot-tier entries removed, by reason (size, expiry, invalidation).",
            "reason",
        );
        let fills = vec2(
            "cacheside_cache_fills_total",
            "Hot-tier fills by result (stored; raced: a write invalidated the key while the read was in flight; too_large; expired).",
            "result",
        );
        let redirects = vec2(
            "cacheside_cluster_redirects_total",
            "Cluster mode: MOVED and ASK replies followed to another node.",
            "kind",
        );
        let invalidations_vec = vec2(
            "cacheside_invalidations_total",
            "Hot-tier invalidations by source (local_write, tracking, broadcast, flush, operator, db_notify, write_through, related).",
            "source",
        );
        let cache = CacheMetrics {
            hot_hits: gets.with_label_values(&["hot", "hit"]),
            hot_misses: gets.with_label_values(&["hot", "miss"]),
            upstream_hits: gets.with_label_values(&["upstream", "hit"]),
            upstream_misses: gets.with_label_values(&["upstream", "miss"]),
            evicted_size: evictions.with_label_values(&["size"]),
            evicted_expiry: evictions.with_label_values(&["expiry"]),
            evicted_invalidation: evictions.with_label_values(&["invalidation"]),
            fills_stored: fills.with_label_values(&["stored"]),
            fills_raced: fills.with_label_values(&["raced"]),
            fills_too_large: fills.with_label_values(&["too_large"]),
            fills_expired: fills.with_label_values(&["expired"]),
            size_bytes: gauge("cacheside_cache_size_bytes", "Bytes held by the hot tier (keys, values, overhead)."),
            entries: gauge("cacheside_cache_entries", "Keys held by the hot tier."),
            coherent: gauge(
                "cacheside_cache_coherent",
                "1 while the hot tier receives invalidations (or needs none); 0 while it is bypassed.",
            ),
            announcements: counter(
                "cacheside_broadcast_announcements_total",
                "Broadcast mode: batched invalidation PUBLISHes sent (writes that carried their own are not counted).",
            ),
            announced_keys: counter(
                "cacheside_broadcast_announced_keys_total",
                "Broadcast mode: keys named by batched invalidation PUBLISHes.",
            ),
            relayed: counter(
                "cacheside_broadcast_relayed_total",
                "hot.broadcast_relay: requests this sidecar sent that the relay announced and acknowledged.",
            ),
            relay_fallbacks: counter(
                "cacheside_broadcast_relay_fallbacks_total",
                "hot.broadcast_relay: requests no relay announced (none heard them, or none acknowledged them in time), announced by this sidecar itself.",
            ),
            invalidations: InvalidationSource::ALL
                .iter()
                .map(|s| invalidations_vec.with_label_values(&[s.as_str()]))
                .collect(),
        };
        let origin = OriginFamilies::new(r);
        let notify = NotifyMetrics {
            notifications: counter(
                "cacheside_db_notifications_total",
                "postgres.notify: row-change notifications heard.",
            ),
            keys: counter(
                "cacheside_db_notify_keys_total",
                "postgres.notify: keys invalidated because their rows changed.",
            ),
            failed: counter(
                "cacheside_db_notify_failures_total",
                "postgres.notify: row changes whose upstream DEL failed (the keys stay until their TTL).",
            ),
            listening: gauge(
                "cacheside_db_notify_listening",
                "postgres.notify: 1 while the LISTEN connection is up.",
            ),
        };
        Self {
            origin,
            strategy: strategy::Families::new(r),
            cache,
            notify,
            scrape_hooks: std::sync::Mutex::new(Vec::new()),
            client_connections: gauge("cacheside_client_connections", "Open client connections."),
            client_connections_total: counter(
                "cacheside_client_connections_total",
                "Client connections accepted.",
            ),
            client_rejections_max_clients: counter(
                "cacheside_client_rejections_total",
                "Client connections refused because server.max_clients was reached.",
            ),
            protocol_errors: counter(
                "cacheside_protocol_errors_total",
                "Client connections closed for malformed RESP or an exceeded limit.",
            ),
            session_panics: counter(
                "cacheside_session_panics_total",
                "Client sessions ended by a bug (a panic): only that client was closed.",
            ),
            commands,
            upstream_connections: gauge(
                "cacheside_upstream_connections",
                "Shared upstream connections that are up.",
            ),
            pinned_connections: gauge(
                "cacheside_upstream_pinned_connections",
                "Upstream connections pinned to one client (transactions, pub/sub, blocking commands), and those kept idle for the next client.",
            ),
            pinned_reused: counter(
                "cacheside_upstream_pinned_reused_total",
                "Pinned connections given to a client from those kept idle, instead of a new connection.",
            ),
            upstream_failures,
            upstream_error_replies: counter(
                "cacheside_upstream_error_replies_total",
                "Error replies received from the upstream and passed to clients.",
            ),
            cluster_moved: redirects.with_label_values(&["moved"]),
            cluster_ask: redirects.with_label_values(&["ask"]),
            cluster_refreshes: counter(
                "cacheside_cluster_slot_map_reads_total",
                "Cluster mode: reads of the slot map (CLUSTER SHARDS), periodic or after MOVED.",
            ),
            cluster_watches_failed: counter(
                "cacheside_cluster_watches_failed_total",
                "Cluster mode: EXECs under WATCH answered null because a watched key's slot moved.",
            ),
            latency,
            registry,
        }
    }

    /// The counters of one mapping.
    pub fn origin(&self, mapping: &str) -> OriginMetrics {
        self.origin.of(mapping)
    }

    /// The write and freshness strategy counters of one mapping.
    pub fn strategy(&self, mapping: &str) -> StrategyMetrics {
        self.strategy.of(mapping)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn command(&self, family: Family, outcome: Outcome) {
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        self.commands[family.index() * Outcome::ALL.len() + o].inc();
    }

    pub fn upstream_failure(&self, kind: UpstreamFailure) {
        let i = UpstreamFailure::ALL
            .iter()
            .position(|x| *x == kind)
            .unwrap_or(0);
        self.upstream_failures[i].inc();
    }

    /// Runs `hook` before every scrape (to refresh gauges that are read, not counted).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.scrape_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(hooks) = self.scrape_hooks.lock() {
            for h in hooks.iter() {
                h();
            }
        }
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            out = format!("# error encoding metrics: {e}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_and_outcome_has_a_counter() {
        let m = Metrics::new(Registry::new());
        for f in Family::ALL {
            for o in Outcome::ALL {
                m.command(f, o);
            }
        }
        let text = m.render();
        assert!(
            text.contains("cacheside_commands_total{family=\"sorted_set\",outcome=\"pinned\"} 1")
        );
        assert!(text
            .contains("cacheside_request_duration_seconds_bucket{source=\"hot\",le=\"0.000025\"}"));
        assert!(text.contains("cacheside_build_info{commit="));
    }
}
