//! Every metric, registered once into a registry that is passed in; label values from closed sets.
//!
//! Labelled children are resolved when `Metrics` is built, so the request path increments a
//! plain atomic and never hashes a label set.

use crate::protocol::Family;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// What happened to a command, the `outcome` label of `cacheside_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent on a shared upstream connection.
    Forwarded,
    /// Sent on the client's own (pinned) upstream connection.
    Pinned,
    /// Answered by cacheside itself.
    Local,
    /// Refused by cacheside with an error reply (auth, limits, upstream unavailable).
    Rejected,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Forwarded,
        Outcome::Pinned,
        Outcome::Local,
        Outcome::Rejected,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Pinned => "pinned",
            Outcome::Local => "local",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Why an upstream connection failed, the `kind` label of `cacheside_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Handshake,
    Timeout,
    Closed,
    Protocol,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 5] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Handshake,
        UpstreamFailure::Timeout,
        UpstreamFailure::Closed,
        UpstreamFailure::Protocol,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Handshake => "handshake",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Closed => "closed",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// Latency buckets in seconds, from 25 µs: a proxy hop on loopback is tens of microseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_rejections_max_clients: IntCounter,
    pub protocol_errors: IntCounter,
    commands: Vec<IntCounter>,
    pub upstream_connections: IntGauge,
    pub pinned_connections: IntGauge,
    upstream_failures: Vec<IntCounter>,
    pub upstream_error_replies: IntCounter,
    pub request_duration: Histogram,
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
                    "Upstream connection failures by kind (connect, handshake, timeout, closed, protocol).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let upstream_failures = UpstreamFailure::ALL
            .iter()
            .map(|k| failures_vec.with_label_values(&[k.as_str()]))
            .collect();
        let request_duration = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cacheside_request_duration_seconds",
                    "Time from dispatch to reply ready: per locally answered command, and per pipelined batch sent upstream.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        Self {
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
            commands,
            upstream_connections: gauge(
                "cacheside_upstream_connections",
                "Shared upstream connections that are up.",
            ),
            pinned_connections: gauge(
                "cacheside_upstream_pinned_connections",
                "Upstream connections pinned to one client (transactions, pub/sub, blocking commands).",
            ),
            upstream_failures,
            upstream_error_replies: counter(
                "cacheside_upstream_error_replies_total",
                "Error replies received from the upstream and passed to clients.",
            ),
            request_duration,
            registry,
        }
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
        assert!(text.contains("cacheside_request_duration_seconds_bucket{le=\"0.000025\"}"));
    }
}
