//! Operating cacheside: upstream outages and recovery, readiness, metrics, and the drain on
//! SIGTERM (in-process and as a real process receiving the signal).

mod support;

use redis::AsyncCommands;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{eventually, metric, Proxy, RedisServer};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_gives_prompt_errors_then_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.reconnect_max = cacheside::config::units::Human::millis(200);
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = c.set("before", "outage").await.unwrap();
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);

    redis.kill();
    // Every command during the outage is answered with an error that says so; none hangs.
    let mut errors = 0;
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get::<_, Option<String>>("before"))
            .await
            .expect("a command during the outage is answered, not left hanging");
        if let Err(e) = r {
            assert!(e.to_string().contains("cacheside: upstream"), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0, "commands fail while the upstream is down");
    assert!(
        eventually(Duration::from_secs(5), async || proxy
            .admin_get("/healthz/upstream")
            .await
            .0
            == 503)
        .await,
        "the upstream is reported down"
    );
    assert_eq!(
        proxy.admin_get("/readyz").await.0,
        200,
        "still ready: a shared Redis outage must not take the pod out of its Service"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(15), async || {
            matches!(
                tokio::time::timeout(Duration::from_secs(3), c.set::<_, _, ()>("after", "outage"))
                    .await,
                Ok(Ok(()))
            )
        })
        .await,
        "cacheside reconnects by itself"
    );
    let v: String = c.get("after").await.unwrap();
    assert_eq!(v, "outage");
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
    assert_eq!(proxy.admin_get("/healthz/upstream").await.0, 200);
    let (_, text) = proxy.admin_get("/metrics").await;
    assert!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"closed\"}").unwrap_or(0.0)
            + metric(&text, "cacheside_upstream_errors_total{kind=\"connect\"}").unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out_with_an_error() {
    // A listener that accepts and never replies: the command timeout must fire.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::start_with(&format!("redis://127.0.0.1:{port}"), |c| {
        c.upstream.command_timeout = cacheside::config::units::Human::millis(300);
    })
    .await;
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\n").await;
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        got.extend(raw.read_exact_len(1).await);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("-ERR cacheside: upstream") && text.contains("did not answer"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_liveness_readiness_and_metrics() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut c = proxy.client().await;
    for i in 0..10 {
        let _: () = c.set(format!("m{i}"), i).await.unwrap();
    }
    let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(proxy.admin_get("/livez").await.0, 200);
    assert!(
        eventually(Duration::from_secs(5), async || proxy
            .admin_get("/readyz")
            .await
            .0
            == 200)
        .await
    );
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metric(
            &text,
            "cacheside_commands_total{family=\"string\",outcome=\"forwarded\"}"
        )
        .unwrap()
            >= 10.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "cacheside_commands_total{family=\"connection\",outcome=\"local\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&text, "cacheside_client_connections").unwrap() >= 1.0);
    assert!(metric(&text, "cacheside_upstream_connections").unwrap() >= 1.0);
    assert!(
        metric(
            &text,
            "cacheside_request_duration_seconds_count{source=\"upstream\"}"
        )
        .unwrap()
            >= 10.0
    );
    assert_eq!(proxy.admin_get("/nope").await.0, 404);

    assert_eq!(proxy.admin_get("/healthz/upstream").await.0, 200);

    // Pointing at nothing: alive and ready (a shared Redis outage must not take every pod out
    // of its Service), with the upstream reported down on its own endpoint.
    let dead = Proxy::start(&format!("redis://127.0.0.1:{}", support::free_port())).await;
    assert_eq!(dead.admin_get("/livez").await.0, 200);
    assert_eq!(dead.admin_get("/readyz").await.0, 200);
    assert_eq!(dead.admin_get("/healthz/upstream").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_in_flight_replies_then_stops_accepting() {
    let redis = RedisServer::start();
    let mut proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    let mut pipeline = Vec::new();
    for i in 0..5000 {
        let v = i.to_string();
        pipeline.extend_from_slice(
            format!(
                "*2\r\n$4\r\nECHO\r\n${}\r\n{v}\r\n*2\r\n$4\r\nINCR\r\n$7\r\ndrained\r\n",
                v.len()
            )
            .as_bytes(),
        );
    }
    raw.send(&pipeline).await;
    // Wait for the first reply so the pipeline is being served, then start the drain.
    let first = raw.read_exact_len(4).await;
    assert_eq!(&first, b"$1\r\n");
    let drain = proxy.begin_shutdown();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), raw.0.read_to_end(&mut rest))
        .await
        .expect("the connection is closed after the drain")
        .unwrap();
    let replies = String::from_utf8_lossy(&rest);
    assert!(
        replies.ends_with(":5000\r\n"),
        "every INCR was answered: {}",
        &replies[replies.len().saturating_sub(40)..]
    );
    tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .expect("drain finishes")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn sigterm_mid_pipeline_delivers_replies_and_exits_zero() {
    let redis = RedisServer::start();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let (mut child, [port, _]) =
        support::process::spawn_listening(Duration::from_secs(10), |[port, admin]| {
            support::process::command(empty.path(), &redis.url(), port, admin)
        });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = support::Raw(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
        let mut pipeline = Vec::new();
        for _ in 0..10_000 {
            pipeline.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$4\r\nterm\r\n");
        }
        raw.send(&pipeline).await;
        let first = raw.read_exact_len(4).await;
        assert_eq!(&first, b":1\r\n");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), raw.0.read_to_end(&mut rest))
            .await
            .expect("closed after the drain")
            .unwrap();
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.ends_with(":10000\r\n"),
            "all 10,000 replies delivered; tail: {}",
            &text[text.len().saturating_sub(30)..]
        );
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "exits within the grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The harness's guard against free-port races: a process handed an admin port another process
/// already listens on binds its client port (which then accepts) and exits; the harness must
/// notice that the listener is not its child's and start it again elsewhere, not hand the test
/// someone else's ports.
#[test]
fn a_process_started_on_a_taken_port_is_started_again_on_free_ones() {
    let redis = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut attempts = 0;
    let (mut child, [port, admin]) =
        support::process::spawn_listening(Duration::from_secs(10), |[port, admin]| {
            attempts += 1;
            let admin = if attempts == 1 { taken_port } else { admin };
            support::process::command(empty.path(), &redis.url(), port, admin)
        });
    assert_eq!(
        attempts, 2,
        "the clash was seen and the process started again"
    );
    assert_ne!(admin, taken_port);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("its own client port");
    let _ = child.kill();
    let _ = child.wait();
}
