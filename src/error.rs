//! Typed errors at the request boundary, and the one function that turns an error into a reply
//! or a closed connection.

use crate::metrics::UpstreamFailure;
use crate::protocol::reply;
use crate::protocol::ProtocolError;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Why the upstream could not answer. Cheap to clone: one failure is shared by every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr} unavailable: {detail}")]
    Unavailable { addr: Arc<str>, detail: Arc<str> },
    #[error("upstream {addr} did not answer within {after:?}")]
    Timeout { addr: Arc<str>, after: Duration },
    #[error("upstream {addr} closed the connection")]
    Closed { addr: Arc<str> },
    #[error("upstream {addr} sent an invalid reply: {detail}")]
    Protocol { addr: Arc<str>, detail: Arc<str> },
    #[error("upstream {addr} refused the handshake: {detail}")]
    Handshake { addr: Arc<str>, detail: Arc<str> },
    /// AUTH (or HELLO with AUTH) refused: `detail` is the upstream's error (WRONGPASS, ...).
    #[error("upstream {addr} refused authentication: {detail}")]
    Auth { addr: Arc<str>, detail: Arc<str> },
    /// TLS failed; `detail` names the cause (unknown CA, hostname mismatch, ...).
    #[error("upstream {addr} TLS: {detail}")]
    Tls { addr: Arc<str>, detail: Arc<str> },
    #[error("upstream {addr} queue is full ({limit} batches waiting)")]
    Overloaded { addr: Arc<str>, limit: usize },
    /// The node answered `-READONLY`: a failover made it a replica.
    #[error("upstream {addr} is a read-only replica now (failover)")]
    ReadOnly { addr: Arc<str> },
}

impl UpstreamError {
    pub fn failure(&self) -> UpstreamFailure {
        match self {
            UpstreamError::Unavailable { .. } | UpstreamError::Overloaded { .. } => {
                UpstreamFailure::Connect
            }
            UpstreamError::Timeout { .. } => UpstreamFailure::Timeout,
            UpstreamError::Closed { .. } => UpstreamFailure::Closed,
            UpstreamError::Protocol { .. } => UpstreamFailure::Protocol,
            UpstreamError::Handshake { .. } => UpstreamFailure::Handshake,
            UpstreamError::Auth { .. } => UpstreamFailure::Auth,
            UpstreamError::Tls { .. } => UpstreamFailure::Tls,
            UpstreamError::ReadOnly { .. } => UpstreamFailure::ReadOnly,
        }
    }
}

/// Everything that can go wrong with one client request or connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("query buffer of {size} bytes exceeds server.max_query_buffer ({limit})")]
    QueryBuffer { size: usize, limit: usize },
    #[error("authentication required")]
    NoAuth,
    #[error("wrong username or password")]
    WrongPass,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the client's pinned upstream connection was lost: {0}")]
    PinnedLost(UpstreamError),
    #[error("{command} needs an upstream Redis (set upstream.url)")]
    NoUpstream { command: String },
    #[error("{0}")]
    Command(String),
    /// `server.max_clients` connections are open already.
    #[error("max number of clients reached")]
    MaxClients,
    /// A mapped key's load failed (the loader's message names the mapping and the cause).
    #[error("{0}")]
    Load(String),
    /// The upstream answered a read of cacheside's own with a reply of the wrong shape.
    #[error("malformed upstream reply to a cached read")]
    UpstreamReply,
    /// Broadcast mode: a write ran, but the PUBLISH that tells the other sidecars failed, so
    /// they may still serve the old value; the client is not told the write succeeded.
    #[error("the write was applied but its invalidation could not be announced to other sidecars")]
    Announce,
    /// A write-behind mapping's queue is older than `write_behind_max_lag`: the write is
    /// refused until the worker catches up, rather than queued further behind.
    #[error("mapping {mapping} is write-behind and its queue is {lag:?} behind, past write_behind_max_lag ({max:?}): write refused until PostgreSQL catches up")]
    WriteBehindLag {
        mapping: String,
        lag: Duration,
        max: Duration,
    },
    /// A state that well-behaved parts never produce, answered instead of panicking.
    #[error("{0}")]
    Internal(&'static str),
}

/// What the session does with an error.
#[derive(Debug)]
pub enum Disposition {
    /// Reply with this error frame and keep the connection.
    Reply(Bytes),
    /// Write this error frame (if any), then close the connection.
    Close(Option<Bytes>),
}

/// The single mapping from an error to what the client sees.
pub fn to_reply(err: &ProxyError) -> Disposition {
    match err {
        // Redis replies to malformed input and closes the connection.
        ProxyError::Protocol(p) => {
            Disposition::Close(Some(reply::error_bytes(&format!("ERR {p}"))))
        }
        ProxyError::QueryBuffer { .. } => Disposition::Close(Some(reply::error_bytes(&format!(
            "ERR Protocol error: {err}"
        )))),
        ProxyError::NoAuth => {
            Disposition::Reply(Bytes::from_static(b"-NOAUTH Authentication required.\r\n"))
        }
        ProxyError::WrongPass => Disposition::Reply(Bytes::from_static(
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        )),
        ProxyError::Upstream(e) => {
            Disposition::Reply(reply::error_bytes(&format!("ERR cacheside: {e}")))
        }
        // The client's transaction or subscriptions died with that connection: close, as Redis
        // itself would, so the client library reconnects and restores its state.
        ProxyError::PinnedLost(e) => {
            Disposition::Close(Some(reply::error_bytes(&format!("ERR cacheside: {e}"))))
        }
        ProxyError::NoUpstream { .. } => {
            Disposition::Reply(reply::error_bytes(&format!("ERR {err}")))
        }
        ProxyError::Command(msg) => Disposition::Reply(reply::error_bytes(msg)),
        // Redis's own text; the connection closes, as Redis closes it.
        ProxyError::MaxClients => {
            Disposition::Close(Some(reply::error_bytes(&format!("ERR {err}"))))
        }
        ProxyError::Load(_)
        | ProxyError::WriteBehindLag { .. }
        | ProxyError::UpstreamReply
        | ProxyError::Announce
        | ProxyError::Internal(_) => {
            Disposition::Reply(reply::error_bytes(&format!("ERR cacheside: {err}")))
        }
    }
}

/// The error reply bytes for `err` whatever its disposition (for errors shared by a batch).
pub fn reply_bytes(err: &ProxyError) -> Bytes {
    match to_reply(err) {
        Disposition::Reply(b) | Disposition::Close(Some(b)) => b,
        Disposition::Close(None) => reply::error_bytes("ERR cacheside: connection closed"),
    }
}
