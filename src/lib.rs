//! cacheside: a transparent Redis-protocol caching proxy sidecar.
//!
//! Applications point their ordinary Redis client at cacheside; it forwards every command to the
//! upstream Redis, pipelined and multiplexed over a few shared connections, and keeps per-client
//! state (transactions, pub/sub, blocking commands) on connections pinned to that client.
//!
//! # Layout
//!
//! In the order a request travels:
//!
//! - [`config`]: proxy.toml + `CACHESIDE_*` env + flags, validated before anything binds
//!   (`upstream.rs`: URL, credentials, TLS, replicas; `loader.rs`: `[postgres]` and mappings;
//!   `strategy.rs`: write-through keys; `deferred.rs`: counters and write-behind).
//! - [`server`]: accept loop with a connection limit; per client a session (read, parse, route;
//!   its pinned path in `session/pinned.rs`, runs of requests in `session/run.rs`, its end of the
//!   reply queue in `session/queue.rs`) and a writer (ordered replies, one write per batch;
//!   reads that need loads from one read of the client complete together), polled together
//!   over the queue of `queue.rs`.
//! - [`protocol`]: request parsing, the command table (`command/table.rs`), the one reply reader
//!   ([`protocol::scan`]: iterative framing and typed views) and reply building. No I/O.
//! - [`router`]: where each command is answered: locally (including CLIENT LIST/INFO/KILL about
//!   cacheside's own clients, [`router::clients`], and the operator's `CACHESIDE` commands,
//!   `operator.rs`; per-client state in `state.rs`), from the hot tier or a load
//!   ([`router::fill`]; loads in `fill/load.rs` and `fill/batch.rs`), on a shared upstream
//!   connection, or on the client's pinned connection.
//! - [`tier::hot`]: the in-process tier and its coherence (`front.rs`: the sharded read map in
//!   front of moka, `write.rs`: write guards, `fill.rs`: stamped fills, `fence.rs`: pending
//!   invalidations, `broadcast.rs` and `subscribe.rs`: announcing and hearing writes, `channels.rs`:
//!   a channel per key namespace, `pack.rs`: packed announcements, `relay.rs`: one sidecar
//!   announcing for the fleet; on a Redis Cluster, broadcast on a shard channel); [`tier::store`]: standalone mode (`strings.rs`,
//!   `expire.rs`, `info.rs` by command family).
//! - [`tier::redis`]: the upstream: pipelined shared pools, pinned connections, reconnects, the
//!   handshake (AUTH with a password re-read from its file on every connect), ElastiCache IAM
//!   tokens and re-authentication ([`tier::redis::iam`]); in cluster mode
//!   ([`tier::redis::cluster`]) the slot map (`topology.rs`), hash slots (`slot.rs`), each
//!   request planned and merged (`split.rs`) and each batch queued per node (`batch.rs`), behind
//!   the same `send`; with `upstream.read_from`, read-only commands to a reader endpoint; a
//!   `-READONLY` after a failover reconnects and resends (`pool/`: the supervisor, and the read
//!   and write loops in `pool/wire.rs`; the pinned relay in `pinned/relay.rs`, and a
//!   transaction redirected whole run again where it belongs, a command under WATCH run where
//!   its redirection says, in `pinned/txn.rs`; what EXEC answers under a watch whose slot
//!   moved is the session's, `server/session/multi.rs`).
//! - [`transport`]: plain TCP or TLS behind one stream type, for the upstream (`rediss://`) and
//!   for the client listener.
//! - [`loader`]: read-through from PostgreSQL for `[[mapping]]` keys (`flight.rs`: one load per
//!   key in a sidecar, shared only with reads that began before it read; `lease.rs`: fill leases
//!   across sidecars; `batch.rs`: several keys in one query; `write.rs`: write-through
//!   statements; `refresh.rs`: refresh-ahead reloads; `stale.rs`: stale-if-error copies;
//!   `notify.rs`: row changes heard from PostgreSQL evict their keys).
//! - [`strategy`]: writes of mapped keys that cacheside runs itself (`through.rs`: write-through
//!   SET/HSET, database first; `delete.rs`: DEL/UNLINK with delete statements and related keys;
//!   `related.rs`: the keys a mapping's `invalidates` templates name; `set_args.rs`: the SET
//!   options accepted), awaited by the session before the client's next request; and the
//!   strategies that rewrite the client's command into a script plus a background worker:
//!   `[[counter]]` INCRs that also record the delta, moved to PostgreSQL exactly once
//!   (`counter/flush.rs`, `counter/apply.rs`); write-behind SETs queued in a Redis Stream and
//!   applied last-write-wins (`behind/scripts.rs`: the write and its XADD; `behind/worker.rs`,
//!   `behind/entries.rs`, `behind/apply.rs`; `behind/gauges.rs`: the queue's depth and lag,
//!   which past `write_behind_max_lag` refuse new writes; on a cluster one stream per slot,
//!   `behind/cluster.rs` and `behind/slots.rs`: which slots a worker reads, and sweeps; slots
//!   are marked by writes in `marks.rs`).
//! - [`error`]: typed errors and the one function that maps them to replies.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin listener (/startupz /livez /readyz
//!   /metrics, POST /quitquitquit).
//! - [`app`], [`shutdown`]: wiring, and the drain on SIGTERM.
//! - [`reload`]: live config reload on SIGHUP or a change of the config file (`watch.rs`: the
//!   signal and the directory watch; `diff.rs`: settings that need a restart); swaps the hot
//!   tier's rules (`tier/hot/rules.rs`) and the mappings, flushing what a changed mapping
//!   filled (`loader/reload.rs`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub mod loader;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod strategy;
pub mod tier;
pub mod transport;
