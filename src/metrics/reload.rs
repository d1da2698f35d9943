//! Config reloads: how many were applied or rejected, whether the last one was applied, and
//! whether a change that needs a restart is waiting for one.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct ReloadMetrics {
    pub ok: IntCounter,
    pub error: IntCounter,
    /// 1 when the last reload was applied, 0 when it was rejected (the older config stays).
    pub last_success: IntGauge,
    /// 1 when the file holds settings that only a restart applies.
    pub restart_pending: IntGauge,
}

impl ReloadMetrics {
    pub fn new(r: &Registry) -> Self {
        let total = super::register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cacheside_config_reloads_total",
                    "Config reloads (SIGHUP or a change of the config file), by result (ok: applied; error: rejected, the running config stays).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let gauge = |name: &str, help: &str| {
            super::register(r, IntGauge::new(name, help).expect("valid metric"))
        };
        let last_success = gauge(
            "cacheside_config_last_reload_success",
            "1 if the last config reload was applied (or none was tried), 0 if it was rejected.",
        );
        last_success.set(1);
        Self {
            ok: total.with_label_values(&["ok"]),
            error: total.with_label_values(&["error"]),
            last_success,
            restart_pending: gauge(
                "cacheside_config_restart_pending",
                "1 if the config file changes settings that only a restart applies (named in the log).",
            ),
        }
    }
}

/// `cacheside_tls_renewals_total{side, result}`: TLS certificate files found changed.
pub fn tls_renewals(r: &Registry) -> IntCounterVec {
    super::register(
        r,
        IntCounterVec::new(
            Opts::new(
                "cacheside_tls_renewals_total",
                "TLS certificate files (server.tls_*, upstream.tls_*) found changed, by side (listener, upstream, reader) and result (ok: used for new connections from now on; error: unusable, the ones in use stay).",
            ),
            &["side", "result"],
        )
        .expect("valid metric"),
    )
}
