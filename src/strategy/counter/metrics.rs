//! The counters' metrics, registered into the process registry; labels from the configured
//! counter names and a closed set of outcomes.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// What became of one move of a pending delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Applied by `flush_query` in this transaction.
    Applied,
    /// Already applied (recorded in `cacheside_counter_flushes`): a move recovered after a
    /// crash between the commit and the cleanup in Redis, or one that another sidecar won.
    Duplicate,
    /// The key's captures do not convert to the query's parameter types: never appliable.
    Dropped,
    /// PostgreSQL failed or was unreachable: the move stays recorded and is retried.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Dropped,
        Outcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Dropped => "dropped",
            Outcome::Error => "error",
        }
    }
}

pub(super) struct Families {
    flushed: IntCounterVec,
    flushes: IntCounterVec,
    sweeps: IntCounterVec,
}

impl Families {
    /// Registers the families into the process registry.
    pub(super) fn register(r: &Registry) -> Self {
        let flushed = IntCounterVec::new(
            Opts::new(
                "cacheside_counter_flushed_total",
                "Delta units (absolute) applied to PostgreSQL, by counter.",
            ),
            &["counter"],
        )
        .expect("valid metric");
        let flushes = IntCounterVec::new(
            Opts::new(
                "cacheside_counter_flushes_total",
                "Moves of a pending delta to PostgreSQL, by counter and outcome (applied, duplicate, dropped, error).",
            ),
            &["counter", "outcome"],
        )
        .expect("valid metric");
        let sweeps = IntCounterVec::new(
            Opts::new(
                "cacheside_counter_sweeps_total",
                "Cluster mode: sweeps of every slot this sidecar completed, by counter (at start, then when it held the fleet's lease).",
            ),
            &["counter"],
        )
        .expect("valid metric");
        // Registered once per process registry (one `Counters` is built per run); a second
        // registration would fail and leave these series unexported, never panic.
        let _ = r.register(Box::new(flushed.clone()));
        let _ = r.register(Box::new(flushes.clone()));
        let _ = r.register(Box::new(sweeps.clone()));
        Self {
            flushed,
            flushes,
            sweeps,
        }
    }

    pub(super) fn counter(&self, name: &str) -> CounterMetrics {
        CounterMetrics {
            flushed: self.flushed.with_label_values(&[name]),
            sweeps: self.sweeps.with_label_values(&[name]),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| self.flushes.with_label_values(&[name, o.as_str()]))
                .collect(),
        }
    }
}

/// One counter's series, resolved once.
pub(super) struct CounterMetrics {
    pub(super) flushed: IntCounter,
    pub(super) sweeps: IntCounter,
    outcomes: Vec<IntCounter>,
}

impl CounterMetrics {
    pub(super) fn outcome(&self, o: Outcome, n: u64) {
        let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0);
        self.outcomes[i].inc_by(n);
    }
}
