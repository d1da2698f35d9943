//! Health and drain as the kubelet sees them: `/startupz` during warm-up, readiness dropping at
//! once on SIGTERM while clients are still served for `shutdown.min_drain`, and
//! `POST /quitquitquit` draining to exit code 0.

mod support;

use std::time::{Duration, Instant};
use support::postgres::PgServer;
use support::process::Process;
use support::{eventually, Proxy, Raw, RedisServer};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startupz_is_503_until_warm_up_is_done_then_200() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        support::readthrough::configure(c, &pg);
        c.postgres.wait_for_warm = true;
        // pg_sleep keeps the warm-up running long enough to be seen.
        c.warm = vec![cacheside::config::WarmConfig {
            mapping: "product".into(),
            query: "SELECT id FROM products, pg_sleep(2) ORDER BY id LIMIT 5".into(),
        }];
    })
    .await;
    assert_eq!(proxy.admin_get("/startupz").await.0, 503, "warming up");
    assert_eq!(proxy.admin_get("/readyz").await.0, 503);
    assert_eq!(proxy.admin_get("/livez").await.0, 200, "alive meanwhile");
    assert!(
        eventually(Duration::from_secs(20), async || proxy
            .admin_get("/startupz")
            .await
            .0
            == 200)
        .await,
        "started once warm"
    );
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startupz_is_200_once_listening_without_warm_up() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    assert!(
        eventually(Duration::from_secs(5), async || proxy
            .admin_get("/startupz")
            .await
            .0
            == 200)
        .await
    );
    let mut c = proxy.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
}

async fn ping(raw: &mut Raw) {
    raw.send(b"PING\r\n").await;
    raw.expect(b"+PONG\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_readiness_at_once_and_serves_new_clients_during_min_drain() {
    let redis = RedisServer::start();
    let min_drain = Duration::from_secs(3);
    let mut sidecar = Process::start(
        &redis.url(),
        &[
            ("CACHESIDE_SHUTDOWN_MIN_DRAIN", "3s"),
            ("CACHESIDE_SHUTDOWN_GRACE_PERIOD", "10s"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(5), async || sidecar
            .admin("GET", "/readyz")
            .await
            .0
            == 200)
        .await
    );
    let mut before = Raw(TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .unwrap());
    ping(&mut before).await;

    sidecar.terminate();
    let signalled = Instant::now();
    assert!(
        eventually(Duration::from_millis(500), async || sidecar
            .admin("GET", "/readyz")
            .await
            .0
            == 503)
        .await,
        "not ready at once"
    );
    // Still serving, old and new clients alike, while endpoints catch up.
    let mut after = Raw(TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .unwrap());
    ping(&mut after).await;
    ping(&mut before).await;
    assert_eq!(sidecar.admin("GET", "/livez").await.0, 200);
    assert_eq!(sidecar.admin("GET", "/startupz").await.0, 200);
    assert!(
        signalled.elapsed() < min_drain,
        "the checks above ran inside min_drain ({:?})",
        signalled.elapsed()
    );

    // Then the drain: idle clients are closed, and the process exits 0.
    assert!(after.read_to_close().await.is_empty());
    let status = tokio::task::block_in_place(|| sidecar.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= min_drain,
        "kept accepting for min_drain, exited after {:?}",
        signalled.elapsed()
    );
    assert!(TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_and_exits_zero() {
    let redis = RedisServer::start();
    let mut sidecar = Process::start(&redis.url(), &[("CACHESIDE_SHUTDOWN_MIN_DRAIN", "200ms")]);
    let mut client = Raw(TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .unwrap());
    ping(&mut client).await;
    assert_eq!(
        sidecar.admin("GET", "/quitquitquit").await.0,
        405,
        "POST only"
    );
    let (status, body) = sidecar.admin("POST", "/quitquitquit").await;
    assert_eq!((status, body.as_str()), (200, "draining\n"));
    assert!(
        client.read_to_close().await.is_empty(),
        "idle client closed by the drain"
    );
    let status = tokio::task::block_in_place(|| sidecar.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "exit status {status:?}");
}
