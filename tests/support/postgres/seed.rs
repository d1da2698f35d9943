//! The seeded `products_db`: the schema and deterministic rows every server starts with.

use super::{block_on, connect, Counter, PgServer, DATABASE};

/// Rows in `products` (ids 1..=200).
pub const PRODUCT_COUNT: i64 = 200;
/// `products.category` values; product `id` has category `CATEGORIES[(id - 1) % 5]`.
pub const CATEGORIES: [&str; 5] = ["electronics", "books", "clothing", "home", "toys"];
/// Rows per category.
pub const PRODUCTS_PER_CATEGORY: i64 = PRODUCT_COUNT / CATEGORIES.len() as i64;
/// `users` rows as (id, email); Carol is inactive, Dave has a NULL name and birth date.
pub const USERS: [(&str, &str); 5] = [
    ("00000000-0000-4000-8000-000000000001", "alice@example.com"),
    ("00000000-0000-4000-8000-000000000002", "bob@example.com"),
    ("00000000-0000-4000-8000-000000000003", "carol@example.com"),
    ("00000000-0000-4000-8000-000000000004", "dave@example.com"),
    ("00000000-0000-4000-8000-000000000005", "eve@example.com"),
];

/// Schema and data loaded into `products_db` (deterministic: no `now()`, no randomness).
/// Product `id`: name `'Product <id>'`, price `(id % 50) * 2 + 0.99`, views `(id * 37) % 1000`,
/// created_at = updated_at = `2024-01-01 00:00 UTC + id hours`.
pub const SEED_SQL: &str = "
CREATE TABLE products (
    id         int PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(10,2) NOT NULL,
    category   text NOT NULL,
    views      int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_category_idx ON products (category);
CREATE TABLE users (
    id     uuid PRIMARY KEY,
    email  text UNIQUE NOT NULL,
    name   text,
    active bool NOT NULL DEFAULT true,
    born   date
);
INSERT INTO products (id, name, price, category, views, created_at, updated_at)
SELECT g,
       'Product ' || g,
       (g % 50) * 2 + 0.99,
       (ARRAY['electronics', 'books', 'clothing', 'home', 'toys'])[1 + (g - 1) % 5],
       (g * 37) % 1000,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 200) AS g;
INSERT INTO users (id, email, name, active, born) VALUES
    ('00000000-0000-4000-8000-000000000001', 'alice@example.com', 'Alice', true,  '1990-01-15'),
    ('00000000-0000-4000-8000-000000000002', 'bob@example.com',   'Bob',   true,  '1985-06-30'),
    ('00000000-0000-4000-8000-000000000003', 'carol@example.com', 'Carol', false, '1979-11-02'),
    ('00000000-0000-4000-8000-000000000004', 'dave@example.com',  NULL,    true,  NULL),
    ('00000000-0000-4000-8000-000000000005', 'eve@example.com',   'Eve',   true,  '2000-02-29');
ANALYZE;
";

impl PgServer {
    pub(super) fn seed(&self) {
        let admin_url = self.url_for("postgres");
        let url = self.url();
        let pgss = self.counter == Counter::StatStatements;
        block_on(async move {
            let admin = connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
            admin
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {DATABASE}: {e}"));
            let client = connect(&url)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            if pgss {
                client
                    .batch_execute(
                        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                         SELECT pg_stat_statements_reset();",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_stat_statements: {e}"));
            }
            client
                .batch_execute(SEED_SQL)
                .await
                .unwrap_or_else(|e| panic!("load the seed schema and data: {e}"));
        });
        self.reset_stats();
    }
}
