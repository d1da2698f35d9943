//! TLS on cacheside's own listener, so an app that keeps its `rediss://` URL works against the
//! sidecar unchanged. Clients are not asked for certificates.

use super::socket::Socket;
use super::{pem, provider, Stream, TlsSetupError};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// The listener's certificate and key, ready to accept TLS clients.
#[derive(Clone)]
pub struct ListenerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerTls")
    }
}

impl ListenerTls {
    /// Loads `server.tls_cert_file` (the chain, leaf first) and `server.tls_key_file`.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, TlsSetupError> {
        let certs = pem::certs(cert_file).map_err(|m| TlsSetupError::new("tls_cert_file", m))?;
        let key = pem::key(key_file).map_err(|m| TlsSetupError::new("tls_key_file", m))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::new("tls_cert_file", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                TlsSetupError::new(
                    "tls_key_file",
                    format!("{}: does not fit the certificate: {e}", key_file.display()),
                )
            })?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let s = self.acceptor.accept(Socket::new(tcp)).await?;
        Ok(Stream::TlsServer(Box::new(s)))
    }
}
