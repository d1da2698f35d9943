//! `/metrics` under load, checked by Prometheus's own `promtool check metrics` (format and
//! naming lints), with the series the Grafana dashboard reads present and sampled; and the
//! upstream error kinds counted where they happen.

mod support;

use cacheside::config::Config;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::postgres::PgServer;
use support::{eventually, metric, query, readthrough, require_binary, Proxy, RedisServer};

const CLIENTS: usize = 8;

/// `promtool check metrics` on `text`: its complaints, or `None` when it accepts the text.
fn promtool_complaints(text: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn hot_and_mapped(c: &mut Config, pg: &PgServer) {
    readthrough::configure(c, pg);
    c.cache = ["product:*", "plain:*"]
        .into_iter()
        .map(|keys| support::cache_rule(keys, 30))
        .collect();
}

/// One client's traffic: mapped reads (loaded from PostgreSQL once, then hot hits), and plain
/// SET/GET passed through to Redis, until `stop`.
async fn load(proxy: &Proxy, n: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut c = proxy.client().await;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let product = format!("product:{}", 1 + (n * 7 + i) % 20);
        let _: Option<String> = query(&mut c, &["GET", &product]).await;
        let plain = format!("plain:{n}:{}", i % 50);
        let _: () = query(&mut c, &["SET", &plain, "v"]).await;
        let got: Option<String> = query(&mut c, &["GET", &plain]).await;
        assert_eq!(got.as_deref(), Some("v"));
        let _: Option<String> = query(&mut c, &["GET", "products:category:books"]).await;
        done.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_under_load_pass_promtool_and_feed_the_dashboard() {
    require_binary("promtool", "prometheus");
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Arc::new(Proxy::start_with(&redis.url(), |c| hot_and_mapped(c, &pg)).await);
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(
                &proxy.admin_get("/metrics").await.1,
                "cacheside_cache_coherent",
            ) == Some(1.0)
        })
        .await,
        "the hot tier becomes coherent"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (proxy, stop, done) = (proxy.clone(), stop.clone(), done.clone());
            tokio::spawn(async move { load(&proxy, n, stop, done).await })
        })
        .collect();
    // Scrapes while the clients run: each one is a complete, valid exposition.
    for _ in 0..3 {
        let before = done.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(10), async || done
                .load(Ordering::Relaxed)
                > before + CLIENTS as u64)
            .await,
            "the load makes progress"
        );
        let (status, text) = proxy.admin_get("/metrics").await;
        assert_eq!(status, 200);
        let checked = tokio::task::spawn_blocking(move || promtool_complaints(&text))
            .await
            .unwrap();
        assert_eq!(checked, None, "promtool check metrics rejects the scrape");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client's load ran without errors");
    }
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(promtool_complaints(&text), None);
    let sampled = |series: &str| metric(&text, series).unwrap_or(0.0);
    for source in ["hot", "upstream", "origin"] {
        let count = format!("cacheside_request_duration_seconds_count{{source=\"{source}\"}}");
        assert!(sampled(&count) > 0.0, "{count} has samples:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("cacheside_build_info{") && l.ends_with(" 1")),
        "cacheside_build_info is exported"
    );
    for series in [
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
        "cacheside_cache_gets_total{result=\"miss\",tier=\"hot\"}",
        "cacheside_commands_total{family=\"string\",outcome=\"cached\"}",
        "cacheside_commands_total{family=\"string\",outcome=\"forwarded\"}",
        "cacheside_origin_queries_total{mapping=\"product\"}",
        "cacheside_origin_query_duration_seconds_count{mapping=\"product\"}",
        "cacheside_cache_entries",
        "cacheside_upstream_connections",
        "cacheside_client_connections_total",
    ] {
        assert!(sampled(series) > 0.0, "{series} has samples:\n{text}");
    }
    // Every kind of upstream error is exported from the start (a rate needs its zero).
    for kind in [
        "connect",
        "handshake",
        "auth",
        "tls",
        "timeout",
        "closed",
        "protocol",
        "readonly",
        "moved",
        "ask",
    ] {
        let series = format!("cacheside_upstream_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series}");
    }
}

/// A wrong password is an `auth` failure, not a `handshake` one, at each reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_counts_as_an_auth_error() {
    let redis = RedisServer::start();
    let mut direct = redis.direct().await;
    let _: () = query(&mut direct, &["CONFIG", "SET", "requirepass", "right"]).await;
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let proxy = Proxy::start(&url).await;
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\n").await;
    let reply = String::from_utf8_lossy(&raw.read_exact_len(20).await).into_owned();
    assert!(reply.starts_with("-ERR cacheside: "), "{reply}");
    let text = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"auth\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"handshake\"}"),
        Some(0.0)
    );
}

/// A TLS handshake that fails without a TLS alert (here: a server that accepts and hangs up
/// on the ClientHello) is a `tls` failure, not a `connect` one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_counts_as_a_tls_error() {
    let hangs_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hangs_up.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = hangs_up.accept().await {
            drop(conn);
        }
    });
    let url = format!("rediss://127.0.0.1:{port}");
    let proxy = Proxy::start_with(&url, |c| c.upstream.tls_insecure_skip_verify = true).await;
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\n").await;
    let reply = String::from_utf8_lossy(&raw.read_exact_len(20).await).into_owned();
    assert!(reply.starts_with("-ERR cacheside: "), "{reply}");
    let text = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"tls\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"connect\"}"),
        Some(0.0)
    );
}
