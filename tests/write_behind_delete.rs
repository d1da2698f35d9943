//! Write-behind deletes (`write = "behind"` with a `delete_query`): DEL/UNLINK of a mapped key
//! answers Redis's count, is queued in the mapping's stream with the SETs, and reads as gone at
//! once through read-through, although the row stays in PostgreSQL until the worker deletes it;
//! then the row is gone, and a SET after the DEL brings it back in order. Other writes of a
//! write-behind key are refused.

mod support;

use std::time::Duration;
use support::behind::{configure, rows, STREAM};
use support::postgres::PgServer;
use support::{eventually, query, Proxy, RedisServer};

const DELETE_QUERY: &str = "DELETE FROM wb_items WHERE id = $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_del_reads_as_gone_at_once_and_then_deletes_the_row() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, |m| m.delete_query = Some(DELETE_QUERY.into()));
        c.cache = vec![support::cache_rule("item:*", 60)];
    })
    .await;
    pg.execute("INSERT INTO wb_items (id, body) VALUES (1, 'one'), (2, 'two'), (3, 'three')");
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    // Read through: item:1 is now in Redis (and the hot tier); item:2 is not.
    assert_eq!(query::<String>(&mut c, &["GET", "item:1"]).await, "one");
    let _: () = query(&mut direct, &["SET", "other:1", "x"]).await;

    // The worker's DELETE waits on this lock; reads of the table do not.
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE wb_items IN SHARE MODE")
        .await
        .unwrap();
    let gone: i64 = query(&mut c, &["DEL", "item:1", "item:2", "other:1"]).await;
    assert_eq!(gone, 2, "Redis's count: item:1 and other:1 were there");
    assert_eq!(query::<i64>(&mut direct, &["XLEN", STREAM]).await, 2);
    // The rows are still in the database, and yet the keys read as deleted: a read-through
    // miss must not bring back a row whose deletion was acknowledged.
    assert_eq!(rows(&pg).await.len(), 3);
    for k in ["item:1", "item:2"] {
        let v: Option<String> = query(&mut c, &["GET", k]).await;
        assert_eq!(v, None, "{k} reads as deleted while its deletion is queued");
    }
    assert_eq!(query::<String>(&mut c, &["GET", "item:3"]).await, "three");
    // UNLINK is queued the same way.
    let gone: i64 = query(&mut c, &["UNLINK", "item:3"]).await;
    assert_eq!(gone, 1);
    let v: Option<String> = query(&mut c, &["GET", "item:3"]).await;
    assert_eq!(v, None);
    // A SET after a DEL: the latest entry wins.
    let _: i64 = query(&mut c, &["DEL", "item:4"]).await;
    let _: () = query(&mut c, &["SET", "item:4", "four"]).await;
    assert_eq!(
        rows(&pg).await.len(),
        3,
        "nothing applied while the table is locked"
    );

    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let r = rows(&pg).await;
            r.len() == 1 && r.get(&4).map(String::as_str) == Some("four")
        })
        .await,
        "the deletions and the SET reach the database: {:?}",
        rows(&pg).await
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await,
        "applied entries leave the stream"
    );
    // The markers the deletions left are gone once applied; the keys still read as gone (now
    // from the database) and item:4 as written.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let ids: Vec<Option<String>> = query(
                &mut direct,
                &[
                    "MGET",
                    "cacheside:neg:{item:1}",
                    "cacheside:neg:{item:2}",
                    "cacheside:neg:{item:3}",
                ],
            )
            .await;
            ids.iter()
                .all(|v| v.as_deref().is_none_or(|v| !v.contains('-')))
        })
        .await,
        "the deletions' markers are removed once applied"
    );
    for k in ["item:1", "item:2", "item:3"] {
        let v: Option<String> = query(&mut c, &["GET", k]).await;
        assert_eq!(v, None, "{k} stays deleted");
    }
    assert_eq!(query::<String>(&mut c, &["GET", "item:4"]).await, "four");
    // Version rows are pruned once the stream is empty: the table stays bounded.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let db = pg.client().await;
            let n: i64 = db
                .query_one("SELECT count(*) FROM cacheside_write_versions", &[])
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await,
        "the version rows are pruned"
    );
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_delete_query_a_del_changes_redis_only() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| configure(c, &pg, |_| {})).await;
    pg.execute("INSERT INTO wb_items (id, body) VALUES (1, 'one')");
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    assert_eq!(query::<String>(&mut c, &["GET", "item:1"]).await, "one");
    let gone: i64 = query(&mut c, &["DEL", "item:1"]).await;
    assert_eq!(gone, 1);
    assert_eq!(query::<i64>(&mut direct, &["XLEN", STREAM]).await, 0);
    // The row is still the database's: read through again.
    assert_eq!(query::<String>(&mut c, &["GET", "item:1"]).await, "one");
    assert_eq!(rows(&pg).await.len(), 1);
    // Writes that would change Redis and never the database are refused; expiry passes.
    let mut raw = proxy.raw().await;
    raw.send(b"MSET other:1 a item:2 b\r\n").await;
    raw.expect(b"-ERR cacheside: mapping item is write-behind: MSET is not queued to the database; use SET, SETEX, PSETEX or DEL\r\n")
        .await;
    raw.send(b"APPEND item:1 x\r\n").await;
    raw.expect(b"-ERR cacheside: mapping item is write-behind: APPEND is not queued to the database; use SET, SETEX, PSETEX or DEL\r\n")
        .await;
    assert_eq!(
        query::<i64>(&mut direct, &["EXISTS", "other:1", "item:2"]).await,
        0
    );
    raw.send(b"EXPIRE item:1 100\r\n").await;
    raw.expect(b":1\r\n").await;
    support::assert_no_panics();
}
