//! The server process: finding the binaries, initdb, starting, stopping and killing it (as the
//! `postgres` user when run as root), and the watchdog that cleans up if the tests die.

use super::{block_on, connect, Counter, PgServer, OS_USER};
use crate::support::{free_port, wait_for_port};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian 12's `postgresql-15` puts the server binaries.
const PREFERRED_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The server binaries in use.
#[derive(Clone, Debug)]
pub(super) struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    /// `pg_config` next to the server, used to find pg_stat_statements (may be absent).
    pg_config: Option<PathBuf>,
}

impl PgServer {
    /// Stops the server (`pg_ctl stop -m fast`); data and port are kept for `restart`.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_path();
        let out = self.run_pg(
            &self.bins.pg_ctl,
            &[
                "stop",
                "-D",
                &path_str(&data),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        self.running = false;
    }

    /// Starts it again on the same port with the same data (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    /// The watchdog waits for EOF on its stdin (the test process died or `Drop` ran), then shuts
    /// the server down immediately and removes the dir. The postmaster's exit is judged by
    /// postmaster.pid disappearing, as `pg_ctl stop -w` does: the postmaster is not our child
    /// and, where PID 1 does not reap, lingers as a zombie that `kill -0` still reports alive.
    pub(super) fn spawn_watchdog(&mut self) {
        let root = shell_quote(&path_str(&self.root_path));
        let script = format!(
            "read line\n\
             pidfile={root}/data/postmaster.pid\n\
             if [ -f \"$pidfile\" ]; then\n\
               pid=$(head -n 1 \"$pidfile\")\n\
               kill -QUIT \"$pid\" 2>/dev/null\n\
               i=0\n\
               while [ -f \"$pidfile\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
               [ -f \"$pidfile\" ] && kill -KILL \"$pid\" 2>/dev/null\n\
             fi\n\
             rm -rf {root}\n"
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: a terminal Ctrl-C kills the test, not the cleanup.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn the PostgreSQL watchdog shell");
        let stdin = child.stdin.take().expect("watchdog stdin");
        self.watchdog = Some((child, stdin));
    }

    pub(super) fn initdb(&self) {
        let data = self.data_path();
        let out = self.run_pg(
            &self.bins.initdb,
            &[
                "-D",
                &path_str(&data),
                "-U",
                OS_USER,
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `launch`, retrying on a fresh port if someone took ours between free_port() and bind.
    pub(super) fn launch_with_port_retry(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            match self.launch() {
                Ok(()) => return,
                Err(e) if e.contains("Address already in use") || e.contains("could not bind") => {
                    last = e;
                    self.port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("PostgreSQL could not bind a free port after 5 tries: {last}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off",
            self.port,
            shell_quote(&path_str(&self.root_path))
        );
        match self.counter {
            Counter::StatStatements => {
                opts.push_str(" -c shared_preload_libraries=pg_stat_statements")
            }
            Counter::StatementLog => opts.push_str(" -c log_statement=all"),
        }
        if self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                shell_quote(&path_str(&self.root_path.join("server.crt"))),
                shell_quote(&path_str(&self.root_path.join("server.key")))
            ));
        }
        let data = self.data_path();
        let log = self.log_path();
        let out = self.run_pg(
            &self.bins.pg_ctl,
            &[
                "-D",
                &path_str(&data),
                "-o",
                &opts,
                "-l",
                &path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start on port {} failed: {}{}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ));
        }
        self.running = true;
        wait_for_port(self.port, Duration::from_secs(30));
        // pg_ctl -w already waited for "ready"; prove it with a real connection.
        let url = self.url_for("postgres");
        block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match connect(&url).await {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "PostgreSQL at {url} never accepted a connection: {e}"
                        ))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    }

    /// Runs a PostgreSQL binary (as the `postgres` OS user when we are root) and waits.
    fn run_pg(&self, program: &Path, argv: &[&str]) -> Output {
        let mut cmd = if !self.as_root {
            let mut c = Command::new(program);
            c.args(argv);
            c
        } else if let Some(runuser) = find_runuser() {
            let mut c = Command::new(runuser);
            c.args(["-u", OS_USER, "--"]).arg(program).args(argv);
            c
        } else {
            let program = path_str(program);
            let line = std::iter::once(program.as_str())
                .chain(argv.iter().copied())
                .map(shell_quote)
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = Command::new("su");
            c.args([OS_USER, "-s", "/bin/sh", "-c"])
                .arg(format!("exec {line}"));
            c
        };
        // The `postgres` user may not be allowed into the test's working directory.
        cmd.current_dir(&self.root_path)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        for var in [
            "PGDATA",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
            "PGPASSWORD",
        ] {
            cmd.env_remove(var);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    /// The last lines of the server log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} (tail) ---\n{tail}", self.log_path().display())
    }

    /// Immediate shutdown; never panics (runs during unwinding too).
    pub(super) fn kill_server(&mut self) {
        let data = self.data_path();
        let pidfile = data.join("postmaster.pid");
        if !pidfile.exists() {
            self.running = false;
            return;
        }
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_pg(
                &self.bins.pg_ctl,
                &[
                    "stop",
                    "-D",
                    &path_str(&data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                ],
            )
            .status
            .success()
        }))
        .unwrap_or(false);
        if !stopped {
            if let Some(pid) = pid {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.running = false;
    }
}

pub(super) fn find_bins() -> Bins {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut candidates = vec![PathBuf::from(PREFERRED_BINDIR)];
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Some(dir) = candidates.into_iter().find(|d| has_all(d)) {
        let pg_config = Some(dir.join("pg_config")).filter(|p| p.is_file());
        return Bins {
            initdb: dir.join("initdb"),
            pg_ctl: dir.join("pg_ctl"),
            pg_config,
        };
    }
    let on_path = |name: &str| -> Option<PathBuf> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
    };
    match (on_path("initdb"), on_path("pg_ctl"), on_path("postgres")) {
        (Some(initdb), Some(pg_ctl), Some(_)) => Bins {
            pg_config: on_path("pg_config"),
            initdb,
            pg_ctl,
        },
        _ => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in \
             {PREFERRED_BINDIR}, `pg_config --bindir` or PATH: install them with \
             `apt-get install -y postgresql-15` on Debian 12 (`postgresql` on other releases); \
             the tests need a real server"
        ),
    }
}

/// pg_stat_statements needs its control file (contrib, shipped in Debian's `postgresql-15`) and
/// its shared library.
pub(super) fn pg_stat_statements_available(bins: &Bins) -> bool {
    let Some(pg_config) = &bins.pg_config else {
        return false;
    };
    let ask = |flag: &str| -> Option<PathBuf> {
        let out = Command::new(pg_config).arg(flag).output().ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    match (ask("--sharedir"), ask("--pkglibdir")) {
        (Some(share), Some(lib)) => {
            share.join("extension/pg_stat_statements.control").is_file()
                && lib.join("pg_stat_statements.so").is_file()
        }
        _ => false,
    }
}

/// Effective uid 0, from /proc/self/status (`id -u` as a fallback).
pub(super) fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Uid: real effective saved fs
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_runuser() -> Option<PathBuf> {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}

/// Single-quotes `s` for /bin/sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
