//! TLS to PostgreSQL (rustls, ring provider), in libpq's terms: `prefer` and `require`
//! encrypt without verifying the server (as libpq does), `verify-full` checks the certificate
//! chain against `ca_file` (or the Mozilla roots) and the host name.

use crate::transport::pem;
use crate::transport::unverified::Unverified;
use rustls::{ClientConfig, RootCertStore};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// `postgres.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    Disable,
    /// TLS when the server offers it, unverified; plaintext otherwise.
    Prefer,
    /// TLS always, unverified.
    Require,
    /// TLS always, the certificate verified against `ca_file` (or the Mozilla roots).
    VerifyFull {
        ca_file: Option<PathBuf>,
    },
}

impl PgTls {
    pub fn parse(mode: &str, ca_file: Option<PathBuf>) -> Result<Self, String> {
        Ok(match mode {
            "disable" => PgTls::Disable,
            "prefer" => PgTls::Prefer,
            "require" => PgTls::Require,
            "verify-full" => PgTls::VerifyFull { ca_file },
            other => {
                return Err(format!(
                    "{other:?} must be one of disable, prefer, require, verify-full"
                ))
            }
        })
    }

    pub fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self {
            PgTls::Disable => SslMode::Disable,
            PgTls::Prefer => SslMode::Prefer,
            PgTls::Require | PgTls::VerifyFull { .. } => SslMode::Require,
        }
    }

    /// The connector for modes that use TLS.
    pub fn connector(&self) -> Result<Option<MakeRustlsConnect>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self {
            PgTls::Disable => return Ok(None),
            PgTls::Prefer | PgTls::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            PgTls::VerifyFull { ca_file } => {
                let roots = match ca_file {
                    Some(path) => pem::roots(path)?,
                    None => {
                        let mut roots = RootCertStore::empty();
                        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                        roots
                    }
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_build_connectors() {
        assert_eq!(PgTls::parse("disable", None).unwrap(), PgTls::Disable);
        assert!(PgTls::parse("verify-ca", None).is_err());
        assert!(PgTls::Disable.connector().unwrap().is_none());
        assert!(PgTls::Require.connector().unwrap().is_some());
        assert!(PgTls::VerifyFull { ca_file: None }
            .connector()
            .unwrap()
            .is_some());
        let missing = PgTls::VerifyFull {
            ca_file: Some("/nonexistent.pem".into()),
        };
        assert!(missing.connector().is_err());
    }
}
