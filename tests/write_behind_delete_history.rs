//! History checker for write-behind deletes: one writer per key alternates SET and DEL of
//! `item:{id}` (write-behind with a `delete_query`) through two sidecars, while readers GET every
//! key through three sidecars with hot tiers and read-through, for seconds, as the workers apply
//! the queue. A read that begins after a SET's acknowledgement must not return an older value,
//! and one that begins after a DEL's acknowledgement must not return any value older than a SET
//! issued after that DEL (in particular not the deleted row, loaded back from the database).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::behind::configure;
use support::history::{finish, wait_coherent};
use support::postgres::PgServer;
use support::{Proxy, RedisServer};

const KEYS: u64 = 6;
const DELETE_QUERY: &str = "DELETE FROM wb_items WHERE id = $1";

/// Per key: the newest version acknowledged, and the newest issued. Version `n` odd is
/// `SET item:k v<n>`, `n` even (> 0) is `DEL item:k`; 0 is the start (no row, no key).
struct Key {
    acked: AtomicU64,
    issued: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_after_an_acknowledged_del_or_set_returns_an_older_row() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        sidecars.push(
            Proxy::start_with(&redis.url(), |c| {
                configure(c, &pg, |m| m.delete_query = Some(DELETE_QUERY.into()));
                c.cache = vec![support::cache_rule("item:*", 60)];
            })
            .await,
        );
    }
    for p in &sidecars {
        wait_coherent(p).await;
    }
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|_| Key {
                acked: AtomicU64::new(0),
                issued: AtomicU64::new(0),
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let mut c = sidecars[(k % 2) as usize].client().await;
        let (keys, stop) = (keys.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("item:{k}");
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                n += 1;
                keys[k as usize].issued.store(n, SeqCst);
                let r = if n % 2 == 1 {
                    redis::cmd("SET")
                        .arg(&name)
                        .arg(format!("v{n}"))
                        .query_async::<()>(&mut c)
                        .await
                } else {
                    redis::cmd("DEL")
                        .arg(&name)
                        .query_async::<i64>(&mut c)
                        .await
                        .map(|_| ())
                };
                r.expect("writes are acknowledged");
                keys[k as usize].acked.store(n, SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (0, 0)
        }));
    }
    for p in &sidecars {
        for _ in 0..2 {
            let mut c = p.client().await;
            let (keys, stop) = (keys.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut reads, mut stale) = (0u64, 0u64);
                let mut k = 0u64;
                while !stop.load(SeqCst) {
                    k = (k + 1) % KEYS;
                    let before = keys[k as usize].acked.load(SeqCst);
                    let v: Option<String> = redis::cmd("GET")
                        .arg(format!("item:{k}"))
                        .query_async(&mut c)
                        .await
                        .expect("reads are answered");
                    let issued = keys[k as usize].issued.load(SeqCst);
                    reads += 1;
                    let bad = match v.as_deref() {
                        // Any value older than what was acknowledged before the read began.
                        Some(v) => v[1..].parse::<u64>().expect("a version") < before,
                        // Nothing: stale if a SET was acknowledged and nothing issued since.
                        None => before % 2 == 1 && issued == before,
                    };
                    if bad {
                        stale += 1;
                        eprintln!(
                            "stale: item:{k} read {v:?} after version {before} was acknowledged"
                        );
                    }
                }
                (reads, stale)
            }));
        }
    }
    let outcome = finish(Duration::from_secs(4), &stop, tasks, &sidecars).await;
    eprintln!("write-behind deletes: {outcome:?}");
    assert!(outcome.reads > 500, "the readers ran: {outcome:?}");
    assert_eq!(outcome.stale, 0, "{outcome:?}");
    support::assert_no_panics();
}
