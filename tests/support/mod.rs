//! Test harness: real `redis-server` processes on free loopback ports, cacheside in-process on
//! `127.0.0.1:0`, a real client (the `redis` crate) and raw RESP helpers.
//!
//! A missing binary fails the test with the package to install; nothing is skipped.
#![allow(dead_code)]

pub mod behind;
pub mod behind_cluster;
pub mod certs;
pub mod cluster;
pub mod coherence;
pub mod commands;
pub mod counters;
pub mod counters_cluster;
pub mod fake;
pub mod history;
pub mod iam;
pub mod postgres;
pub mod process;
pub mod readthrough;
pub mod relay;

use cacheside::config::Config;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A `[[cache]]` rule for `keys` with a TTL of `ttl_secs`, values up to 1 MiB.
pub fn cache_rule(keys: &str, ttl_secs: u64) -> cacheside::config::CacheRule {
    cacheside::config::CacheRule {
        keys: keys.into(),
        ttl: cacheside::config::units::Human::secs(ttl_secs),
        max_value_size: cacheside::config::units::Size::mib(1),
        enabled: true,
    }
}

/// A port that was free a moment ago, and never handed out before in this test binary (the
/// kernel hands a closed port out again soon; whoever starts a server on it still checks that
/// the listener is theirs, as other listeners race for it too).
pub fn free_port() -> u16 {
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0 to find a free port");
        if claim_port(port) {
            return port;
        }
    }
}

/// Marks `port` as handed out in this test binary (a cluster node's bus port, `port + 10000`,
/// say); false if it already was.
pub fn claim_port(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

/// Fails the test, naming the Debian package to install, when `name` is not on the PATH.
pub fn require_binary(name: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: install it with `apt-get install -y {package}` (the tests need a real server)"
    );
}

/// A real redis-server, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for servers started with `start_tls`.
    pub tls_port: Option<u16>,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts redis-server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        require_binary("redis-server", "redis-server");
        let mut s = Self {
            port: free_port(),
            tls_port: None,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Starts redis-server with a TLS port beside the plaintext one (which tests use to set
    /// things up directly). `tls` holds the `--tls-*` options. Debian's redis-server is built
    /// with TLS.
    pub fn start_tls(tls: &[&str]) -> Self {
        require_binary("redis-server", "redis-server");
        let mut s = Self {
            port: free_port(),
            tls_port: Some(free_port()),
            child: None,
            extra: tls.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// `rediss://HOST:TLS_PORT`.
    pub fn tls_url(&self, host: &str) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://{host}:{port}")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(tls_port) = self.tls_port {
            cmd.args(["--tls-port", &tls_port.to_string()]);
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let pid = child.id();
        let up = wait_for_child_port(&mut child, self.port, Duration::from_secs(10));
        self.child = Some(child);
        // Free ports race with other listeners of the same test binary: make sure what answers
        // is this server, or start again on other ports. (A server that cannot bind its TLS
        // port exits at once.)
        if !up || redis_pid(self.port) != Some(pid) {
            self.kill();
            self.port = free_port();
            self.tls_port = self.tls_port.map(|_| free_port());
            self.spawn();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// How many times the server ran `command` (lower case), from `INFO commandstats`.
    pub async fn calls(&self, command: &str) -> u64 {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.direct().await)
            .await
            .expect("INFO commandstats");
        command_calls(&stats, command)
    }

    /// A direct client, bypassing cacheside.
    pub async fn direct(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis-server directly")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `process_id` a Redis server on `port` reports, if it is a Redis server.
fn redis_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// `calls=` of `command` (lower case) in an `INFO commandstats` text; 0 when never called.
pub fn command_calls(stats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs `f` until it returns true, at most `limit` (polling, never a fixed sleep).
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

/// Waits until something accepts connections on `port` while `child` runs (polling,
/// bounded); false if the child exited first (it could not bind, say).
pub fn wait_for_child_port(child: &mut Child, port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(
            start.elapsed() < limit,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits until something accepts connections on `port` (polling, bounded).
pub fn wait_for_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Panics raised in cacheside's own code (`src/`) while tests run, from any thread or task.
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records every panic whose location is in cacheside's source, so a panic the runtime caught
/// (a session task's, say: its client just sees a close) still fails the test.
fn watch_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(loc) = info.location().filter(|l| l.file().starts_with("src/")) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{loc}: {msg}"));
            }
            previous(info);
        }));
    });
}

/// Fails if cacheside's code panicked anywhere since the test binary started.
pub fn assert_no_panics() {
    let p = PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(p.is_empty(), "cacheside panicked: {p:?}");
}

/// cacheside running in-process on free ports.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts cacheside in front of `upstream_url` with default settings.
    pub async fn start(upstream_url: &str) -> Self {
        Self::start_with(upstream_url, |_| {}).await
    }

    /// Starts cacheside after letting the test adjust the config.
    pub async fn start_with(upstream_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.upstream.url = Some(upstream_url.to_string());
        tweak(&mut config);
        Self::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Self {
        Self::start_validated(config.validate().expect("test config is valid")).await
    }

    /// Starts cacheside with settings the test built or adjusted after validation. An
    /// in-process drain starts at once (no `shutdown.min_drain`): tests of min_drain run the
    /// real binary (tests/lifecycle.rs).
    pub async fn start_validated(mut validated: cacheside::config::Validated) -> Self {
        watch_panics();
        validated.min_drain = Duration::ZERO;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("proxy addr");
        let admin_addr = admin.local_addr().expect("admin addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cacheside::app::serve(
            listener,
            Some(admin),
            validated,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            admin: admin_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A real client connected through cacheside.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect through cacheside")
    }

    /// A RESP3 client connected through cacheside.
    pub async fn client_resp3(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("{}?protocol=resp3", self.url()))
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect through cacheside with RESP3")
    }

    /// A raw TCP connection for byte-level tests.
    pub async fn raw(&self) -> Raw {
        Raw(TcpStream::connect(self.addr).await.expect("connect raw"))
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Stops accepting, drains, and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }

    /// Starts the drain and returns its task, for tests that watch what happens meanwhile.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("proxy task still running")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if !std::thread::panicking() {
            assert_no_panics();
        }
    }
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request with no body: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write http");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("admin answers in time")
        .expect("read http");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw client connection.
pub struct Raw(pub TcpStream);

impl Raw {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("write to cacheside");
    }

    /// Reads until exactly `expected` has arrived (or fails with what did arrive).
    pub async fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact_len(expected.len()).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "unexpected reply bytes"
        );
    }

    pub async fn read_exact_len(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            let r = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut got[filled..]))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; got so far: {:?}",
                        String::from_utf8_lossy(&got[..filled])
                    )
                })
                .expect("read");
            assert!(
                r > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&got[..filled])
            );
            filled += r;
        }
        got
    }

    /// Reads until the server closes the connection; returns everything read.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.0.read_to_end(&mut out))
            .await
            .expect("server closes the connection in time")
            .ok();
        out
    }
}

/// Reads a metric's value from a Prometheus text exposition (`name{labels}` as written).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends `args` as one command and returns its reply as `T`; any error fails the test, naming
/// the command.
pub async fn query<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}
