//! cacheside as a real process (the built binary) on free ports, for what only a process can
//! show: signals, exit codes, the drain as the kubelet sees it.

use super::{free_port, http, wait_for_port};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `cacheside` binary, killed when dropped.
pub struct Process {
    pub port: u16,
    pub admin: SocketAddr,
    child: Child,
    /// An empty config file, so a proxy.toml in the working directory is not picked up.
    _config: Option<tempfile::NamedTempFile>,
}

impl Process {
    /// Starts the binary in front of `upstream` with extra `CACHESIDE_*` variables, and waits
    /// until its client port accepts.
    pub fn start(upstream: &str, env: &[(&str, &str)]) -> Self {
        let config = tempfile::NamedTempFile::new().expect("temp config");
        let mut p = Self::spawn(config.path(), upstream, env, Stdio::null());
        p._config = Some(config);
        p
    }

    /// Starts the binary with the config file `config` (which it reloads on SIGHUP and when
    /// it changes), writing its log (warn and above) to `log`.
    pub fn start_with_file(config: &Path, upstream: &str, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("create log file");
        Self::spawn(config, upstream, &[], Stdio::from(log))
    }

    fn spawn(config: &Path, upstream: &str, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let admin = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_cacheside"))
            .args([
                "--config",
                config.to_str().expect("utf-8 config path"),
                "--upstream",
                upstream,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
                "--log-level",
                "warn",
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start cacheside");
        wait_for_port(port, Duration::from_secs(10));
        Self {
            port,
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            child,
            _config: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as the kubelet does.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for cacheside") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "cacheside still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client connection to the process's listener.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    pub async fn admin(&self, method: &str, path: &str) -> (u16, String) {
        http(self.admin, method, path).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
