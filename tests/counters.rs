//! `[[counter]]`: INCR-family commands on counter keys get Redis's own replies, and their
//! deltas reach PostgreSQL exactly once: across two sidecars, SIGKILLs between and during
//! flushes, and each crash window of a move (taken but not applied; applied but not cleaned up).

mod support;

use cacheside::config::units::Human;
use std::sync::Arc;
use std::time::Duration;
use support::counters::{configure, db_views, eventually, Sidecar};
use support::postgres::PgServer;
use support::{metric, query, Proxy, RedisServer};

const MOVES: &str = "cacheside:counter:moves:views";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_commands_get_exactly_redis_replies_and_errors() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    // Flushed only at the end: what is pending can be read meanwhile.
    let proxy =
        Proxy::start_with(&redis.url(), |c| configure(c, &pg, Human::secs(3600), None)).await;
    let mut direct = redis.direct().await;
    let _: () = query(&mut direct, &["RPUSH", "product:1:views", "x"]).await;
    let _: () = query(&mut direct, &["SET", "product:2:views", "abc"]).await;
    let _: () = query(
        &mut direct,
        &["SET", "product:3:views", "9223372036854775807"],
    )
    .await;
    let _: () = query(&mut direct, &["RPUSH", "list:views", "x"]).await;
    let _: () = query(&mut direct, &["SET", "str:views", "abc"]).await;

    // Each error, byte for byte as Redis gives it for the command itself.
    let cases: [(&str, &str); 5] = [
        ("INCR product:1:views", "INCR list:views"),
        ("INCRBY product:2:views 5", "INCRBY str:views 5"),
        ("INCRBY product:4:views five", "INCRBY nokey five"),
        ("INCR product:3:views", "INCR product:3:views"),
        (
            "DECRBY product:4:views -9223372036854775808",
            "DECRBY nokey -9223372036854775808",
        ),
    ];
    for (through, straight) in cases {
        let mut raw = proxy.raw().await;
        raw.send(format!("{through}\r\n").as_bytes()).await;
        let mut d = support::Raw(
            tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
                .await
                .unwrap(),
        );
        d.send(format!("{straight}\r\n").as_bytes()).await;
        let want = read_line(&mut d).await;
        assert!(want.starts_with('-'), "{straight}: {want}");
        let got = read_line(&mut raw).await;
        assert_eq!(got, want, "{through}");
    }
    let mut c = proxy.client().await;
    assert_eq!(query::<i64>(&mut c, &["INCR", "product:5:views"]).await, 1);
    assert_eq!(
        query::<i64>(&mut c, &["INCRBY", "product:5:views", "10"]).await,
        11
    );
    assert_eq!(query::<i64>(&mut c, &["DECR", "product:5:views"]).await, 10);
    assert_eq!(
        query::<i64>(&mut c, &["DECRBY", "product:5:views", "3"]).await,
        7
    );
    // Inside a transaction too: EXEC answers the counter's new value.
    let (v,): (i64,) = redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg("product:5:views")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 10);
    // RESP3 clients get the same integer.
    let mut c3 = proxy.client_resp3().await;
    assert_eq!(
        query::<i64>(&mut c3, &["INCR", "product:5:views"]).await,
        11
    );

    // Pending: the successful deltas only; errors added nothing.
    let pending = |k: &str| format!("cacheside:counter:pending:{{{k}}}");
    assert_eq!(
        query::<Option<i64>>(&mut direct, &["GET", &pending("product:5:views")]).await,
        Some(11)
    );
    for k in [
        "product:1:views",
        "product:2:views",
        "product:3:views",
        "product:4:views",
    ] {
        assert_eq!(
            query::<Option<i64>>(&mut direct, &["GET", &pending(k)]).await,
            None,
            "{k}"
        );
    }
    let dirty: Vec<String> =
        query(&mut direct, &["SMEMBERS", "cacheside:counter:dirty:views"]).await;
    assert_eq!(dirty, vec!["product:5:views".to_string()]);

    // The drain flushes what is pending: the row gains exactly 11.
    let before = db_views(&pg, 5..=5).await;
    proxy.shutdown().await;
    assert_eq!(db_views(&pg, 5..=5).await, before + 11);
    assert_eq!(
        query::<Option<i64>>(&mut direct, &["GET", &pending("product:5:views")]).await,
        None
    );
    assert_eq!(query::<i64>(&mut direct, &["HLEN", MOVES]).await, 0);
}

async fn read_line(raw: &mut support::Raw) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(raw.read_exact_len(1).await);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The views of products 1..=KEYS get 100,000 INCRs from 16 tasks through two sidecar
/// processes, A and B. A is SIGKILLed four times while B's clients keep writing and both
/// flushers run every 20 ms (so A dies between or during its flushes), and restarted each time.
/// No INCR through A is in flight when it dies, so every INCR sent is acknowledged, and the
/// database must gain exactly that many views.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deltas_reach_postgres_exactly_once_across_two_sidecars_and_kills() {
    const KEYS: i32 = 20;
    const PER_TASK_A: usize = 1_250; // x 8 tasks x 5 rounds = 50,000
    const PER_TASK_B: usize = 6_250; // x 8 tasks = 50,000
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 1..=KEYS).await;
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut a = Sidecar::start(&redis, &pg, "20ms");
    let b = Sidecar::start(&redis, &pg, "20ms");

    let run = |url: String, n: usize, seed: usize, acked: Arc<std::sync::atomic::AtomicU64>| {
        tokio::spawn(async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for i in 0..n {
                let key = format!("product:{}:views", 1 + (i * 7 + seed) % KEYS as usize);
                let r: redis::RedisResult<i64> =
                    redis::cmd("INCR").arg(&key).query_async(&mut c).await;
                r.unwrap_or_else(|e| panic!("INCR {key}: {e}"));
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let b_tasks: Vec<_> = (0..8)
        .map(|t| run(b.url(), PER_TASK_B, t, acked.clone()))
        .collect();
    let mut left_recorded = 0;
    for round in 0..5 {
        let a_tasks: Vec<_> = (0..8)
            .map(|t| run(a.url(), PER_TASK_A, 100 + t + round, acked.clone()))
            .collect();
        for t in a_tasks {
            t.await.expect("A's clients acknowledged");
        }
        if round < 4 {
            a.kill();
            // A move A took but had not finished applying: left for recovery.
            let mut direct = redis.direct().await;
            left_recorded += query::<i64>(&mut direct, &["HLEN", MOVES]).await;
            a = Sidecar::start(&redis, &pg, "20ms");
        }
    }
    for t in b_tasks {
        t.await.expect("B's clients acknowledged");
    }
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed) as i64;
    assert_eq!(acked, 100_000);
    let mut direct = redis.direct().await;
    let mut in_redis = 0;
    for id in 1..=KEYS {
        in_redis += query::<Option<i64>>(&mut direct, &["GET", &format!("product:{id}:views")])
            .await
            .unwrap_or(0);
    }
    assert_eq!(
        in_redis, acked,
        "Redis counted every acknowledged INCR once"
    );
    let synced = eventually(Duration::from_secs(60), async || {
        db_views(&pg, 1..=KEYS).await - before == acked
    })
    .await;
    let got = db_views(&pg, 1..=KEYS).await - before;
    eprintln!("moves recorded but not applied when A was killed: {left_recorded}; database gained {got} of {acked}");
    assert!(
        synced,
        "the database gained {got} views for {acked} acknowledged INCRs"
    );
    // Nothing is left pending or recorded, and nothing more arrives.
    assert!(
        eventually(Duration::from_secs(30), async || {
            query::<i64>(&mut direct, &["HLEN", MOVES]).await == 0
                && query::<i64>(&mut direct, &["SCARD", "cacheside:counter:dirty:views"]).await == 0
        })
        .await
    );
    drop((a, b));
    assert_eq!(db_views(&pg, 1..=KEYS).await - before, acked);
}

/// A sidecar that died after taking a delta from Redis, before its transaction committed, left
/// the move recorded: the next sidecar to start applies it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_taken_but_not_applied_before_a_crash_is_applied_at_next_start() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 7..=7).await;
    let mut direct = redis.direct().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let _: () = query(
        &mut direct,
        &[
            "HSET",
            MOVES,
            "deadbeef01",
            &format!("{now}:42:product:7:views"),
        ],
    )
    .await;
    let proxy =
        Proxy::start_with(&redis.url(), |c| configure(c, &pg, Human::secs(3600), None)).await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            query::<i64>(&mut direct, &["HLEN", MOVES]).await == 0
        })
        .await,
        "the record is cleaned up"
    );
    assert_eq!(db_views(&pg, 7..=7).await, before + 42);
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "cacheside_counter_flushes_total{counter=\"views\",outcome=\"applied\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "cacheside_counter_flushed_total{counter=\"views\"}"),
        Some(42.0)
    );
}

/// A sidecar that died after its transaction committed, before it deleted the record in Redis:
/// the next one finds the move's id in `cacheside_counter_flushes` and does not apply it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_applied_before_a_crash_is_not_applied_again() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    pg.execute(
        "CREATE TABLE cacheside_counter_flushes (id text PRIMARY KEY, counter text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO cacheside_counter_flushes (id, counter) VALUES ('deadbeef02', 'views');
         UPDATE products SET views = views + 42 WHERE id = 8;",
    );
    let before = db_views(&pg, 8..=8).await;
    let mut direct = redis.direct().await;
    let _: () = query(
        &mut direct,
        &["HSET", MOVES, "deadbeef02", "1:42:product:8:views"],
    )
    .await;
    let proxy =
        Proxy::start_with(&redis.url(), |c| configure(c, &pg, Human::secs(3600), None)).await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            query::<i64>(&mut direct, &["HLEN", MOVES]).await == 0
        })
        .await,
        "the record is cleaned up"
    );
    assert_eq!(
        db_views(&pg, 8..=8).await,
        before,
        "applied once, not twice"
    );
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "cacheside_counter_flushes_total{counter=\"views\",outcome=\"duplicate\"}"
        ),
        Some(1.0)
    );
}

/// `flush_threshold`: a key whose deltas reach it is flushed at once, long before `flush_every`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_flush_threshold_is_flushed_early() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 9..=9).await;
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, Human::secs(3600), Some(100))
    })
    .await;
    let mut c = proxy.client().await;
    for _ in 0..99 {
        let _: i64 = query(&mut c, &["INCR", "product:9:views"]).await;
    }
    let _: i64 = query(&mut c, &["INCRBY", "product:9:views", "1"]).await;
    assert!(
        eventually(Duration::from_secs(30), async || db_views(&pg, 9..=9).await
            == before + 100)
        .await,
        "100 views flushed without waiting an hour"
    );
}

/// A key whose `flush_query` keeps failing (here a CHECK constraint its row would break) is
/// retried every cycle, while the other keys' deltas keep reaching the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_statement_fails_does_not_hold_up_the_others() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(
            "CREATE TABLE capped (id int PRIMARY KEY, n int NOT NULL CHECK (n < 100));
             INSERT INTO capped VALUES (1, 0), (2, 0);",
        )
        .await
        .expect("create the capped table");
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.postgres.url = Some(pg.url());
        c.counter = vec![cacheside::config::CounterConfig {
            name: Some("capped".into()),
            key: "capped:{id}".into(),
            flush_query: "UPDATE capped SET n = n + $2 WHERE id = $1".into(),
            flush_every: Human::millis(50),
            flush_threshold: None,
            sweep_every: cacheside::config::CounterConfig::default_sweep_every(),
        }];
    })
    .await;
    let n = async |id: i32| -> i32 {
        let c = pg.client().await;
        let row = c
            .query_one("SELECT n FROM capped WHERE id = $1", &[&id])
            .await
            .expect("read n");
        row.get(0)
    };
    let mut c = proxy.client().await;
    // Key 1's statement fails (500 breaks the CHECK); key 2's succeeds, cycle after cycle.
    let _: i64 = query(&mut c, &["INCRBY", "capped:1", "500"]).await;
    for round in 1..=3 {
        let _: i64 = query(&mut c, &["INCR", "capped:2"]).await;
        assert!(
            eventually(Duration::from_secs(20), async || n(2).await == round).await,
            "key 2's delta {round} reached the database while key 1 fails"
        );
        let _: i64 = query(&mut c, &["INCRBY", "capped:1", "1"]).await;
    }
    assert_eq!(n(1).await, 0, "key 1's statement never succeeds");
    let text = proxy.admin_get("/metrics").await.1;
    let errors = metric(
        &text,
        "cacheside_counter_flushes_total{counter=\"capped\",outcome=\"error\"}",
    );
    assert!(errors.unwrap_or(0.0) >= 1.0, "{text}");
    // Key 1's later deltas wait in Redis as one pending number, not as a record per cycle.
    let moves: std::collections::HashMap<String, String> =
        query(&mut c, &["HGETALL", "cacheside:counter:moves:capped"]).await;
    assert_eq!(moves.len(), 1, "one failing record for key 1: {moves:?}");
    support::assert_no_panics();
}
