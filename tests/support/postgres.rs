//! A real PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl start` on a free loopback
//! port, a `products_db` database seeded with deterministic `products` and `users` rows.
//!
//! * Missing binaries fail the test with the Debian package to install; nothing is skipped.
//! * Running as root (CI does): PostgreSQL refuses root, so every server binary runs as the
//!   `postgres` OS user through `runuser -u postgres --` (util-linux; `su` as a fallback) and the
//!   temp dir (under /tmp, so that user can reach it) is `chown -R postgres:postgres`.
//! * Cleanup: `Drop` (which also runs while a test panics) stops the server with
//!   `pg_ctl stop -m immediate` and removes the dir. A watchdog shell process, fed by a pipe from
//!   the test process, does the same if the test process dies without unwinding (SIGKILL, Ctrl-C,
//!   abort): the pipe closes, the watchdog sends SIGQUIT (immediate shutdown) to the postmaster
//!   and removes the dir.
//! * Query counting: `shared_preload_libraries=pg_stat_statements` plus the extension in
//!   `products_db`; [`PgServer::query_count`] sums `calls`. If the extension is not installed the
//!   server logs every statement instead (`log_statement=all`) and the count comes from the log
//!   (see [`Counter::StatementLog`]).
//!
//! The blocking helpers run tokio-postgres on a scoped thread with its own current-thread
//! runtime, so they work from plain `#[test]`s and from inside `#[tokio::test]`s alike.

use super::{free_port, wait_for_port};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Where Debian 12's `postgresql-15` puts the server binaries.
const PREFERRED_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const DATABASE: &str = "products_db";
const OS_USER: &str = "postgres";

/// Rows in `products` (ids 1..=200).
pub const PRODUCT_COUNT: i64 = 200;
/// `products.category` values; product `id` has category `CATEGORIES[(id - 1) % 5]`.
pub const CATEGORIES: [&str; 5] = ["electronics", "books", "clothing", "home", "toys"];
/// Rows per category.
pub const PRODUCTS_PER_CATEGORY: i64 = PRODUCT_COUNT / CATEGORIES.len() as i64;
/// `users` rows as (id, email); Carol is inactive, Dave has a NULL name and birth date.
pub const USERS: [(&str, &str); 5] = [
    ("00000000-0000-4000-8000-000000000001", "alice@example.com"),
    ("00000000-0000-4000-8000-000000000002", "bob@example.com"),
    ("00000000-0000-4000-8000-000000000003", "carol@example.com"),
    ("00000000-0000-4000-8000-000000000004", "dave@example.com"),
    ("00000000-0000-4000-8000-000000000005", "eve@example.com"),
];

/// Schema and data loaded into `products_db` (deterministic: no `now()`, no randomness).
/// Product `id`: name `'Product <id>'`, price `(id % 50) * 2 + 0.99`, views `(id * 37) % 1000`,
/// created_at = updated_at = `2024-01-01 00:00 UTC + id hours`.
pub const SEED_SQL: &str = "
CREATE TABLE products (
    id         int PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(10,2) NOT NULL,
    category   text NOT NULL,
    views      int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_category_idx ON products (category);
CREATE TABLE users (
    id     uuid PRIMARY KEY,
    email  text UNIQUE NOT NULL,
    name   text,
    active bool NOT NULL DEFAULT true,
    born   date
);
INSERT INTO products (id, name, price, category, views, created_at, updated_at)
SELECT g,
       'Product ' || g,
       (g % 50) * 2 + 0.99,
       (ARRAY['electronics', 'books', 'clothing', 'home', 'toys'])[1 + (g - 1) % 5],
       (g * 37) % 1000,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 200) AS g;
INSERT INTO users (id, email, name, active, born) VALUES
    ('00000000-0000-4000-8000-000000000001', 'alice@example.com', 'Alice', true,  '1990-01-15'),
    ('00000000-0000-4000-8000-000000000002', 'bob@example.com',   'Bob',   true,  '1985-06-30'),
    ('00000000-0000-4000-8000-000000000003', 'carol@example.com', 'Carol', false, '1979-11-02'),
    ('00000000-0000-4000-8000-000000000004', 'dave@example.com',  NULL,    true,  NULL),
    ('00000000-0000-4000-8000-000000000005', 'eve@example.com',   'Eve',   true,  '2000-02-29');
ANALYZE;
";

/// How [`PgServer::query_count`] counts statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Sum of `calls` in `pg_stat_statements` for entries whose (normalized) text contains the
    /// fragment. Counts completed executions only; constants in the stored text are replaced by
    /// `$n`, so match on words of the statement, not on literal values.
    StatStatements,
    /// `log_statement=all`: counts `statement:` / `execute <name>:` log entries (continuation
    /// lines included) containing the fragment, written after the last `reset_stats`. Also counts
    /// statements that failed; a multi-statement simple query is one entry.
    StatementLog,
}

/// The server binaries in use.
#[derive(Clone, Debug)]
struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    /// `pg_config` next to the server, used to find pg_stat_statements (may be absent).
    pg_config: Option<PathBuf>,
}

/// A real PostgreSQL server on `127.0.0.1:port`, stopped and its data dir removed when dropped.
pub struct PgServer {
    pub port: u16,
    counter: Counter,
    bins: Bins,
    /// Temp root: `data/` (the cluster), `log` (server log), also the unix socket directory.
    dir: Option<tempfile::TempDir>,
    root_path: PathBuf,
    as_root: bool,
    running: bool,
    /// Byte offset of the log at the last `reset_stats` (StatementLog counting only).
    log_mark: AtomicU64,
    watchdog: Option<(Child, ChildStdin)>,
    /// Serve TLS with a self-signed certificate (`cert_path`) for `IP:127.0.0.1`.
    tls: bool,
}

impl PgServer {
    /// Starts a seeded server that also accepts TLS, with a certificate for IP 127.0.0.1 signed
    /// by a test CA whose path `cert_path` gives. Needs the `openssl` command.
    pub fn start_tls() -> Self {
        let bins = find_bins();
        let counter = if pg_stat_statements_available(&bins) {
            Counter::StatStatements
        } else {
            Counter::StatementLog
        };
        Self::start_inner(bins, counter, true)
    }

    /// The CA that signed the server certificate, for `start_tls` servers.
    pub fn cert_path(&self) -> PathBuf {
        self.root_path.join("ca.crt")
    }

    fn make_cert(&self) {
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

    /// Starts a seeded server; counts queries with pg_stat_statements when the extension is
    /// installed, otherwise from the statement log.
    pub fn start() -> Self {
        let bins = find_bins();
        let counter = if pg_stat_statements_available(&bins) {
            Counter::StatStatements
        } else {
            eprintln!(
                "PgServer: pg_stat_statements is not installed; query_count() reads the statement log"
            );
            Counter::StatementLog
        };
        Self::start_inner(bins, counter, false)
    }

    /// Starts a seeded server that counts queries from its statement log even when
    /// pg_stat_statements is available (to exercise the fallback).
    pub fn start_counting_from_log() -> Self {
        Self::start_inner(find_bins(), Counter::StatementLog, false)
    }

    fn start_inner(bins: Bins, counter: Counter, tls: bool) -> Self {
        let started = Instant::now();
        let as_root = running_as_root();
        let mut builder = tempfile::Builder::new();
        builder.prefix("cacheside-pg-");
        // As root, $TMPDIR may sit somewhere the `postgres` user cannot traverse.
        let dir = if as_root {
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .expect("create a temp dir for PostgreSQL");
        let root_path = dir.path().to_path_buf();
        let mut server = Self {
            port: free_port(),
            counter,
            bins,
            dir: Some(dir),
            root_path,
            as_root,
            running: false,
            log_mark: AtomicU64::new(0),
            watchdog: None,
            tls,
        };
        // From here on, a panic drops `server`, which cleans up whatever exists.
        server.spawn_watchdog();
        if as_root {
            let out = Command::new("chown")
                .args(["-R", &format!("{OS_USER}:{OS_USER}")])
                .arg(&server.root_path)
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown -R {OS_USER}:{OS_USER} {} failed (does the `{OS_USER}` OS user exist? \
                 `apt-get install -y postgresql-15` creates it): {}",
                server.root_path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if server.tls {
            server.make_cert();
        }
        server.initdb();
        server.launch_with_port_retry();
        server.seed();
        eprintln!(
            "PgServer: ready on port {} in {:?} ({:?} counting)",
            server.port,
            started.elapsed(),
            server.counter
        );
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/products_db`
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    fn url_for(&self, db: &str) -> String {
        format!("postgres://{OS_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// How `query_count` counts.
    pub fn counter(&self) -> Counter {
        self.counter
    }

    /// Whether the server is up (as far as this harness knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server's log file (for debugging failed tests).
    pub fn log_path(&self) -> PathBuf {
        self.root_path.join("log")
    }

    fn data_path(&self) -> PathBuf {
        self.root_path.join("data")
    }

    /// An async client connected to `products_db`; its connection task runs on the caller's
    /// runtime.
    pub async fn client(&self) -> Client {
        connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }

    /// Runs `sql` (one or more statements, simple query protocol) in `products_db`; blocking.
    pub fn execute(&self, sql: &str) {
        let url = self.url();
        block_on(async move {
            let client = connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("execute {sql:?}: {e}"));
        });
    }

    /// Forgets every statement counted so far (`pg_stat_statements_reset()`, or a new log mark).
    pub fn reset_stats(&self) {
        match self.counter {
            Counter::StatStatements => self.execute("SELECT pg_stat_statements_reset()"),
            Counter::StatementLog => {
                let len = std::fs::metadata(self.log_path())
                    .map(|m| m.len())
                    .unwrap_or(0);
                self.log_mark.store(len, Ordering::Relaxed);
            }
        }
    }

    /// How many statements whose text contains `fragment` ran since the last `reset_stats`
    /// (the server starts reset, after seeding), from Postgres's own statistics.
    pub fn query_count(&self, fragment: &str) -> i64 {
        match self.counter {
            Counter::StatStatements => {
                let url = self.url();
                block_on(async move {
                    let client = connect(&url)
                        .await
                        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
                    // The fragment is a parameter, so this statement never matches itself.
                    let row = client
                        .query_one(
                            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                             WHERE strpos(query, $1) > 0",
                            &[&fragment],
                        )
                        .await
                        .unwrap_or_else(|e| panic!("read pg_stat_statements: {e}"));
                    row.get::<_, i64>(0)
                })
            }
            Counter::StatementLog => {
                let log = std::fs::read(self.log_path()).expect("read the PostgreSQL log");
                let mark = (self.log_mark.load(Ordering::Relaxed) as usize).min(log.len());
                count_logged_statements(&String::from_utf8_lossy(&log[mark..]), fragment)
            }
        }
    }

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
    fn spawn_watchdog(&mut self) {
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

    fn initdb(&self) {
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
    fn launch_with_port_retry(&mut self) {
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

    fn seed(&self) {
        let admin_url = self.url_for("postgres");
        let url = self.url();
        let pgss = self.counter == Counter::StatStatements;
        block_on(async move {
            let admin = connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
            admin
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {DATABASE}: {e}"));
            let client = connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            if pgss {
                client
                    .batch_execute(
                        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                         SELECT pg_stat_statements_reset();",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_stat_statements: {e}"));
            }
            client
                .batch_execute(SEED_SQL)
                .await
                .unwrap_or_else(|e| panic!("load the seed schema and data: {e}"));
        });
        self.reset_stats();
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
    fn kill_server(&mut self) {
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

impl Drop for PgServer {
    fn drop(&mut self) {
        // Disarm the watchdog first so it does not race with us.
        if let Some((mut child, stdin)) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
        self.kill_server();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Counts `statement:` / `execute …:` entries of a PostgreSQL stderr log containing `fragment`.
fn count_logged_statements(log: &str, fragment: &str) -> i64 {
    let mut entries: Vec<String> = Vec::new();
    let mut in_entry = false;
    for line in log.lines() {
        if let Some(pos) = line.find("LOG:  statement: ").or_else(|| {
            line.find("LOG:  execute ")
                .filter(|&p| line[p..].contains(": "))
        }) {
            entries.push(line[pos..].to_string());
            in_entry = true;
        } else if in_entry && line.starts_with('\t') {
            let last = entries.last_mut().expect("an entry is open");
            last.push('\n');
            last.push_str(line);
        } else {
            in_entry = false;
        }
    }
    entries.iter().filter(|e| e.contains(fragment)).count() as i64
}

fn find_bins() -> Bins {
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
fn pg_stat_statements_available(bins: &Bins) -> bool {
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
fn running_as_root() -> bool {
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

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped thread (so callers
/// may already be inside a runtime); panics propagate.
fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
