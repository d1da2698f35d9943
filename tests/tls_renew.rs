//! Renewed TLS files are used without a restart: the listener's certificate (as cert-manager
//! renews a Secret mounted in the pod) and the upstream's CA bundle, each checked every
//! `tls_reload_interval`. A half-written renewal (a key that does not fit the certificate)
//! keeps the files in use. Real parts: a TLS redis-server whose certificate is changed with
//! CONFIG SET, certificates made by `openssl`.

mod support;

use cacheside::config::units::Human;
use redis::AsyncCommands;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::certs::Certs;
use support::{eventually, metric, query as q, Proxy, RedisServer};

/// A client of cacheside's TLS listener that trusts `ca` only; `None` if the handshake (or the
/// first command) fails.
async fn tls_client(proxy: &Proxy, ca: &Path) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}", proxy.addr.port()),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).unwrap()),
        },
    )
    .unwrap();
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
    pong.ok().map(|_| c)
}

async fn renewals(proxy: &Proxy, side: &str, result: &str) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    let series = format!("cacheside_tls_renewals_total{{result=\"{result}\",side=\"{side}\"}}");
    metric(&text, &series).unwrap_or(0.0)
}

fn copy(from: &Path, to: &Path) {
    // Written to a temporary name and renamed, as a Secret volume swaps its files.
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_listener_certificate_is_used_for_new_connections() {
    let redis = RedisServer::start();
    let (old_ca, new_ca) = (Certs::new(), Certs::new());
    let (old_cert, old_key) = old_ca.issue("cacheside", "IP:127.0.0.1", "serverAuth");
    let (new_cert, new_key) = new_ca.issue("cacheside", "IP:127.0.0.1", "serverAuth");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key): (PathBuf, PathBuf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    copy(&old_cert, &cert);
    copy(&old_key, &key);
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.server.tls_cert_file = Some(cert.clone());
        c.server.tls_key_file = Some(key.clone());
        c.server.tls_reload_interval = Human::millis(100);
    })
    .await;
    let mut before = tls_client(&proxy, &old_ca.ca())
        .await
        .expect("old CA trusted");
    let _: () = before.set("k", "v").await.unwrap();
    assert!(tls_client(&proxy, &new_ca.ca()).await.is_none());

    // Half a renewal: the new certificate with the old key. Refused; the old pair stays.
    copy(&new_cert, &cert);
    assert!(
        eventually(Duration::from_secs(5), async || {
            renewals(&proxy, "listener", "error").await >= 1.0
        })
        .await,
        "the mismatched pair was not seen"
    );
    assert!(tls_client(&proxy, &old_ca.ca()).await.is_some());
    assert_eq!(renewals(&proxy, "listener", "ok").await, 0.0);

    copy(&new_key, &key);
    assert!(
        eventually(Duration::from_secs(5), async || {
            tls_client(&proxy, &new_ca.ca()).await.is_some()
        })
        .await,
        "the renewed certificate was never presented"
    );
    assert_eq!(renewals(&proxy, "listener", "ok").await, 1.0);
    assert!(tls_client(&proxy, &old_ca.ca()).await.is_none());
    // A connection made before keeps working.
    let v: String = before.get("k").await.unwrap();
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_upstream_ca_bundle_is_trusted_for_new_connections() {
    let (old_ca, new_ca) = (Certs::new(), Certs::new());
    let (old_cert, old_key) = old_ca.issue("redis", "IP:127.0.0.1", "serverAuth");
    let (new_cert, new_key) = new_ca.issue("redis", "IP:127.0.0.1", "serverAuth");
    let redis = RedisServer::start_tls(&[
        "--tls-cert-file",
        old_cert.to_str().unwrap(),
        "--tls-key-file",
        old_key.to_str().unwrap(),
        "--tls-ca-cert-file",
        old_ca.ca().to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    copy(&old_ca.ca(), &bundle);
    let proxy = Proxy::start_with(&redis.tls_url("127.0.0.1"), |c| {
        c.upstream.tls_ca_file = Some(bundle.clone());
        c.upstream.tls_reload_interval = Human::millis(100);
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "k", "1"]).await;

    // The server moves to a certificate of the new CA, and the bundle to that CA.
    let mut direct = redis.direct().await;
    let (cert, key) = (new_cert.to_str().unwrap(), new_key.to_str().unwrap());
    let set = ["CONFIG", "SET", "tls-cert-file", cert, "tls-key-file", key];
    let _: () = q(&mut direct, &set).await;
    copy(&new_ca.ca(), &bundle);
    // A new upstream connection (a WATCH opens the client's own) verifies with the new CA.
    let mut fresh = proxy.client().await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let r: redis::RedisResult<String> =
                redis::cmd("WATCH").arg("k").query_async(&mut fresh).await;
            r.is_ok()
        })
        .await,
        "no new upstream connection was accepted"
    );
    assert_eq!(renewals(&proxy, "upstream", "ok").await, 1.0);
    let _: String = q(&mut fresh, &["UNWATCH"]).await;
    assert_eq!(q::<String>(&mut fresh, &["GET", "k"]).await, "1");
}
