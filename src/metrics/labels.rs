//! The closed label sets of cacheside's metrics, and the latency buckets.

/// What happened to a command, the `outcome` label of `cacheside_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent on a shared upstream connection.
    Forwarded,
    /// Sent on the client's own (pinned) upstream connection.
    Pinned,
    /// Answered by cacheside itself.
    Local,
    /// Answered from the hot tier.
    Cached,
    /// Refused by cacheside with an error reply (auth, limits, upstream unavailable).
    Rejected,
}

impl Outcome {
    pub(super) const ALL: [Outcome; 5] = [
        Outcome::Forwarded,
        Outcome::Pinned,
        Outcome::Local,
        Outcome::Cached,
        Outcome::Rejected,
    ];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Pinned => "pinned",
            Outcome::Local => "local",
            Outcome::Cached => "cached",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Why an upstream connection failed, or a reply redirected, the `kind` label of
/// `cacheside_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    /// The rest of the handshake (HELLO without credentials, SELECT, CLIENT SETNAME) refused.
    Handshake,
    /// AUTH or HELLO ... AUTH refused (WRONGPASS, NOAUTH, NOPERM), at connect or on an IAM
    /// re-authentication.
    Auth,
    Tls,
    Timeout,
    Closed,
    Protocol,
    /// A `-READONLY` reply: the node was demoted by a failover.
    ReadOnly,
    /// Cluster mode: a `-MOVED` reply followed (the slot map was out of date).
    Moved,
    /// Cluster mode: an `-ASK` reply followed (a slot being migrated).
    Ask,
}

impl UpstreamFailure {
    pub(super) const ALL: [UpstreamFailure; 10] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Handshake,
        UpstreamFailure::Auth,
        UpstreamFailure::Tls,
        UpstreamFailure::Timeout,
        UpstreamFailure::Closed,
        UpstreamFailure::Protocol,
        UpstreamFailure::ReadOnly,
        UpstreamFailure::Moved,
        UpstreamFailure::Ask,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Handshake => "handshake",
            UpstreamFailure::Auth => "auth",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Closed => "closed",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::ReadOnly => "readonly",
            UpstreamFailure::Moved => "moved",
            UpstreamFailure::Ask => "ask",
        }
    }
}

/// Latency buckets in seconds, from 25 µs: a proxy hop on loopback is tens of microseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// Where an invalidation of the hot tier came from, the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationSource {
    /// A write through this sidecar.
    LocalWrite,
    /// A CLIENT TRACKING invalidation push.
    Tracking,
    /// A message from another sidecar on the broadcast channel.
    Broadcast,
    /// The whole tier was emptied (FLUSHDB/FLUSHALL/SWAPDB, or the coherence connection dropped).
    Flush,
    /// `CACHESIDE EVICT` or `CACHESIDE FLUSH HOT`.
    Operator,
    /// A row change heard from PostgreSQL (`postgres.notify`).
    DbNotify,
    /// A write-through SET/DEL of a mapped key through this sidecar.
    WriteThrough,
    /// A key named by a mapping's `invalidates` template, on a write of one of its keys.
    Related,
}

impl InvalidationSource {
    pub(super) const ALL: [InvalidationSource; 8] = [
        InvalidationSource::LocalWrite,
        InvalidationSource::Tracking,
        InvalidationSource::Broadcast,
        InvalidationSource::Flush,
        InvalidationSource::Operator,
        InvalidationSource::DbNotify,
        InvalidationSource::WriteThrough,
        InvalidationSource::Related,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationSource::LocalWrite => "local_write",
            InvalidationSource::Tracking => "tracking",
            InvalidationSource::Broadcast => "broadcast",
            InvalidationSource::Flush => "flush",
            InvalidationSource::Operator => "operator",
            InvalidationSource::DbNotify => "db_notify",
            InvalidationSource::WriteThrough => "write_through",
            InvalidationSource::Related => "related",
        }
    }
}
