//! Transactions through cacheside: MULTI/EXEC/DISCARD, WATCH and UNWATCH, SELECT inside MULTI.

mod support;

use support::commands::{direct_db, direct_raw, q, read_until_suffix, resp, start, within};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_pipeline_runs_as_one_transaction() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let (n, v, len): (i64, String, i64) = within(
        "MULTI/EXEC",
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg("tx:a")
            .arg(1)
            .ignore()
            .cmd("INCRBY")
            .arg("tx:a")
            .arg(5)
            .cmd("GET")
            .arg("tx:a")
            .cmd("RPUSH")
            .arg("tx:l")
            .arg("x")
            .arg("y")
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!((n, v.as_str(), len), (6, "6", 2));

    // The connection is usable for plain commands afterwards, and the effects are in redis.
    assert_eq!(q::<String, _>(&mut c, &["GET", "tx:a"]).await, "6");
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["LLEN", "tx:l"]).await, 2);

    // Many transactions back to back on one multiplexed connection, interleaved with plain ones.
    for i in 0..50 {
        let (a, b): (i64, i64) = within(
            "MULTI/EXEC loop",
            redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg("tx:ctr")
                .cmd("INCR")
                .arg("tx:ctr")
                .query_async(&mut c),
        )
        .await
        .unwrap();
        assert_eq!((a, b), (2 * i + 1, 2 * i + 2));
        assert_eq!(q::<i64, _>(&mut c, &["GET", "tx:ctr"]).await, 2 * i + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_multi_exec_and_discard_reply_like_redis() {
    let (redis, proxy) = start().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*1\r\n$5\r\nMULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$5\r\ntx:rk\r\n$3\r\nabc\r\n")
        .await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*2\r\n$4\r\nINCR\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    raw.expect(b"*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$3\r\nabc\r\n")
        .await;

    // DISCARD drops what was queued.
    raw.send(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\ntx:dk\r\n$1\r\n1\r\n*1\r\n$7\r\nDISCARD\r\n")
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+OK\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["EXISTS", "tx:dk"]).await, 0);

    // A queueing error aborts the whole transaction.
    raw.send(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\ntx:ek\r\n$1\r\n1\r\n*2\r\n$3\r\nSET\r\n$5\r\ntx:ek\r\n*1\r\n$4\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'set' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n")
        .await;
    assert_eq!(q::<i64, _>(&mut d, &["EXISTS", "tx:ek"]).await, 0);

    // EXEC without MULTI is redis-server's error.
    raw.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    raw.expect(b"-ERR EXEC without MULTI\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"$3\r\nabc\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_aborts_the_transaction() {
    let (redis, proxy) = start().await;
    let mut b = proxy.client().await;
    let mut a = proxy.raw().await;

    assert_eq!(q::<String, _>(&mut b, &["SET", "w:k", "orig"]).await, "OK");

    a.send(b"*2\r\n$5\r\nWATCH\r\n$3\r\nw:k\r\n").await;
    a.expect(b"+OK\r\n").await;
    // Client B changes the watched key (on a shared connection) after A's WATCH took effect.
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w:k", "changed"]).await,
        "OK"
    );
    a.send(b"*1\r\n$5\r\nMULTI\r\n").await;
    a.expect(b"+OK\r\n").await;
    a.send(b"*3\r\n$3\r\nSET\r\n$3\r\nw:k\r\n$4\r\nmine\r\n")
        .await;
    a.expect(b"+QUEUED\r\n").await;
    a.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    a.expect(b"*-1\r\n").await;

    a.send(b"*2\r\n$3\r\nGET\r\n$3\r\nw:k\r\n").await;
    a.expect(b"$7\r\nchanged\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "w:k"]).await, "changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_conflict_commits_and_unwatch_releases() {
    let (redis, proxy) = start().await;
    let mut b = proxy.client().await;
    let mut a = proxy.raw().await;

    // A change by another client *before* WATCH does not abort.
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w2:k", "before"]).await,
        "OK"
    );
    a.send(b"*2\r\n$5\r\nWATCH\r\n$4\r\nw2:k\r\n").await;
    a.expect(b"+OK\r\n").await;
    a.send(
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$4\r\nw2:k\r\n$4\r\nmine\r\n*1\r\n$4\r\nEXEC\r\n",
    )
    .await;
    a.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "w2:k"]).await, "mine");

    // UNWATCH forgets the watch: a later change does not abort.
    a.send(b"*2\r\n$5\r\nWATCH\r\n$4\r\nw2:k\r\n*1\r\n$7\r\nUNWATCH\r\n")
        .await;
    a.expect(b"+OK\r\n+OK\r\n").await;
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w2:k", "other"]).await,
        "OK"
    );
    a.send(b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$4\r\nw2:n\r\n*1\r\n$4\r\nEXEC\r\n")
        .await;
    a.expect(b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n").await;
}

/// SELECT queued inside MULTI switches the database when EXEC runs it, as in redis-server: the
/// client keeps its pinned connection, so plain commands and later transactions both see db 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_a_transaction_moves_the_client_to_that_database_like_redis() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d1 = direct_db(&redis, 1).await;
    let mut seq = Vec::new();
    seq.extend(resp(&[b"MULTI"]));
    seq.extend(resp(&[b"SELECT", b"1"]));
    seq.extend(resp(&[b"EXEC"]));
    seq.extend(resp(&[b"SET", b"txsel:k", b"v"]));
    seq.extend(resp(&[b"GET", b"txsel:k"]));
    seq.extend(resp(&[b"MULTI"]));
    seq.extend(resp(&[b"GET", b"txsel:k"]));
    seq.extend(resp(&[b"EXEC"]));
    seq.extend(resp(&[b"ECHO", b"END"]));

    // What redis-server does with these bytes...
    let mut direct = direct_raw(&redis).await;
    direct.write_all(&seq).await.unwrap();
    let want = read_until_suffix(&mut direct, b"$3\r\nEND\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&want),
        "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n+OK\r\n$1\r\nv\r\n+OK\r\n+QUEUED\r\n*1\r\n$1\r\nv\r\n$3\r\nEND\r\n"
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "txsel:k"]).await,
        Some("v".into())
    );
    assert_eq!(q::<i64, _>(&mut d1, &["DEL", "txsel:k"]).await, 1);

    // ...and what it does with them through cacheside.
    let mut raw = proxy.raw().await;
    raw.send(&seq).await;
    let got = read_until_suffix(&mut raw.0, b"$3\r\nEND\r\n").await;
    let in_db0: Option<String> = q(&mut d0, &["GET", "txsel:k"]).await;
    let in_db1: Option<String> = q(&mut d1, &["GET", "txsel:k"]).await;
    assert_eq!(
        (in_db0, in_db1),
        (None, Some("v".to_string())),
        "after MULTI/SELECT 1/EXEC the SET must land in db 1 (db0, db1)"
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}
