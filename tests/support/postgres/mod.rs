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

mod cert;
mod process;
mod seed;

use super::free_port;
use process::{find_bins, pg_stat_statements_available, running_as_root, Bins};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio_postgres::{Client, NoTls};

const DATABASE: &str = "products_db";
const OS_USER: &str = "postgres";

// Not every test binary uses every fixture (support/mod.rs allows dead code for that reason).
#[allow(unused_imports)]
pub use seed::{CATEGORIES, PRODUCTS_PER_CATEGORY, PRODUCT_COUNT, SEED_SQL, USERS};

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

    /// Waits (up to 10 s) until a statement containing `fragment` is running on another
    /// connection: its snapshot is then taken, so a change committed after this is unseen by it.
    pub async fn until_running(&self, fragment: &str) {
        let client = self.client().await;
        let start = std::time::Instant::now();
        loop {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                     AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                    &[&fragment],
                )
                .await
                .expect("read pg_stat_activity");
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no statement containing {fragment:?} started within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
