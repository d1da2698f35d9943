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
        let r = &self.root_path;
        crate::support::certs::make_ca(r);
        crate::support::certs::issue(r, "server", "IP:127.0.0.1", "serverAuth");
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
