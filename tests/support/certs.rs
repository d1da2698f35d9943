//! Certificates for TLS tests, made with the `openssl` command: a CA, and leaf certificates it
//! signs (EC P-256 keys, valid for two days). Strict verifiers such as rustls refuse a
//! self-signed leaf that is also a CA, hence the separate CA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in its own temporary directory, and the leaves it issued there.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Makes a new CA (`ca.crt`, `ca.key`) in a new temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cacheside-certs-")
            .tempdir()
            .expect("create a temp dir for certificates");
        make_ca(dir.path());
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A leaf signed by this CA: `(certificate, key)`. `san` is an OpenSSL subjectAltName
    /// ("DNS:localhost,IP:127.0.0.1"; empty for none), `usage` "serverAuth" or "clientAuth".
    pub fn issue(&self, name: &str, san: &str, usage: &str) -> (PathBuf, PathBuf) {
        issue(self.dir.path(), name, san, usage)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("`openssl` is needed for the TLS tests: apt-get install -y openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `ca.crt` and `ca.key` into `dir`. The CA's name is unique to `dir`: a CA that merely
/// shares another's name would fail verification as a bad signature, not as an unknown CA.
pub fn make_ca(dir: &Path) {
    let subject = format!(
        "/CN=cacheside test CA {}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
}

/// Writes `<name>.crt` and `<name>.key` into `dir`, signed by the CA there.
pub fn issue(dir: &Path, name: &str, san: &str, usage: &str) -> (PathBuf, PathBuf) {
    let (crt, key, csr, ext) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let mut extensions = format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
    );
    if !san.is_empty() {
        extensions.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(dir.join(&ext), extensions).expect("write the extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
    (dir.join(crt), dir.join(key))
}
