//! `hot.channel_per_prefix`: broadcast invalidations on a channel per key namespace, on one
//! redis-server. A sidecar subscribes to the base channel and to its rules' namespaces' channels
//! (or, for a rule that can match any namespace, to the pattern `{channel}:*`), hears only the
//! writes it caches, and still serves no read older than an acknowledged write.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::process::Process;
use support::{cache_rule, coherence, eventually, history, metric, query, Proxy, RedisServer};

const BASE: &str = "cacheside:invalidate";

async fn sidecar(upstream: &str, rules: &[&str]) -> Proxy {
    let proxy = Proxy::start_with(upstream, |c| {
        c.hot.coherence = "broadcast".into();
        c.hot.channel_per_prefix = true;
        c.cache = rules.iter().map(|r| cache_rule(r, 60)).collect();
    })
    .await;
    history::wait_coherent(&proxy).await;
    proxy
}

async fn scrape(p: &Proxy, series: &str) -> f64 {
    metric(&p.admin_get("/metrics").await.1, series).unwrap_or(0.0)
}

/// Keys this sidecar evicted because another sidecar announced them.
async fn heard(p: &Proxy) -> f64 {
    scrape(p, "cacheside_invalidations_total{source=\"broadcast\"}").await
}

async fn hot_hits(p: &Proxy) -> f64 {
    scrape(p, "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}").await
}

/// Reads `key` through `p` until a read is served by its hot tier (the first fills it).
async fn cached(p: &Proxy, key: &str, want: &str) {
    let mut c = p.client().await;
    let before = hot_hits(p).await;
    let start = Instant::now();
    while hot_hits(p).await <= before {
        assert!(start.elapsed() < Duration::from_secs(10), "{key} never hot");
        let v: String = query(&mut c, &["GET", key]).await;
        assert_eq!(v, want, "{key}");
    }
}

/// Waits until `p` has heard `n` announced keys at least.
async fn wait_heard(p: &Proxy, n: f64) {
    let start = Instant::now();
    while heard(p).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never heard {n} keys"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PUBSUB NUMSUB on the real Redis: subscribers per channel, in the order asked.
async fn numsub(redis: &RedisServer, channels: &[&str]) -> Vec<i64> {
    let mut c = redis.direct().await;
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("NUMSUB").arg(channels);
    let reply: Vec<(String, i64)> = cmd.query_async(&mut c).await.expect("PUBSUB NUMSUB");
    reply.into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_a_channel_per_prefix()
{
    let redis = RedisServer::start();
    coherence::check(&redis.url(), "broadcast", true, true).await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_hears_only_the_namespaces_it_caches() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = sidecar(&url, &["a:*", "b:*"]).await;
    let b = sidecar(&url, &["a:*"]).await;
    let c = sidecar(&url, &["b:*"]).await;
    let (ca, cb) = (format!("{{{BASE}}}:a"), format!("{{{BASE}}}:b"));
    assert_eq!(
        numsub(&redis, &[BASE, &ca, &cb]).await,
        vec![3, 2, 2],
        "all three on the base channel, A and B on a's, A and C on b's"
    );
    let mut direct = redis.direct().await;
    let patterns: i64 = query(&mut direct, &["PUBSUB", "NUMPAT"]).await;
    assert_eq!(patterns, 0, "no rule needs the pattern");

    let mut through_a = a.client().await;
    let _: () = query(&mut through_a, &["SET", "a:1", "v1"]).await;
    let _: () = query(&mut through_a, &["SET", "b:1", "v1"]).await;
    cached(&b, "a:1", "v1").await;
    cached(&c, "b:1", "v1").await;
    let (b_before, c_before) = (heard(&b).await, heard(&c).await);

    // Announced in this order: a:1 on a's channel, three b keys on b's, five a keys on a's.
    // Each sidecar applies what it hears in that order, on one connection; a count that
    // reaches the keys of the namespace it caches shows that nothing before them was heard.
    let _: () = query(&mut through_a, &["SET", "a:1", "v2"]).await;
    let mut through_b = b.client().await;
    let v: String = query(&mut through_b, &["GET", "a:1"]).await;
    assert_eq!(v, "v2", "B's cached a:1 was invalidated by A's write");
    let bs = ["MSET", "b:1", "v2", "b:2", "v2", "b:3", "v2"];
    let _: () = query(&mut through_a, &bs).await;
    let r#as = [
        "MSET", "a:2", "1", "a:3", "1", "a:4", "1", "a:5", "1", "a:6", "1",
    ];
    let _: () = query(&mut through_a, &r#as).await;
    wait_heard(&c, c_before + 3.0).await;
    assert_eq!(
        heard(&c).await,
        c_before + 3.0,
        "C heard the b keys, not a:1"
    );
    wait_heard(&b, b_before + 6.0).await;
    assert_eq!(
        heard(&b).await,
        b_before + 6.0,
        "B heard the a keys, not the b keys"
    );
    let mut through_c = c.client().await;
    let v: String = query(&mut through_c, &["GET", "b:1"]).await;
    assert_eq!(v, "v2");
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_a_namespace_subscribes_to_the_pattern_and_is_invalidated() {
    let redis = RedisServer::start();
    let url = redis.url();
    let writer = sidecar(&url, &["x:*"]).await;
    let any = sidecar(&url, &["*"]).await;
    let mut direct = redis.direct().await;
    let patterns: i64 = query(&mut direct, &["PUBSUB", "NUMPAT"]).await;
    assert_eq!(
        patterns, 1,
        "the `*` rule's sidecar subscribes to {{{BASE}}}:*"
    );
    let cx = format!("{{{BASE}}}:x");
    assert_eq!(
        numsub(&redis, &[BASE, &cx]).await,
        vec![2, 1],
        "the pattern's subscriber does not also subscribe to x's channel"
    );

    let mut w = writer.client().await;
    let _: () = query(&mut w, &["SET", "x:1", "v1"]).await;
    cached(&any, "x:1", "v1").await;
    let before = heard(&any).await;
    let _: () = query(&mut w, &["SET", "x:1", "v2"]).await;
    let mut r = any.client().await;
    let v: String = query(&mut r, &["GET", "x:1"]).await;
    assert_eq!(v, "v2", "x's channel reaches the pattern's subscriber");
    wait_heard(&any, before + 1.0).await;
    support::assert_no_panics();
}

/// A reload whose rules cache another namespace subscribes to its channel before the tier
/// serves its keys again, and leaves the channel of the namespace no longer cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_rules_of_another_namespace_move_the_subscription() {
    let redis = RedisServer::start();
    let writer = sidecar(&redis.url(), &["a:*", "b:*"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, log) = (dir.path().join("proxy.toml"), dir.path().join("log"));
    let rules = |rule: &str| {
        format!("[hot]\ncoherence = \"broadcast\"\nchannel_per_prefix = true\n\n[[cache]]\nkeys = \"{rule}\"\nttl = \"60s\"\n")
    };
    std::fs::write(&file, rules("a:*")).expect("write config");
    let p = Process::start_with_file(&file, &redis.url(), &log);
    let (ca, cb) = (format!("{{{BASE}}}:a"), format!("{{{BASE}}}:b"));
    let subscribed = eventually(Duration::from_secs(10), async || {
        numsub(&redis, &[BASE, &ca, &cb]).await == vec![2, 2, 1]
    });
    assert!(subscribed.await, "the process subscribed to a's channel");

    std::fs::write(&file, rules("b:*")).expect("write config");
    p.signal("HUP");
    let moved = eventually(Duration::from_secs(10), async || {
        numsub(&redis, &[BASE, &ca, &cb]).await == vec![2, 1, 2]
    });
    assert!(moved.await, "after the reload: b's channel, not a's");
    let coherent = eventually(Duration::from_secs(10), async || {
        let m = p.admin("GET", "/metrics").await.1;
        metric(&m, "cacheside_cache_coherent") == Some(1.0)
    });
    assert!(coherent.await, "coherent again");

    let mut w = writer.client().await;
    let _: () = query(&mut w, &["SET", "b:1", "v1"]).await;
    let mut c = p.client().await;
    let hits = async || {
        let m = p.admin("GET", "/metrics").await.1;
        metric(
            &m,
            "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
        )
        .unwrap_or(0.0)
    };
    let before = hits().await;
    let served_hot = eventually(Duration::from_secs(10), async || {
        let v: String = query(&mut c, &["GET", "b:1"]).await;
        assert_eq!(v, "v1");
        hits().await > before
    });
    assert!(served_hot.await, "b:1 is cached under the reloaded rule");
    let _: () = query(&mut w, &["SET", "b:1", "v2"]).await;
    let v: String = query(&mut c, &["GET", "b:1"]).await;
    assert_eq!(
        v, "v2",
        "the write through another sidecar reached the reloaded one"
    );
    support::assert_no_panics();
}

fn check_config(toml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, toml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacheside"));
    cmd.args([
        "--config",
        file.to_str().expect("utf-8 path"),
        "check-config",
    ]);
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run cacheside");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_channel_with_braces_or_glob_characters_is_refused_with_a_channel_per_prefix() {
    let toml =
        "[upstream]\nurl = \"redis://127.0.0.1:1\"\n[[cache]]\nkeys = \"a:*\"\nttl = \"1s\"\n";
    let on = ("CACHESIDE_HOT_CHANNEL_PER_PREFIX", "true");
    for bad in ["inv{x}", "inv*", "a[b]", "a\\b", "inv?"] {
        let (code, err) = check_config(toml, &[on, ("CACHESIDE_HOT_CHANNEL", bad)]);
        assert_eq!(code, 64, "{bad}: {err}");
        assert!(err.contains("hot.channel"), "{bad}: {err}");
    }
    // Without the setting such a channel is as valid as before.
    let (code, err) = check_config(toml, &[("CACHESIDE_HOT_CHANNEL", "inv{x}")]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = check_config(toml, &[on]);
    assert_eq!(code, 0, "the default channel is fine: {err}");
}

#[test]
fn on_a_cluster_every_rule_must_name_its_namespace_with_a_channel_per_prefix() {
    let cluster = "[upstream]\nurl = \"redis://127.0.0.1:1\"\nmode = \"cluster\"\n[hot]\nchannel_per_prefix = true\n";
    for any in ["*", "prod*", "*:views"] {
        let toml = format!("{cluster}[[cache]]\nkeys = \"a:*\"\nttl = \"1s\"\n[[cache]]\nkeys = \"{any}\"\nttl = \"1s\"\n");
        let (code, err) = check_config(&toml, &[]);
        assert_eq!(code, 64, "{any}: {err}");
        assert!(err.contains("hot.channel_per_prefix"), "{any}: {err}");
    }
    let named = format!("{cluster}[[cache]]\nkeys = \"a:*\"\nttl = \"1s\"\n[[cache]]\nkeys = \"b:1*\"\nttl = \"1s\"\n");
    let (code, err) = check_config(&named, &[]);
    assert_eq!(code, 0, "{err}");
}
