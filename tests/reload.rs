//! Live config reload of the real binary: SIGHUP and a ConfigMap-style `..data` symlink swap
//! while 50 clients keep reading and writing; changed `[[cache]]` rules take effect, invalid
//! configs are rejected (the old one stays, the metric says so), and settings that need a
//! restart are named in the log, not applied.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::process::Process;
use support::{eventually, metric, query, RedisServer};

/// `hot.coherence = "ttl"`: a value changed behind cacheside's back stays served while its rule
/// caches it, which shows which rules are in force.
fn config(rules: &[&str], extra: &str) -> String {
    let mut s = format!("[hot]\ncoherence = \"ttl\"\n{extra}\n");
    for r in rules {
        s.push_str(&format!("\n[[cache]]\nkeys = \"{r}\"\nttl = \"60s\"\n"));
    }
    s
}

/// A directory laid out as the kubelet mounts a ConfigMap: `proxy.toml -> ..data/proxy.toml`,
/// `..data -> ..vN`; each new version is published by renaming a new symlink over `..data`.
struct ConfigMap {
    dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMap {
    fn new(content: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut map = Self { dir, version: 0 };
        map.publish(content);
        std::os::unix::fs::symlink("..data/proxy.toml", map.file()).expect("file symlink");
        map
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    fn publish(&mut self, content: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        let root = self.dir.path();
        std::fs::create_dir(root.join(&v)).expect("version dir");
        std::fs::write(root.join(&v).join("proxy.toml"), content).expect("write version");
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).expect("new ..data");
        std::fs::rename(&tmp, root.join("..data")).expect("swap ..data");
    }
}

async fn metrics(p: &Process) -> String {
    p.admin("GET", "/metrics").await.1
}

async fn reloads(p: &Process, result: &str) -> f64 {
    let text = metrics(p).await;
    metric(
        &text,
        &format!("cacheside_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn wait_reloads(p: &Process, result: &str, n: f64) {
    let mut seen = 0.0;
    let ok = eventually(Duration::from_secs(10), async || {
        seen = reloads(p, result).await;
        seen >= n
    })
    .await;
    assert!(ok, "expected {n} reloads with result {result}, saw {seen}");
}

/// Whether cacheside serves `key` from its hot tier: a value changed straight in Redis is
/// not seen through cacheside while the tier holds the key (coherence by TTL only).
async fn is_cached(
    proxy: &mut redis::aio::MultiplexedConnection,
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> bool {
    let _: () = query(redis, &["SET", key, "before"]).await;
    let _: Option<String> = query(proxy, &["GET", key]).await;
    let _: Option<String> = query(proxy, &["GET", key]).await;
    let _: () = query(redis, &["SET", key, "after"]).await;
    let seen: Option<String> = query(proxy, &["GET", key]).await;
    seen.as_deref() == Some("before")
}

/// `is_cached`, asked again for up to a second: after a reload that changes the rules, the
/// tier is bypassed until the coherence connection tracks the new prefixes.
async fn cached_soon(
    proxy: &mut redis::aio::MultiplexedConnection,
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> bool {
    for _ in 0..50 {
        if is_cached(proxy, redis, key).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

/// 50 clients, each on its own connection, each SETting its key and reading it back (a write
/// through cacheside evicts the hot tier, so the read must see it) until stopped.
async fn start_load(url: &str) -> Load {
    let (stop, ops, errors) = Default::default();
    let mut load = Load {
        stop,
        ops,
        errors,
        tasks: Vec::new(),
    };
    for i in 0..50 {
        let client = redis::Client::open(url).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let (stop, ops, errors) = (load.stop.clone(), load.ops.clone(), load.errors.clone());
        load.tasks.push(tokio::spawn(async move {
            let key = format!("load:{i}");
            let mut n: u64 = 0;
            while !stop.load(SeqCst) {
                n += 1;
                let v = n.to_string();
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&v)
                    .query_async(&mut c)
                    .await;
                let got: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(&key).query_async(&mut c).await;
                match (set, got) {
                    (Ok(()), Ok(Some(g))) if g == v => ops.fetch_add(1, SeqCst),
                    (set, got) => {
                        // A client whose connection broke would fail every request: stop.
                        eprintln!("client {i}: SET {set:?} GET {got:?}, expected {v}");
                        errors.fetch_add(1, SeqCst);
                        break;
                    }
                };
            }
            n
        }));
    }
    load
}

fn log_has(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_apply_rules_and_reject_bad_configs_without_dropping_clients() {
    let redis = RedisServer::start();
    let mut map = ConfigMap::new(&config(&["load:*", "a:*"], ""));
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("cacheside.log");
    let p = Process::start_with_file(&map.file(), &redis.url(), &log);
    let mut c = p.client().await;
    let mut direct = redis.direct().await;
    let load = start_load(&format!("redis://127.0.0.1:{}", p.port)).await;
    let accepted = |text: &str| metric(text, "cacheside_client_connections_total");
    let open = |text: &str| metric(text, "cacheside_client_connections");
    let text = metrics(&p).await;
    let (accepted_before, open_before) = (accepted(&text), open(&text));
    assert!(
        open_before >= Some(51.0),
        "50 load clients and this one are connected"
    );

    assert!(
        is_cached(&mut c, &mut direct, "a:1").await,
        "a:* is cached at start"
    );
    assert!(!is_cached(&mut c, &mut direct, "b:1").await, "b:* is not");
    assert_eq!(
        metric(&metrics(&p).await, "cacheside_config_last_reload_success"),
        Some(1.0)
    );

    // SIGHUP with the same file: reloaded, nothing changes.
    for n in 1..=3 {
        p.signal("HUP");
        wait_reloads(&p, "ok", n as f64).await;
    }
    assert!(
        is_cached(&mut c, &mut direct, "a:2").await,
        "unchanged rules stay"
    );

    // The ConfigMap swaps to new rules: b:* is cached, a:* no longer (not even a:1's entry).
    map.publish(&config(&["load:*", "b:*"], ""));
    wait_reloads(&p, "ok", 4.0).await;
    assert!(
        cached_soon(&mut c, &mut direct, "b:2").await,
        "b:* is cached after the swap"
    );
    assert!(!is_cached(&mut c, &mut direct, "a:3").await, "a:* is not");
    let a1: Option<String> = query(&mut c, &["GET", "a:1"]).await;
    assert_eq!(
        a1.as_deref(),
        Some("after"),
        "a:1 is not served from the old rule"
    );

    // Not TOML: rejected, the old config stays, the metric and the log say so.
    map.publish("[[cache]\nkeys = ");
    wait_reloads(&p, "error", 1.0).await;
    let text = metrics(&p).await;
    assert_eq!(
        metric(&text, "cacheside_config_last_reload_success"),
        Some(0.0)
    );
    assert!(
        log_has(&log, "config reload rejected"),
        "an error line is logged"
    );
    assert!(
        is_cached(&mut c, &mut direct, "b:3").await,
        "the old rules stay"
    );

    // Valid TOML that fails validation: rejected too, naming the key.
    map.publish(&config(&["load:*", "b:*"], "").replace("\"60s\"", "\"0s\""));
    wait_reloads(&p, "error", 2.0).await;
    assert!(log_has(&log, "cache[0].ttl"), "the error names the bad key");
    assert!(
        is_cached(&mut c, &mut direct, "b:4").await,
        "the old rules stay"
    );

    // A restart-only setting changes along with the rules: the rules apply, the size does not,
    // and the log names the setting.
    map.publish(&config(&["load:*", "a:*"], "max_size = \"32MiB\""));
    wait_reloads(&p, "ok", 5.0).await;
    let text = metrics(&p).await;
    assert_eq!(
        metric(&text, "cacheside_config_last_reload_success"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "cacheside_config_restart_pending"), Some(1.0));
    assert!(
        log_has(&log, "hot.max_size"),
        "the restart-only key is named"
    );
    assert!(
        cached_soon(&mut c, &mut direct, "a:4").await,
        "a:* is cached again"
    );
    p.signal("HUP");
    wait_reloads(&p, "ok", 6.0).await;

    // Every client kept its connection and never saw an error.
    let before = load.ops.load(SeqCst);
    assert!(
        eventually(Duration::from_secs(5), async || load.ops.load(SeqCst)
            > before + 500)
        .await,
        "clients are still served after the reloads"
    );
    // Every client's connection is the one it opened before the reloads: none was closed, none
    // was opened again.
    let text = metrics(&p).await;
    assert_eq!(accepted(&text), accepted_before, "no client reconnected");
    assert_eq!(open(&text), open_before, "no connection was closed");
    load.stop.store(true, SeqCst);
    for t in load.tasks {
        assert!(
            t.await.expect("client task") > 0,
            "every client made requests"
        );
    }
    assert_eq!(
        load.errors.load(SeqCst),
        0,
        "no request failed during the reloads"
    );
}

/// With CLIENT TRACKING, Redis only reports writes under the prefixes subscribed: a reload
/// whose rules cache a new prefix must subscribe it before serving those keys from the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_rule_with_a_new_prefix_is_kept_coherent_by_tracking() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, log) = (dir.path().join("proxy.toml"), dir.path().join("log"));
    let tracked = |rule: &str| {
        format!("[hot]\ncoherence = \"tracking\"\n\n[[cache]]\nkeys = \"{rule}\"\nttl = \"60s\"\n")
    };
    std::fs::write(&file, tracked("a:*")).expect("write config");
    let p = Process::start_with_file(&file, &redis.url(), &log);
    let mut c = p.client().await;
    let mut direct = redis.direct().await;

    std::fs::write(&file, tracked("b:*")).expect("write config");
    p.signal("HUP");
    wait_reloads(&p, "ok", 1.0).await;
    let _: () = query(&mut direct, &["SET", "b:1", "v1"]).await;
    let hits = async |p: &Process| {
        metric(
            &metrics(p).await,
            "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
        )
        .unwrap_or(0.0)
    };
    let before = hits(&p).await;
    let served_hot = eventually(Duration::from_secs(10), async || {
        let v: String = query(&mut c, &["GET", "b:1"]).await;
        assert_eq!(v, "v1");
        hits(&p).await > before
    })
    .await;
    assert!(
        served_hot,
        "b:1 is served from the hot tier after the reload"
    );

    // A write straight to Redis: its invalidation must reach the tier.
    let _: () = query(&mut direct, &["SET", "b:1", "v2"]).await;
    let fresh = eventually(Duration::from_secs(3), async || {
        let v: String = query(&mut c, &["GET", "b:1"]).await;
        v == "v2"
    })
    .await;
    assert!(
        fresh,
        "the new prefix is tracked: the write made outside cacheside is seen"
    );
}
