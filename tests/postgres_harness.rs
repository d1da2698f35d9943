//! The real-PostgreSQL harness itself: seeding, query counting from Postgres's own statistics,
//! stop/restart.

mod support;

use support::postgres::{
    Counter, PgServer, CATEGORIES, PRODUCTS_PER_CATEGORY, PRODUCT_COUNT, USERS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_seeded_products_and_users() {
    let pg = PgServer::start();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/products_db", pg.port)
    );
    let client = pg.client().await;

    let total: i64 = client
        .query_one("SELECT count(*) FROM products", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, PRODUCT_COUNT);

    let rows = client
        .query(
            "SELECT category, count(*) FROM products GROUP BY category ORDER BY category",
            &[],
        )
        .await
        .unwrap();
    let mut expected: Vec<&str> = CATEGORIES.to_vec();
    expected.sort_unstable();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        expected
            .iter()
            .map(|c| (c.to_string(), PRODUCTS_PER_CATEGORY))
            .collect::<Vec<_>>()
    );

    let row = client
        .query_one(
            "SELECT name, price::text, category, views, created_at = updated_at \
             FROM products WHERE id = $1",
            &[&7i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Product 7");
    assert_eq!(row.get::<_, String>(1), "14.99");
    assert_eq!(row.get::<_, String>(2), CATEGORIES[6 % 5]);
    assert_eq!(row.get::<_, i32>(3), 259);
    assert!(row.get::<_, bool>(4));

    let users = client
        .query("SELECT id::text, email FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = users.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, String)> = USERS
        .iter()
        .map(|(id, email)| (id.to_string(), email.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// Runs a distinctive statement 3 times (prepared with parameters, and as simple queries with
/// different literals) and expects exactly 3 from the server's own counters.
fn exact_counts(pg: &PgServer) {
    const PROBE: &str = "harness_probe_id";
    pg.reset_stats();
    assert_eq!(pg.query_count(PROBE), 0);
    for id in [3, 4, 5] {
        pg.execute(&format!(
            "SELECT id AS harness_probe_id FROM products WHERE id = {id}"
        ));
    }
    assert_eq!(pg.query_count(PROBE), 3);
    assert_eq!(pg.query_count("no_such_statement_fragment"), 0);

    pg.reset_stats();
    assert_eq!(pg.query_count(PROBE), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = pg.client().await;
        for id in [10i32, 11] {
            let row = client
                .query_one(
                    "SELECT name AS harness_probe_id FROM products WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), format!("Product {id}"));
        }
    });
    assert_eq!(pg.query_count(PROBE), 2);
}

#[test]
fn query_count_counts_exactly_the_statements_run() {
    let pg = PgServer::start();
    assert_eq!(
        pg.counter(),
        Counter::StatStatements,
        "pg_stat_statements ships with postgresql-15 and should be used"
    );
    exact_counts(&pg);
}

#[test]
fn query_count_fallback_reads_the_statement_log() {
    let pg = PgServer::start_counting_from_log();
    assert_eq!(pg.counter(), Counter::StatementLog);
    exact_counts(&pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_keep_port_and_data() {
    let mut pg = PgServer::start();
    let url = pg.url();
    pg.execute("UPDATE products SET name = 'Renamed', updated_at = now() WHERE id = 1");

    pg.stop();
    assert!(!pg.is_running());
    let down = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    assert!(down.is_err(), "connecting to a stopped server must fail");

    pg.restart();
    assert!(pg.is_running());
    assert_eq!(pg.url(), url);
    let client = pg.client().await;
    let name: String = client
        .query_one("SELECT name FROM products WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Renamed");

    // restart() while running stops first.
    pg.restart();
    let count: i64 = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM products", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, PRODUCT_COUNT);
}
