//! TLS for `start_tls` servers: a test CA and a server certificate for IP 127.0.0.1 it signed.

use super::{PgServer, OS_USER};
use std::path::PathBuf;
use std::process::Command;

impl PgServer {
    /// The CA that signed the server certificate, for `start_tls` servers.
    pub fn cert_path(&self) -> PathBuf {
        self.root_path.join("ca.crt")
    }

    pub(super) fn make_cert(&self) {
        // A CA, and a server certificate for IP 127.0.0.1 signed by it (a self-signed leaf that
        // is also a CA is refused by strict verifiers such as rustls).
        let r = &self.root_path;
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(r)
                .output()
                .expect("`openssl` is needed for the TLS tests: apt-get install -y openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cacheside test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            r.join("server.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )
        .expect("write server.ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        if self.as_root {
            let _ = Command::new("chown")
                .args([&format!("{OS_USER}:{OS_USER}")])
                .arg(r.join("server.crt"))
                .arg(r.join("server.key"))
                .status();
        }
        let _ = Command::new("chmod")
            .arg("600")
            .arg(r.join("server.key"))
            .status();
    }
}
