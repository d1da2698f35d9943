//! cacheside as a real process (the built binary) on free ports, for what only a process can
//! show: signals, exit codes, the drain as the kubelet sees it.

use super::{free_port, http};
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
        let mut p = Self::spawn(config.path(), upstream, env, None);
        p._config = Some(config);
        p
    }

    /// Starts the binary with the config file `config` (which it reloads on SIGHUP and when
    /// it changes), writing its log (warn and above) to `log`.
    pub fn start_with_file(config: &Path, upstream: &str, log: &Path) -> Self {
        Self::spawn(config, upstream, &[], Some(log))
    }

    fn spawn(config: &Path, upstream: &str, env: &[(&str, &str)], log: Option<&Path>) -> Self {
        let (child, [port, admin]) = spawn_listening(Duration::from_secs(10), |[port, admin]| {
            let mut cmd = command(config, upstream, port, admin);
            cmd.envs(env.iter().copied())
                .stderr(log.map_or_else(Stdio::null, |log| {
                    Stdio::from(std::fs::File::create(log).expect("create log file"))
                }));
            cmd
        });
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

/// The cacheside binary with config file `config`, in front of `upstream`, listening on
/// `port` and `admin` on 127.0.0.1, logging warnings and above to stderr (null unless set).
pub fn command(config: &Path, upstream: &str, port: u16, admin: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacheside"));
    cmd.args([
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
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// Starts the command `make(ports)` builds on `N` free ports, and returns once this very child
/// listens on all of them. A free port races with every other listener the test binary starts
/// (two processes can be handed the same one, and a process that bound its first port answers
/// connects before its second bind fails), so "something accepts" is not enough: on a clash the
/// child is killed and started again on other ports.
pub fn spawn_listening<const N: usize>(
    limit: Duration,
    mut make: impl FnMut([u16; N]) -> Command,
) -> (Child, [u16; N]) {
    for _ in 0..5 {
        let ports = [(); N].map(|_| free_port());
        let mut child = make(ports).spawn().expect("start cacheside");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for cacheside") {
                eprintln!("cacheside on ports {ports:?} exited ({status}); starting it again");
                break;
            }
            if ports.iter().all(|p| listens(child.id(), *p)) {
                return (child, ports);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cacheside does not listen on ports {ports:?} after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("cacheside exited at start five times: see its log above");
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    });
    let Some(inode) = inode else {
        return false;
    };
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
}
