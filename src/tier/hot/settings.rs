//! The hot tier's settings, checked by `config` (which builds them) and owned here.

use std::time::Duration;

/// How the hot tier learns of writes made through other sidecars or straight to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coherence {
    /// Probe CLIENT TRACKING at start; fall back to broadcast where the upstream refuses it.
    Auto,
    /// A RESP3 connection with `CLIENT TRACKING ON BCAST` for the cached prefixes.
    Tracking,
    /// Sidecars publish the keys their writes touched on a channel and evict what others publish.
    Broadcast,
    /// No messages: the rule TTL bounds staleness.
    Ttl,
}

/// One checked `[[cache]]` rule.
#[derive(Debug, Clone)]
pub struct RuleSettings {
    pub pattern: String,
    pub ttl: Duration,
    pub max_value_size: usize,
}

/// The hot tier's checked settings.
#[derive(Debug, Clone)]
pub struct HotSettings {
    pub max_bytes: u64,
    pub lru: bool,
    pub coherence: Coherence,
    pub channel: String,
    /// Broadcast mode: writes answered while an announcement is in flight share the next one.
    pub broadcast_batching: bool,
    /// Broadcast mode: announce keys on a channel per key namespace (`{channel}:<ns>`).
    pub channel_per_prefix: bool,
    /// Broadcast mode: announcements carry their keys packed (`hot.broadcast_encoding`).
    pub broadcast_packed: bool,
    /// Broadcast mode: announcements go through one elected sidecar (`hot.broadcast_relay`).
    pub broadcast_relay: bool,
    /// Enabled rules, in file order: the first match wins.
    pub rules: Vec<RuleSettings>,
}
