//! TLS towards the upstream (`rediss://`): the roots trusted (the system's, or
//! `upstream.tls_ca_file`), the name checked (the URL host: a DNS name is sent as SNI and must be
//! in the certificate; an IP address must be one of its IP SANs), an optional client
//! certificate, and failures described by their cause.

use super::renew::{Check, Renewing};
use super::socket::Socket;
use super::unverified::Unverified;
use super::{pem, provider, Stream, TlsSetupError};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// `upstream.tls_*`, as given.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpstreamTlsOptions<'a> {
    pub ca_file: Option<&'a Path>,
    /// Client certificate chain and its key.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    pub insecure_skip_verify: bool,
}

/// Where the trusted roots came from (logged at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// `upstream.tls_ca_file`.
    File(PathBuf),
    /// The system's CA bundle (SSL_CERT_FILE / SSL_CERT_DIR honoured), this many certificates.
    System(usize),
    /// The system has none: Mozilla's roots, compiled in.
    Mozilla,
    /// `tls_insecure_skip_verify`: nothing is verified.
    Unverified,
}

/// How to open TLS to the upstream; built at start (and again when `tls_ca_file` or the client
/// certificate's files change, see [`super::renew`]), cheap to clone.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: Arc<Renewing<TlsConnector>>,
    server_name: ServerName<'static>,
    roots: Roots,
    client_cert: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name.to_str())
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the files and builds the client configuration for upstream `host`.
    pub fn new(host: &str, options: UpstreamTlsOptions<'_>) -> Result<Self, TlsSetupError> {
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| {
            TlsSetupError::new(
                "url",
                format!("{host:?} cannot be checked against a certificate: {e}"),
            )
        })?;
        let owned = Owned {
            ca_file: options.ca_file.map(Path::to_path_buf),
            client_cert: options
                .client_cert
                .map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
            insecure_skip_verify: options.insecure_skip_verify,
        };
        let (_, roots) = build(&owned)?;
        let files: Vec<PathBuf> = owned
            .ca_file
            .iter()
            .cloned()
            .chain(
                owned
                    .client_cert
                    .iter()
                    .flat_map(|(c, k)| [c.clone(), k.clone()]),
            )
            .collect();
        let connector = Renewing::new(files, move || build(&owned).map(|(c, _)| c))?;
        Ok(Self {
            connector: Arc::new(connector),
            server_name,
            roots,
            client_cert: options.client_cert.is_some(),
        })
    }

    /// The files (`tls_ca_file`, the client certificate and key), for checks that renew them.
    pub fn renewing(&self) -> Arc<dyn Check> {
        self.connector.clone()
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    pub fn has_client_cert(&self) -> bool {
        self.client_cert
    }

    /// Runs the client side of the handshake on a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let s = self
            .connector
            .get()
            .connect(self.server_name.clone(), Socket::new(tcp))
            .await?;
        Ok(Stream::TlsClient(Box::new(s)))
    }

    /// When `e` is a TLS failure, what went wrong in words that name the cause.
    pub fn describe(&self, e: &std::io::Error) -> Option<String> {
        let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(explain(inner, &self.server_name))
    }
}

/// `upstream.tls_*`, owned, to build the configuration again when the files change.
struct Owned {
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    insecure_skip_verify: bool,
}

fn build(options: &Owned) -> Result<(TlsConnector, Roots), TlsSetupError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::new("url", e.to_string()))?;
    let (builder, roots) = if options.insecure_skip_verify {
        let b = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)));
        (b, Roots::Unverified)
    } else {
        let (store, roots) = match &options.ca_file {
            Some(path) => (
                pem::roots(path).map_err(|m| TlsSetupError::new("tls_ca_file", m))?,
                Roots::File(path.clone()),
            ),
            None => system_roots(),
        };
        (builder.with_root_certificates(store), roots)
    };
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let certs =
                pem::certs(cert_file).map_err(|m| TlsSetupError::new("tls_cert_file", m))?;
            let key = pem::key(key_file).map_err(|m| TlsSetupError::new("tls_key_file", m))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                TlsSetupError::new(
                    "tls_key_file",
                    format!("{}: does not fit the certificate: {e}", key_file.display()),
                )
            })?
        }
    };
    Ok((TlsConnector::from(Arc::new(config)), roots))
}

/// The system's roots, or Mozilla's when the system has none (a scratch or distroless image).
fn system_roots() -> (RootCertStore, Roots) {
    let mut store = RootCertStore::empty();
    let (added, _ignored) =
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added > 0 {
        return (store, Roots::System(added));
    }
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    (store, Roots::Mozilla)
}

fn explain(e: &rustls::Error, name: &ServerName<'_>) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let failed = "certificate verification failed";
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "{failed}: unknown CA (the upstream's certificate is not signed by a CA cacheside \
             trusts; set upstream.tls_ca_file to the CA that issued it)"
        ),
        E::InvalidCertificate(C::BadSignature) => format!(
            "{failed}: unknown CA (the certificate is not signed by the trusted CA of the same \
             name: another CA with that name, or one that was re-keyed; set upstream.tls_ca_file \
             to the CA that issued it)"
        ),
        E::InvalidCertificate(C::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "{failed}: hostname mismatch (the certificate is not valid for {:?}; it names {})",
            expected.to_str(),
            if presented.is_empty() {
                "no host".to_string()
            } else {
                presented
                    .iter()
                    .map(|p| plain_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        E::InvalidCertificate(C::NotValidForName) => format!(
            "{failed}: hostname mismatch (the certificate is not valid for {:?})",
            name.to_str()
        ),
        E::InvalidCertificate(c) => format!("{failed}: {c}"),
        E::AlertReceived(A::CertificateRequired) => "the upstream requires a client certificate \
             (set upstream.tls_cert_file and upstream.tls_key_file)"
            .to_string(),
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked),
        ) => format!("the upstream rejected cacheside's client certificate (alert: {a:?})"),
        E::InvalidMessage(_) => format!(
            "the upstream did not answer in TLS ({e}); if its port is plaintext, use redis://"
        ),
        other => other.to_string(),
    }
}

/// `localhost` for webpki's `DnsName("localhost")`, `10.0.0.1` for `IpAddress(10.0.0.1)`.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named() {
        let name = ServerName::try_from("cache.example").unwrap();
        let unknown = explain(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            &name,
        );
        assert!(unknown.contains("unknown CA"), "{unknown}");
        let mismatch = explain(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            &name,
        );
        assert!(
            mismatch.contains("hostname mismatch") && mismatch.contains("cache.example"),
            "{mismatch}"
        );
        let context = explain(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("10.0.0.5").unwrap(),
                presented: vec![
                    "DnsName(\"cache.example\")".into(),
                    "IpAddress(10.0.0.6)".into(),
                ],
            }),
            &name,
        );
        assert!(
            context.ends_with(
                "hostname mismatch (the certificate is not valid for \"10.0.0.5\"; it names cache.example, 10.0.0.6)"
            ),
            "{context}"
        );
        let required = explain(
            &rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            &name,
        );
        assert!(required.contains("tls_cert_file"), "{required}");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let missing = UpstreamTlsOptions {
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            ..Default::default()
        };
        let e = UpstreamTls::new("cache.example", missing).unwrap_err();
        assert_eq!(e.key, "tls_ca_file");
        let e = UpstreamTls::new("bad host!", UpstreamTlsOptions::default()).unwrap_err();
        assert_eq!(e.key, "url");
        let ok = UpstreamTls::new("10.0.0.1", UpstreamTlsOptions::default()).unwrap();
        assert!(matches!(ok.roots(), Roots::System(_) | Roots::Mozilla));
    }
}
