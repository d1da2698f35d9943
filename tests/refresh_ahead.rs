//! Refresh-ahead against a real PostgreSQL and redis-server: steady reads of one key through
//! two sidecars across several of its TTLs. Every query after the first load is a refresh (so
//! no read found the key expired and waited on the database), and the fleet runs one query per
//! refresh window, counted by PostgreSQL's own statistics.

mod support;

use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};
use std::time::{Duration, Instant};
use support::postgres::PgServer;
use support::{metric, Proxy, RedisServer};

const TTL: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(7);

fn configure(c: &mut Config, pg: &PgServer) {
    c.postgres.url = Some(pg.url());
    c.mapping = vec![MappingConfig {
        name: "product".into(),
        key: "product:{id}".into(),
        query: "SELECT id, name, price, category FROM products WHERE id = $1".into(),
        ttl: Human(TTL),
        refresh_ahead: Some("50%".into()),
        ..MappingConfig::default()
    }];
}

async fn sum(proxies: &[&Proxy], series: &str) -> f64 {
    let mut total = 0.0;
    for p in proxies {
        total += metric(&p.admin_get("/metrics").await.1, series).unwrap_or(0.0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_reads_across_expiry_run_one_query_per_refresh_and_never_wait() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = Proxy::start_with(&redis.url(), |c| configure(c, &pg)).await;
    let b = Proxy::start_with(&redis.url(), |c| configure(c, &pg)).await;
    let both = [&a, &b];
    pg.reset_stats();
    let mut ca = a.client().await;
    let first: String = redis::cmd("GET")
        .arg("product:21")
        .query_async(&mut ca)
        .await
        .unwrap();
    let waits = sum(
        &both,
        "cacheside_origin_lease_waits_total{mapping=\"product\"}",
    )
    .await;
    let started = Instant::now();
    let mut readers = Vec::new();
    for p in both {
        let mut c = p.client().await;
        let expected = first.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while started.elapsed() < RUN {
                let v: Option<String> = redis::cmd("GET")
                    .arg("product:21")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!(v.as_deref(), Some(expected.as_str()));
                reads += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reads
        }));
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    // Let a refresh that a late read asked for finish before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refreshes = sum(&both, "cacheside_refreshes_total{mapping=\"product\"}").await;
    let queries = sum(&both, "cacheside_origin_queries_total{mapping=\"product\"}").await;
    let counted = pg.query_count("FROM products WHERE id");
    eprintln!(
        "{reads} reads, {queries} queries, {refreshes} refreshes, {counted} counted by Postgres"
    );
    assert!(reads > 100, "the readers ran ({reads} reads)");
    assert_eq!(
        counted as f64, queries,
        "Postgres ran what the sidecars counted"
    );
    assert_eq!(
        queries,
        1.0 + refreshes,
        "every query but the first load was a refresh: no read found the key expired"
    );
    assert_eq!(
        sum(
            &both,
            "cacheside_origin_lease_waits_total{mapping=\"product\"}"
        )
        .await,
        waits,
        "no read waited for another sidecar's load"
    );
    // A refresh gives the key a fresh TTL, so the next window opens TTL/2 later: over the run
    // there are at most RUN / (TTL/2) windows, one refresh each in the whole fleet.
    let windows = (RUN.as_millis() / (TTL.as_millis() / 2)) as f64;
    assert!(
        (3.0..=windows).contains(&refreshes),
        "one refresh per window for the fleet: {refreshes} in {windows} windows"
    );
}
