//! Byte streams between cacheside and its peers: plain TCP or TLS (rustls with the ring
//! provider) behind one type, so every upstream connection kind (shared, pinned, coherence) and
//! the client listener work over either.
//!
//! - [`Stream`]: the connection, split into halves for reading and writing side by side.
//! - [`UpstreamTls`]: `rediss://` upstreams (roots, name check, client certificate).
//! - [`ListenerTls`]: TLS on cacheside's own listener (`server.tls_cert_file`).

mod acceptor;
mod connector;
pub(crate) mod pem;
pub mod renew;
mod socket;
mod stream;
pub(crate) mod unverified;

pub use acceptor::ListenerTls;
pub use connector::{Roots, UpstreamTls, UpstreamTlsOptions};
pub use stream::{ReadHalf, Stream, WriteHalf};

use std::sync::Arc;

/// A TLS setting that cannot be used: `key` is the config key (without its section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    pub key: &'static str,
    pub message: String,
}

impl TlsSetupError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
