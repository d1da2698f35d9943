//! `[[counter]]` tests' shared parts: the seeds' view counter, sidecars as child processes (so
//! they can be SIGKILLed), and reads of what PostgreSQL and Redis hold.

use super::postgres::PgServer;
use super::RedisServer;
use cacheside::config::units::Human;
use cacheside::config::{Config, CounterConfig};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const FLUSH_QUERY: &str = "UPDATE products SET views = views + $2 WHERE id = $1";

/// The seeds' `product:{id}:views` counter.
pub fn views(flush_every: Human, threshold: Option<u64>) -> CounterConfig {
    CounterConfig {
        name: Some("views".into()),
        key: "product:{id}:views".into(),
        flush_query: FLUSH_QUERY.into(),
        flush_every,
        flush_threshold: threshold,
        sweep_every: CounterConfig::default_sweep_every(),
    }
}

/// In-process config: the views counter flushed every `flush_every`.
pub fn configure(c: &mut Config, pg: &PgServer, flush_every: Human, threshold: Option<u64>) {
    c.postgres.url = Some(pg.url());
    c.counter = vec![views(flush_every, threshold)];
}

/// A cacheside process (the views counter, or a config of the test's); SIGKILLed when dropped.
pub struct Sidecar {
    pub port: u16,
    pub admin: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    pub fn start(redis: &RedisServer, pg: &PgServer, flush_every: &str) -> Self {
        Self::start_toml(
            redis,
            pg,
            &format!(
                "[[counter]]\nname = \"views\"\nkey = \"product:{{id}}:views\"\nflush_query = \"{FLUSH_QUERY}\"\nflush_every = \"{flush_every}\"\n"
            ),
        )
    }

    /// A cacheside process with this config file (upstream and database given as flags).
    pub fn start_toml(redis: &RedisServer, pg: &PgServer, toml: &str) -> Self {
        Self::start_url(&redis.url(), pg, toml)
    }

    /// A cacheside process in front of the upstream at `url` (one Redis or a cluster's seed).
    pub fn start_url(url: &str, pg: &PgServer, toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, toml).expect("write config");
        let (child, [port, admin]) =
            super::process::spawn_listening(Duration::from_secs(20), |[port, admin]| {
                let mut cmd = super::process::command(&path, url, port, admin);
                cmd.args(["--postgres", &pg.url()]).stderr(Stdio::inherit());
                cmd
            });
        Self {
            port,
            admin,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect through the cacheside process")
    }

    /// SIGKILL: no drain, no last flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (the drain runs the last flush).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sum of `views` over products `ids`.
pub async fn db_views(pg: &PgServer, ids: std::ops::RangeInclusive<i32>) -> i64 {
    let c = pg.client().await;
    let row = c
        .query_one(
            "SELECT COALESCE(sum(views), 0)::int8 FROM products WHERE id BETWEEN $1 AND $2",
            &[ids.start(), ids.end()],
        )
        .await
        .expect("read views");
    row.get(0)
}

/// Polls until `f` holds, at most `limit` (never a fixed sleep).
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
