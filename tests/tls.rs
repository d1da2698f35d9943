//! TLS and auth through real parts: a TLS-enabled redis-server with certificates made in the
//! test. The upstream works over `rediss://` (shared and pinned connections, and the hot tier's
//! invalidation connection in both coherence modes); a wrong CA, a hostname mismatch and a
//! missing client certificate fail with errors naming the cause; the listener speaks TLS to a
//! `rediss://` client; an RBAC user authenticates from a password file that is re-read on
//! reconnect.

mod support;

use cacheside::config::Config;
use redis::AsyncCommands;
use std::path::Path;
use std::time::{Duration, Instant};
use support::certs::Certs;
use support::{history, metric, Proxy, RedisServer};

/// A redis-server whose TLS port presents a certificate for `san`, signed by `certs`' CA, and
/// asks clients for a certificate from that CA when `client_certs`.
fn tls_redis(certs: &Certs, san: &str, client_certs: bool, extra: &[&str]) -> RedisServer {
    let (cert, key) = certs.issue("redis", san, "serverAuth");
    let ca = certs.ca();
    let mut args = vec![
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        if client_certs { "yes" } else { "no" },
    ];
    args.extend_from_slice(extra);
    RedisServer::start_tls(&args)
}

fn trusting(ca: &Path) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| c.upstream.tls_ca_file = Some(ca.to_path_buf())
}

/// Sends one GET through cacheside as raw bytes and returns the reply's first line.
async fn get_reply(proxy: &Proxy) -> String {
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\n").await;
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(raw.read_exact_len(1).await);
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

async fn upstream_tls_failures(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    metric(&text, "cacheside_upstream_errors_total{kind=\"tls\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_and_a_transaction_work_over_tls_with_the_right_ca() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", false, &[]);
    // An IP host is checked against the certificate's IP addresses.
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), trusting(&certs.ca())).await;
    let mut c = proxy.client().await;
    let _: () = c.set("greeting", "hello over tls").await.unwrap();
    let v: String = c.get("greeting").await.unwrap();
    assert_eq!(v, "hello over tls");
    // MULTI/EXEC runs on a connection pinned to this client, also TLS.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("counter", 1)
        .incr("counter", 2)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 3));
    let mut direct = redis.direct().await;
    let v: String = direct.get("greeting").await.unwrap();
    assert_eq!(v, "hello over tls", "the write reached the TLS upstream");
    // Pipelined, larger than one TLS record both ways.
    let big = "x".repeat(100_000);
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.set(format!("big:{i}"), &big).ignore();
    }
    for i in 0..50 {
        pipe.get(format!("big:{i}"));
    }
    let values: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    assert!(values.iter().all(|v| *v == big) && values.len() == 50);
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_token_in_a_rediss_url_authenticates() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", false, &[]);
    // Set after start: the harness checks the server's identity without a password.
    let mut direct = redis.direct().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("token-0123456789abcdef")
        .query_async(&mut direct)
        .await
        .unwrap();
    let url = format!(
        "rediss://:token-0123456789abcdef@127.0.0.1:{}",
        redis.tls_port.unwrap()
    );
    let proxy = Proxy::start_with(&url, trusting(&certs.ca())).await;
    let mut c = proxy.client().await;
    let _: () = c.set("k", "v").await.unwrap();
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_fails_with_an_error_naming_it() {
    let certs = Certs::new();
    let other = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", false, &[]);
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), trusting(&other.ca())).await;
    let reply = get_reply(&proxy).await;
    assert!(
        reply.starts_with("-ERR cacheside: upstream 127.0.0.1:") && reply.contains("unknown CA"),
        "{reply}"
    );
    assert!(upstream_tls_failures(&proxy).await >= 1.0);
    assert_eq!(proxy.admin_get("/healthz/upstream").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_host_is_checked_against_the_certificate() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "DNS:localhost", false, &[]);
    // A DNS name in the certificate: reached by that name (sent as SNI), it verifies...
    let by_name = Proxy::start_with(&redis.tls_url("localhost"), trusting(&certs.ca())).await;
    let mut c = by_name.client().await;
    let _: () = c.set("k", "v").await.unwrap();
    // ...reached by an address the certificate does not name, it does not.
    let by_ip = Proxy::start_with(&redis.tls_url("127.0.0.1"), trusting(&certs.ca())).await;
    let reply = get_reply(&by_ip).await;
    assert!(
        reply.contains("hostname mismatch")
            && reply.contains("127.0.0.1")
            && reply.contains("localhost"),
        "{reply}"
    );
    assert!(upstream_tls_failures(&by_ip).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_upstream_requires_one() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", true, &[]);
    let url = redis.tls_url("127.0.0.1");
    let without = Proxy::start_with(&url, trusting(&certs.ca())).await;
    let reply = get_reply(&without).await;
    assert!(
        reply.starts_with("-ERR cacheside:") && reply.contains("client certificate"),
        "{reply}"
    );
    let (cert, key) = certs.issue("cacheside", "", "clientAuth");
    let with = Proxy::start_with(&url, |c| {
        c.upstream.tls_ca_file = Some(certs.ca());
        c.upstream.tls_cert_file = Some(cert.clone());
        c.upstream.tls_key_file = Some(key.clone());
    })
    .await;
    let mut c = with.client().await;
    let _: () = c.set("k", "mtls").await.unwrap();
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "mtls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_any_certificate() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "DNS:elsewhere.example", false, &[]);
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), |c| {
        c.upstream.tls_insecure_skip_verify = true;
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = c.set("k", "v").await.unwrap();
}

/// A sidecar over TLS whose hot tier caches `tls:*`.
async fn tls_sidecar(redis: &RedisServer, ca: &Path, coherence: &str) -> Proxy {
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), |c| {
        c.upstream.tls_ca_file = Some(ca.to_path_buf());
        c.hot.coherence = coherence.into();
        c.cache = vec![support::cache_rule("tls:*", 30)];
    })
    .await;
    history::wait_coherent(&proxy).await;
    proxy
}

/// Two sidecars on one TLS upstream: after a write through A is answered, B never serves the
/// old value, including after writes whose invalidation spans many TLS records. B's repeated
/// reads are hot-tier hits.
async fn coherent_over_tls(coherence: &str) {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", false, &[]);
    let a = tls_sidecar(&redis, &certs.ca(), coherence).await;
    let b = tls_sidecar(&redis, &certs.ca(), coherence).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for i in 0..300 {
        let _: Option<String> = cb.get("tls:shared").await.unwrap();
        let _: Option<String> = cb.get("tls:shared").await.unwrap();
        let _: () = ca.set("tls:shared", i).await.unwrap();
        let v: i64 = cb.get("tls:shared").await.unwrap();
        assert_eq!(v, i, "{coherence}: stale read through B (iteration {i})");
    }
    // One MSET of 400 long keys: its invalidation is one message of ~40 KB, several records.
    let keys: Vec<String> = (0..400)
        .map(|i| format!("tls:{}:{i}", "k".repeat(90)))
        .collect();
    let mut large_stale = 0;
    for round in 0..5 {
        for k in keys.iter().step_by(40) {
            let _: Option<i64> = cb.get(k).await.unwrap();
            let _: Option<i64> = cb.get(k).await.unwrap();
        }
        let pairs: Vec<(&String, i64)> = keys.iter().map(|k| (k, round)).collect();
        let _: () = ca.mset(&pairs).await.unwrap();
        for k in keys.iter().step_by(40) {
            // Stale in round 0 is the nil read before the MSET: counted as any stale read.
            let v: Option<i64> = cb.get(k).await.unwrap();
            if v != Some(round) {
                large_stale += 1;
                eprintln!("{coherence}: stale read of {k} after a large MSET");
            }
        }
    }
    // Redis may read the MSET and its PUBLISH in separate turns, and then writes the PUBLISH's
    // reply before the message to B; broadcast's fence (README, "The fence") holds the reply
    // until B's connection has the message.
    assert_eq!(
        large_stale, 0,
        "{coherence}: stale reads after a large MSET"
    );
    let hits = metric(
        &b.admin_get("/metrics").await.1,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .unwrap_or(0.0);
    assert!(
        hits >= 300.0,
        "{coherence}: B's repeated reads were hits ({hits})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_keeps_sidecars_coherent_over_tls() {
    coherent_over_tls("tracking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_keeps_sidecars_coherent_over_tls() {
    coherent_over_tls("broadcast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_to_a_rediss_client() {
    let certs = Certs::new();
    let redis = RedisServer::start();
    let (cert, key) = certs.issue("cacheside", "IP:127.0.0.1", "serverAuth");
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.server.tls_cert_file = Some(cert.clone());
        c.server.tls_key_file = Some(key.clone());
    })
    .await;
    let client = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}", proxy.addr.port()),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(certs.ca()).unwrap()),
        },
    )
    .unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = c.set("k", "through a tls listener").await.unwrap();
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "through a tls listener");
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("n", 1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((x, y), (1, 2));
    let big = "y".repeat(200_000);
    let _: () = c.set("big", &big).await.unwrap();
    let v: String = c.get("big").await.unwrap();
    assert_eq!(v, big);
    // A plaintext client gets no Redis replies from a TLS listener.
    let mut raw = proxy.raw().await;
    raw.send(b"PING\r\n").await;
    assert!(!raw.read_to_close().await.starts_with(b"+PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rbac_user_authenticates_from_a_password_file_reread_on_reconnect() {
    let certs = Certs::new();
    let redis = tls_redis(&certs, "IP:127.0.0.1", false, &[]);
    let mut direct = redis.direct().await;
    let acl = |args: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("app").arg(args);
        cmd
    };
    let _: () = acl(&["on", ">first-pass", "~*", "&*", "+@all"])
        .query_async(&mut direct)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "first-pass\n").unwrap();
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), |c| {
        c.upstream.tls_ca_file = Some(certs.ca());
        c.upstream.username = Some("app".into());
        c.upstream.password_file = Some(file.clone());
    })
    .await;
    let mut c = proxy.client().await;
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(who, "app");
    // The Secret rotates: Redis gets the new password, the file changes, connections drop.
    let _: () = acl(&["resetpass", ">second-pass"])
        .query_async(&mut direct)
        .await
        .unwrap();
    std::fs::write(&file, "second-pass\n").unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("app")
        .query_async(&mut direct)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let r: redis::RedisResult<String> =
            redis::cmd("ACL").arg("WHOAMI").query_async(&mut c).await;
        match r {
            Ok(who) => {
                assert_eq!(who, "app");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "no reconnect with the rotated password: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
