//! History checkers for the hot tier's promise "no stale read after a write" on one
//! redis-server, in both coherence modes (the checker: `support/coherence.rs`).

mod support;

use support::{coherence, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_broadcast() {
    let redis = RedisServer::start();
    coherence::check(&redis.url(), "broadcast", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_tracking() {
    let redis = RedisServer::start();
    coherence::check(&redis.url(), "tracking", false).await;
}
