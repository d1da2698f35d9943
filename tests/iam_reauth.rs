//! ElastiCache IAM re-authentication against a fake upstream: shared connections AUTH again in
//! band, a refused re-AUTH reconnects, a kept pinned connection and the invalidation connection
//! are replaced before the 12-hour limit (shortened here).

mod support;

use std::time::{Duration, Instant};
use support::iam::*;
use support::Proxy;

#[tokio::test]
async fn shared_connections_reauthenticate_in_band_and_clients_never_see_the_reply() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    let every = Duration::from_millis(300);
    let proxy =
        Proxy::start_validated(with_test_credentials(config, credentials(), Some(every))).await;
    let mut client = proxy.client().await;
    // Requests keep flowing while the connection re-authenticates; each gets its own reply.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        let key = format!("key{i}");
        let v: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut client)
            .await
            .unwrap();
        assert_eq!(v, key);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conns = by_connection(&log);
    assert_eq!(
        conns.len(),
        1,
        "one shared connection, never reopened: {conns:?}"
    );
    let auths: Vec<&Vec<String>> = conns[0].iter().filter(|a| is_auth(a)).collect();
    assert!(
        auths.len() >= 3,
        "{} AUTHs in 1.1 s with a 300 ms period",
        auths.len()
    );
    assert!(
        auths.len() <= 5,
        "{} AUTHs in 1.1 s with a 300 ms period",
        auths.len()
    );
    for a in &auths {
        assert_eq!(a.len(), 3, "AUTH user token: {a:?}");
        assert_well_formed(token_of(a), false);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_reauthentication_closes_the_connection_and_it_reconnects() {
    // The second AUTH on the first connection is refused (the IAM policy was revoked, say).
    let (fake, log) = upstream(|conn, nth| conn == 0 && nth == 2).await;
    // Standalone: no start-up probe, so connection 0 is the shared one.
    let config = iam_config(&fake, |c| c.upstream.mode = "standalone".into());
    let proxy = Proxy::start_validated(with_test_credentials(
        config,
        credentials(),
        Some(Duration::from_millis(200)),
    ))
    .await;
    let mut client = proxy.client().await;
    let v: String = redis::cmd("GET")
        .arg("a")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(v, "a");
    until(&log, "a second connection", |conns| conns.len() >= 2).await;
    let conns = by_connection(&log);
    assert!(is_auth(&conns[1][0]), "{conns:?}");
    assert_well_formed(token_of(&conns[1][0]), false);
    // The new connection serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r: redis::RedisResult<String> =
            redis::cmd("GET").arg("b").query_async(&mut client).await;
        match r {
            Ok(v) => {
                assert_eq!(v, "b");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_kept_pinned_connection_is_replaced_once_reauthentication_is_due() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    let every = Duration::from_secs(1);
    let proxy =
        Proxy::start_validated(with_test_credentials(config, credentials(), Some(every))).await;
    let mut raw = proxy.raw().await;
    let pinned = |log: &Log| {
        by_connection(log)
            .iter()
            .filter(|c| c.iter().any(|a| a[0] == "MULTI"))
            .count()
    };
    transaction(&mut raw).await;
    transaction(&mut raw).await;
    assert_eq!(pinned(&log), 1, "kept between pinned phases");
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    transaction(&mut raw).await;
    assert_eq!(pinned(&log), 2, "replaced after its re-auth time");
    for c in by_connection(&log) {
        assert!(is_auth(&c[0]));
        assert_well_formed(token_of(&c[0]), false);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_invalidation_connection_is_replaced_before_the_limit() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |c| {
        c.hot.coherence = "broadcast".into();
        c.cache = vec![support::cache_rule("product:*", 30)];
    });
    let proxy = Proxy::start_validated(with_test_credentials(
        config,
        credentials(),
        Some(Duration::from_millis(200)),
    ))
    .await;
    let subscribers = |conns: &[Vec<Vec<String>>]| {
        conns
            .iter()
            .filter(|c| c.iter().any(|a| a[0] == "SUBSCRIBE"))
            .count()
    };
    until(&log, "three invalidation connections", |c| {
        subscribers(c) >= 3
    })
    .await;
    for c in by_connection(&log) {
        assert!(is_auth(&c[0]));
        assert_well_formed(token_of(&c[0]), false);
    }
    proxy.shutdown().await;
}

/// MULTI then EXEC: enters the pinned phase and leaves it.
async fn transaction(raw: &mut support::Raw) {
    raw.send(b"MULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"EXEC\r\n").await;
    raw.expect(b"*0\r\n").await;
}
