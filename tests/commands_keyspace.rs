//! Keyspace and databases through cacheside: SCAN with MATCH, SELECT, and a database given in
//! the client's URL.

mod support;

use std::collections::HashSet;
use support::commands::{direct_db, q, start, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_with_match_visits_every_matching_key_exactly_as_redis_has_them() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let mut expected = HashSet::new();
    let mut p = redis::pipe();
    for i in 0..2000 {
        let key = format!("scan:match:{i}");
        p.cmd("SET").arg(&key).arg(i).ignore();
        expected.insert(key);
        p.cmd("SET").arg(format!("scan:other:{i}")).arg(i).ignore();
    }
    within("fill", p.query_async::<()>(&mut c)).await.unwrap();
    assert_eq!(q::<i64, _>(&mut c, &["DBSIZE"]).await, 4000);

    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, keys): (String, Vec<String>) = q(
            &mut c,
            &["SCAN", &cursor, "MATCH", "scan:match:*", "COUNT", "100"],
        )
        .await;
        rounds += 1;
        for k in keys {
            assert!(k.starts_with("scan:match:"), "SCAN MATCH returned {k}");
            seen.insert(k);
        }
        cursor = next;
        if cursor == "0" {
            break;
        }
        assert!(rounds < 10_000, "SCAN does not terminate");
    }
    assert!(rounds > 1, "SCAN over 4000 keys took {rounds} round(s)");
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_switches_databases_for_that_client_only() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d1 = direct_db(&redis, 1).await;
    let mut other = proxy.client().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$5\r\nsel:k\r\n$3\r\none\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$3\r\none\r\n").await;

    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k"]).await,
        Some("one".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "sel:k"]).await,
        None
    );
    // Another client through the proxy still sees db 0.
    assert_eq!(
        q::<Option<String>, _>(&mut other, &["GET", "sel:k"]).await,
        None
    );
    assert_eq!(
        q::<String, _>(&mut other, &["SET", "sel:k", "zero"]).await,
        "OK"
    );
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$3\r\none\r\n").await;

    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$4\r\nzero\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nsel:k0\r\n$1\r\nx\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "sel:k0"]).await,
        Some("x".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k0"]).await,
        None
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k"]).await,
        Some("one".into())
    );

    // Back and forth once more, pipelined in one write.
    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n")
        .await;
    raw.expect(b"+OK\r\n$3\r\none\r\n+OK\r\n$4\r\nzero\r\n")
        .await;

    // Errors are redis-server's.
    raw.send(b"*2\r\n$6\r\nSELECT\r\n$3\r\n999\r\n").await;
    raw.expect(b"-ERR DB index is out of range\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$4\r\nzero\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_database_in_its_url_works_in_that_database() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d2 = direct_db(&redis, 2).await;
    let mut c2 = within(
        "connect db 2",
        redis::Client::open(format!("{}/2", proxy.url()))
            .unwrap()
            .get_multiplexed_async_connection(),
    )
    .await
    .expect("connect through cacheside with db 2");

    assert_eq!(
        q::<String, _>(&mut c2, &["SET", "db2:k", "two"]).await,
        "OK"
    );
    assert_eq!(q::<i64, _>(&mut c2, &["INCR", "db2:n"]).await, 1);
    assert_eq!(q::<String, _>(&mut c2, &["GET", "db2:k"]).await, "two");
    assert_eq!(
        q::<Option<String>, _>(&mut d2, &["GET", "db2:k"]).await,
        Some("two".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "db2:k"]).await,
        None
    );
    let (n, v): (i64, String) = within(
        "MULTI in db 2",
        redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg("db2:n")
            .cmd("GET")
            .arg("db2:k")
            .query_async(&mut c2),
    )
    .await
    .unwrap();
    assert_eq!((n, v.as_str()), (2, "two"));
    assert_eq!(q::<i64, _>(&mut d0, &["EXISTS", "db2:n"]).await, 0);
    assert_eq!(q::<String, _>(&mut d2, &["GET", "db2:n"]).await, "2");
}
