//! Transactions on a real Redis Cluster whose slots move: a transaction that cacheside sent to
//! a slot's old primary (its slot map not yet refreshed), to a slot being migrated, or whose
//! EXEC met a key migrated after it was queued, runs where the slot now lives; the client, which
//! does not speak the cluster protocol, sees `+QUEUED` and EXEC's results as from one Redis.

mod support;

use cacheside::tier::redis::cluster::slot;
use support::cluster::{cli, RedisCluster};
use support::query as q;
use support::Proxy;

async fn start() -> (RedisCluster, Proxy) {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    // The slot map is loaded before any slot moves.
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "txn:warm", "1"]).await;
    (cluster, proxy)
}

fn moved_count(metrics: &str) -> f64 {
    support::metric(metrics, "cacheside_cluster_redirects_total{kind=\"moved\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_to_a_slots_old_primary_runs_on_its_new_one() {
    let (cluster, proxy) = start().await;
    let s = slot::of(b"tm");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    let mut c = proxy.client().await;
    let (set, n, got): (String, i64, String) = redis::pipe()
        .atomic()
        .set("{tm}a", "1")
        .incr("{tm}n", 5)
        .get("{tm}a")
        .query_async(&mut c)
        .await
        .expect("the transaction runs on the slot's new primary");
    assert_eq!((set.as_str(), n, got.as_str()), ("OK", 5, "1"));
    assert_eq!(cli(to, &["GET", "{tm}n"]).trim(), "5", "written on {to}");
    assert!(moved_count(&proxy.admin_get("/metrics").await.1) >= 1.0);

    // Pipelined in one write, with a command after EXEC: every reply in order, none an error.
    cluster.migrate(s, from, None);
    cluster.finish_migration(s, from);
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\nINCR {tm}n\r\nPING\r\nEXEC\r\nGET {tm}n\r\n")
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:6\r\n+PONG\r\n$1\r\n6\r\n")
        .await;
    assert_eq!(
        cli(from, &["GET", "{tm}n"]).trim(),
        "6",
        "written on {from}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_a_key_already_migrated_follows_ask() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "{ta}moved", "10"]).await;
    let _: () = q(&mut c, &["SET", "{ta}stays", "1"]).await;
    let s = slot::of(b"ta");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, Some(&["{ta}moved"]));
    // The source still serves the slot and no longer has the key: it answers ASK.
    let (n, v): (i64, String) = redis::pipe()
        .atomic()
        .incr("{ta}moved", 1)
        .get("{ta}moved")
        .query_async(&mut c)
        .await
        .expect("the transaction runs on the importing node");
    assert_eq!((n, v.as_str()), (11, "11"));
    // Keys on both sides of the migration: the node's answers stand, as a cluster's would.
    let split: redis::RedisResult<(i64, i64)> = redis::pipe()
        .atomic()
        .incr("{ta}stays", 1)
        .incr("{ta}moved", 1)
        .query_async(&mut c)
        .await;
    assert!(split.is_err(), "{split:?}");
    cluster.migrate(s, to, Some(&["{ta}stays"]));
    cluster.finish_migration(s, to);
    assert_eq!(q::<i64>(&mut c, &["GET", "{ta}moved"]).await, 11);
    assert_eq!(q::<i64>(&mut c, &["GET", "{ta}stays"]).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_whose_key_migrated_after_it_was_queued_runs_on_the_new_node() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "{te}k", "1"]).await;
    let s = slot::of(b"te");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\nINCR {te}k\r\n").await;
    raw.expect(b"+OK\r\n+QUEUED\r\n").await;
    // Queued where the key was; it leaves before EXEC, which the source then redirects
    // (discarding the transaction).
    cluster.migrate(s, to, Some(&["{te}k"]));
    raw.send(b"EXEC\r\n").await;
    raw.expect(b"*1\r\n:2\r\n").await;
    cluster.finish_migration(s, to);
    assert_eq!(cli(to, &["GET", "{te}k"]).trim(), "2", "written on {to}");
    assert_eq!(q::<i64>(&mut c, &["GET", "{te}k"]).await, 2);
}

/// A moved transaction that writes a mapped key takes read-through's cleanup with it: the key's
/// fill lease (a load in flight) is deleted on the node where the transaction ran, so that load
/// cannot store the row it read before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_transaction_deletes_the_fill_lease_where_it_ran() {
    let cluster = RedisCluster::start();
    let pg = support::postgres::PgServer::start();
    let proxy = Proxy::start_with(&cluster.url(), |c| {
        support::readthrough::configure(c, &pg);
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "txn:warm", "1"]).await;
    let key = "product:7";
    let lease = "cacheside:lease:{product:7}";
    let s = slot::of(key.as_bytes());
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    // A load of the key in flight holds its lease on the slot's primary.
    assert_eq!(
        cli(to, &["SET", lease, "token", "PX", "60000"]).trim(),
        "OK"
    );
    let (set,): (String,) = redis::pipe()
        .atomic()
        .set(key, "{\"id\":7,\"name\":\"written\"}")
        .query_async(&mut c)
        .await
        .expect("the transaction runs on the slot's new primary");
    assert_eq!(set, "OK");
    assert_eq!(
        cli(to, &["EXISTS", lease]).trim(),
        "0",
        "the lease is deleted on {to}"
    );
    let got: String = q(&mut c, &["GET", key]).await;
    assert!(got.contains("written"), "{got}");

    // A write under WATCH (outside the transaction) whose slot moved runs where it lives, and
    // its cleanup with it.
    let (key, lease) = ("product:8", "cacheside:lease:{product:8}");
    let s = slot::of(key.as_bytes());
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    let mut raw = proxy.raw().await;
    raw.send(b"WATCH product:8\r\n").await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    assert_eq!(
        cli(to, &["SET", lease, "token", "PX", "60000"]).trim(),
        "OK"
    );
    raw.send(b"SET product:8 x\r\n").await;
    raw.expect(b"+OK\r\n").await;
    assert_eq!(cli(to, &["GET", key]).trim(), "x", "written on {to}");
    assert_eq!(
        cli(to, &["EXISTS", lease]).trim(),
        "0",
        "the lease is deleted on {to}"
    );
    support::assert_no_panics();
}

/// WATCH sent where a stale slot map says its key lives: its `-MOVED` is followed (the WATCH is
/// sent again on the slot's primary, and the client's connection moves there), so the
/// transaction after it runs, and a write by another client to the watched key still aborts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sent_to_a_slots_old_primary_moves_with_its_transaction() {
    let (cluster, proxy) = start().await;
    let s = slot::of(b"tw");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    let mut raw = proxy.raw().await;
    raw.send(b"WATCH {tw}k\r\nGET {tw}k\r\nMULTI\r\nSET {tw}k 1\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n$-1\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
        .await;
    assert_eq!(cli(to, &["GET", "{tw}k"]).trim(), "1", "written on {to}");
    // Moved back: WATCH follows again, and another client's write aborts the transaction.
    cluster.migrate(s, from, None);
    cluster.finish_migration(s, from);
    raw.send(b"WATCH {tw}k\r\n").await;
    raw.expect(b"+OK\r\n").await;
    let mut other = proxy.client().await;
    let _: () = q(&mut other, &["SET", "{tw}k", "2"]).await;
    raw.send(b"MULTI\r\nSET {tw}k 3\r\nEXEC\r\n").await;
    raw.expect(b"+OK\r\n+QUEUED\r\n*-1\r\n").await;
    assert_eq!(
        cli(from, &["GET", "{tw}k"]).trim(),
        "2",
        "the aborted SET did not run"
    );
    support::assert_no_panics();
}

/// A slot moved after its key was watched: the watch stays on the old primary, which redirects
/// the queued commands and discards the transaction. The client reads the watched key where it
/// now lives, gets what an optimistic transaction expects when its watched key changed (EXEC's
/// null), and its retry, WATCH again, runs on the new primary. Keys watched on a node the
/// redirection does not point to keep the node's abort: the transaction now spans two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_transaction_whose_slot_moved_fails_its_watch_and_retries_where_it_lives() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "{tx}k", "1"]).await;
    let s = slot::of(b"tx");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    let mut raw = proxy.raw().await;
    // The watched key exists and is migrated, and a key never written (no MIGRATE touches it)
    // is watched with it: both are in the moved slot.
    raw.send(b"WATCH {tx}k {tx}none\r\n").await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    raw.send(b"GET {tx}k\r\nMULTI\r\nINCR {tx}k\r\nEXEC\r\n")
        .await;
    raw.expect(b"$1\r\n1\r\n+OK\r\n+QUEUED\r\n*-1\r\n").await;
    raw.send(b"WATCH {tx}none\r\n").await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, from, None);
    cluster.finish_migration(s, from);
    raw.send(b"MULTI\r\nINCR {tx}k\r\nEXEC\r\n").await;
    raw.expect(b"+OK\r\n+QUEUED\r\n*-1\r\n").await;
    // The retry runs where the slot now lives.
    raw.send(b"WATCH {tx}k\r\nMULTI\r\nINCR {tx}k\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:2\r\n").await;
    assert_eq!(
        cli(from, &["GET", "{tx}k"]).trim(),
        "2",
        "written on {from}"
    );

    // The key migrated while its slot is still migrating: the source answers ASK for it.
    raw.send(b"WATCH {tx}k\r\n").await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, to, Some(&["{tx}k"]));
    raw.send(b"GET {tx}k\r\nMULTI\r\nINCR {tx}k\r\nEXEC\r\n")
        .await;
    raw.expect(b"$1\r\n2\r\n+OK\r\n+QUEUED\r\n*-1\r\n").await;
    cluster.finish_migration(s, to);
    raw.send(b"WATCH {tx}k\r\nGET {tx}k\r\nMULTI\r\nINCR {tx}k\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n$1\r\n2\r\n+OK\r\n+QUEUED\r\n*1\r\n:3\r\n")
        .await;
    assert_eq!(cli(to, &["GET", "{tx}k"]).trim(), "3", "written on {to}");

    // A key watched in a slot that stays, with the queued key's slot moving away from the
    // same node: the abort stands (a retry could never run on one node).
    let stays = (0..)
        .map(|i| format!("{{txs{i}}}w"))
        .find(|k| {
            let w = slot::of(k.as_bytes());
            w != s && cluster.primary_of(w) == to
        })
        .unwrap();
    raw.send(format!("WATCH {stays}\r\n").as_bytes()).await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, from, None);
    cluster.finish_migration(s, from);
    raw.send(b"MULTI\r\nINCR {tx}k\r\nEXEC\r\n").await;
    raw.expect(b"+OK\r\n+QUEUED\r\n-EXECABORT").await;
    support::assert_no_panics();
}

/// A key read under WATCH after its slot moved is read where it now lives, where the watch
/// cannot see writes to it: the transaction after it must not run, even when its own commands'
/// slot stayed on the watching node. EXEC answers null (the watch failed), nothing runs, and
/// the retry reads and watches on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_key_was_read_elsewhere_fails_even_if_the_transaction_stays() {
    let (cluster, proxy) = start().await;
    // The watched key does not exist yet: no MIGRATE touches it, so the node's own watch
    // stays clean.
    let mut c = proxy.client().await;
    let s = slot::of(b"tv");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    let other = (0..)
        .map(|i| format!("{{tvo{i}}}w"))
        .find(|k| cluster.primary_of(slot::of(k.as_bytes())) == from)
        .unwrap();
    let mut raw = proxy.raw().await;
    raw.send(b"WATCH {tv}k\r\n").await;
    raw.expect(b"+OK\r\n").await;
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    raw.send(b"GET {tv}k\r\n").await;
    raw.expect(b"$-1\r\n").await;
    // Another client writes the watched key where it now lives.
    let _: () = q(&mut c, &["SET", "{tv}k", "2"]).await;
    raw.send(format!("MULTI\r\nSET {other} x\r\nEXEC\r\n").as_bytes())
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n*-1\r\n").await;
    assert_eq!(cli(from, &["EXISTS", &other]).trim(), "0", "nothing ran");
    // Watched and written where the key now lives, a transaction runs.
    raw.send(b"WATCH {tv}k\r\nGET {tv}k\r\nMULTI\r\nSET {tv}k 3\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n$1\r\n2\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
        .await;
    assert_eq!(cli(to, &["GET", "{tv}k"]).trim(), "3");
    // A read of a key not watched, whose slot moved, leaves the watch alone (voided, it
    // would fail every retry).
    let unwatched = (0..)
        .map(|i| format!("{{tvu{i}}}u"))
        .find(|k| cluster.primary_of(slot::of(k.as_bytes())) == from)
        .unwrap();
    raw.send(format!("WATCH {other}\r\n").as_bytes()).await;
    raw.expect(b"+OK\r\n").await;
    let u = slot::of(unwatched.as_bytes());
    cluster.migrate(u, to, None);
    cluster.finish_migration(u, to);
    raw.send(format!("GET {unwatched}\r\n").as_bytes()).await;
    raw.expect(b"$-1\r\n").await;
    raw.send(format!("MULTI\r\nSET {other} y\r\nEXEC\r\n").as_bytes())
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    assert_eq!(cli(from, &["GET", &other]).trim(), "y");
    let failed = support::metric(
        &proxy.admin_get("/metrics").await.1,
        "cacheside_cluster_watches_failed_total",
    );
    assert_eq!(failed, Some(1.0), "the voided watch is counted");
    support::assert_no_panics();
}
