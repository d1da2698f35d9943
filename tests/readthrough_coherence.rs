//! History checker for read-through with a hot tier (the seeds' update flow) on one
//! redis-server, in both coherence modes (the checker: `support/coherence.rs`).

mod support;

use support::postgres::PgServer;
use support::{coherence, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_with_tracking() {
    let (redis, pg) = (RedisServer::start(), PgServer::start());
    coherence::check_readthrough(&redis.url(), &pg, Some("tracking")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_with_broadcast() {
    let (redis, pg) = (RedisServer::start(), PgServer::start());
    coherence::check_readthrough(&redis.url(), &pg, Some("broadcast")).await;
}
