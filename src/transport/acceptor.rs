//! TLS on cacheside's own listener, so an app that keeps its `rediss://` URL works against the
//! sidecar unchanged. Clients are not asked for certificates.

use super::renew::{Check, Renewing};
use super::socket::Socket;
use super::{pem, provider, Stream, TlsSetupError};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// The listener's certificate and key, ready to accept TLS clients; renewed when the files
/// change (see [`super::renew`]).
#[derive(Clone)]
pub struct ListenerTls {
    acceptor: Arc<Renewing<TlsAcceptor>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerTls")
    }
}

impl ListenerTls {
    /// Loads `server.tls_cert_file` (the chain, leaf first) and `server.tls_key_file`.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, TlsSetupError> {
        let (cert, key) = (cert_file.to_path_buf(), key_file.to_path_buf());
        let files = vec![cert.clone(), key.clone()];
        let acceptor = Renewing::new(files, move || build(&cert, &key))?;
        Ok(Self {
            acceptor: Arc::new(acceptor),
        })
    }

    /// The files, for checks that renew the certificate.
    pub fn renewing(&self) -> Arc<dyn Check> {
        self.acceptor.clone()
    }

    /// Runs the server side of the handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let s = self.acceptor.get().accept(Socket::new(tcp)).await?;
        Ok(Stream::TlsServer(Box::new(s)))
    }
}

fn build(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsSetupError> {
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
    Ok(TlsAcceptor::from(Arc::new(config)))
}
