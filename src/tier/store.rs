//! Standalone mode: with no upstream configured, a moka cache is the store, answering Redis
//! string commands with Redis 7's semantics and reply bytes.
//!
//! Entries carry an absolute deadline (Unix milliseconds, as Redis keeps it). moka evicts on that
//! deadline through [`Expiry`], but its expiry is lazy, so every read also treats a passed
//! deadline as a missing key. Memory is bounded by weight (key + value + [`ENTRY_OVERHEAD`]),
//! evicting like Redis's `allkeys-*` policies under `maxmemory`.
//!
//! Atomicity: every write, including plain SET and DEL, runs inside moka's
//! `entry(key).and_compute_with`, which serialises computations per key with moka's own key lock.
//! A plain `insert`/`remove` does not take that lock, so mixing them with compute would let a
//! SET or DEL land between an INCR's read and write and be lost; routing all writes through
//! compute makes each command atomic per key with no lock table of our own (a striped mutex
//! array would serialise unrelated keys that share a stripe). Reads are lock-free snapshots.
//! Multi-key commands (MSET, DEL of several keys, FLUSHDB) are atomic per key, not as a whole.

mod args;
mod expire;
mod float;
mod info;
mod strings;
#[cfg(test)]
mod tests;

use crate::protocol::reply::{self, Proto};
use crate::protocol::request::encode_array_header;
use crate::protocol::Request;
use args::{deadline, parse_i64, ExpireKind, NOT_INTEGER};
use bytes::{BufMut, Bytes, BytesMut};
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::Expiry;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes counted per entry beyond its key and value (moka's node and our `Value`).
const ENTRY_OVERHEAD: usize = 64;
/// Redis's `proto-max-bulk-len`: the longest string APPEND may build.
const MAX_STRING: usize = 512 * 1024 * 1024;

const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";

/// Commands answered here, as Redis names them, with Redis's arity (negative: at least).
const COMMANDS: &[(&str, i32)] = &[
    ("get", 2),
    ("set", -3),
    ("setex", 4),
    ("psetex", 4),
    ("setnx", 3),
    ("getset", 3),
    ("mget", -2),
    ("mset", -3),
    ("del", -2),
    ("unlink", -2),
    ("exists", -2),
    ("expire", -3),
    ("pexpire", -3),
    ("expireat", -3),
    ("pexpireat", -3),
    ("ttl", 2),
    ("pttl", 2),
    ("expiretime", 2),
    ("pexpiretime", 2),
    ("persist", 2),
    ("incr", 2),
    ("decr", 2),
    ("incrby", 3),
    ("decrby", 3),
    ("incrbyfloat", 3),
    ("append", 3),
    ("strlen", 2),
    ("getdel", 2),
    ("getex", -2),
    ("dbsize", 1),
    ("flushdb", -1),
    ("flushall", -1),
    ("info", -1),
];

/// Which entries moka evicts first when the store is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    TinyLfu,
    Lru,
}

/// One key's value and its deadline in Unix milliseconds (`None`: no expiry).
#[derive(Debug, Clone)]
struct Value {
    data: Bytes,
    deadline: Option<i64>,
}

impl Value {
    fn new(data: Bytes, deadline: Option<i64>) -> Self {
        Self { data, deadline }
    }

    fn live_at(&self, now: i64) -> bool {
        self.deadline.is_none_or(|d| d > now)
    }
}

/// Tells moka each entry's remaining time, from the deadline stored in the value itself.
struct Deadlines;

impl Deadlines {
    fn remaining(value: &Value) -> Option<Duration> {
        let d = value.deadline?;
        Some(Duration::from_millis(
            d.saturating_sub(now_ms()).max(0) as u64
        ))
    }
}

impl Expiry<Bytes, Value> for Deadlines {
    fn expire_after_create(&self, _: &Bytes, value: &Value, _: Instant) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_read(
        &self,
        _: &Bytes,
        value: &Value,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        value: &Value,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value)
    }
}

/// Wall-clock Unix milliseconds, Redis's `mstime()`.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The in-process store used when cacheside runs without an upstream.
#[derive(Clone)]
pub struct Store {
    cache: Cache<Bytes, Value>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entry_count())
            .field("weighted_size", &self.weighted_size())
            .finish()
    }
}

impl Store {
    /// `max_bytes`: capacity by weight (key + value + ~64 bytes overhead per entry).
    pub fn new(max_bytes: u64, policy: Policy) -> Self {
        let policy = match policy {
            Policy::TinyLfu => EvictionPolicy::tiny_lfu(),
            Policy::Lru => EvictionPolicy::lru(),
        };
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(policy)
            .weigher(|k: &Bytes, v: &Value| {
                u32::try_from(k.len() + v.data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(Deadlines)
            .build();
        Self { cache }
    }

    /// Whether `name` (any case) is a command this store answers.
    pub fn supports(name: &[u8]) -> bool {
        command(name).is_some()
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes, by the weigher.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// FLUSHDB/FLUSHALL: drops every entry (moka reclaims them on its next maintenance run).
    pub async fn flush(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }

    /// Runs one command (args[0] is the name; `supports` was true) and returns the complete RESP
    /// reply bytes in the client's protocol.
    pub async fn execute(&self, req: &Request, proto: Proto) -> Bytes {
        let mut out = BytesMut::new();
        let Some((name, arity)) = command(req.arg(0)) else {
            unknown(&mut out, req);
            return out.freeze();
        };
        let argc = req.argc() as i64;
        let arity = i64::from(arity);
        if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
            arity_error(&mut out, name);
            return out.freeze();
        }
        let o = &mut out;
        match name {
            "get" => match self.read(req.arg(1)).await {
                Some(v) => reply::bulk(o, &v.data),
                None => reply::null(o, proto),
            },
            "mget" => {
                encode_array_header(o, req.argc() - 1);
                for i in 1..req.argc() {
                    match self.read(req.arg(i)).await {
                        Some(v) => reply::bulk(o, &v.data),
                        None => reply::null(o, proto),
                    }
                }
            }
            "set" => self.set(req, proto, o).await,
            "setex" | "psetex" => {
                let kind = if name == "setex" {
                    ExpireKind::Ex
                } else {
                    ExpireKind::Px
                };
                match deadline(req.arg(2), kind, name, now_ms()) {
                    Ok(at) => {
                        let v = Value::new(owned(req, 3), Some(at));
                        self.modify(req.arg(1), |_| (Op::Put(v), ())).await;
                        o.put_slice(reply::OK);
                    }
                    Err(e) => reply::error(o, &e),
                }
            }
            "setnx" => {
                let v = Value::new(owned(req, 2), None);
                let n = self
                    .modify(req.arg(1), |cur| match cur {
                        Some(_) => (Op::Nop, 0),
                        None => (Op::Put(v), 1),
                    })
                    .await;
                reply::integer(o, n);
            }
            "getset" => {
                let v = Value::new(owned(req, 2), None);
                let old = self.modify(req.arg(1), |cur| (Op::Put(v), cur)).await;
                bulk_or_null(o, old, proto);
            }
            "mset" => {
                if req.argc().is_multiple_of(2) {
                    arity_error(o, name);
                } else {
                    for i in (1..req.argc()).step_by(2) {
                        let v = Value::new(owned(req, i + 1), None);
                        self.modify(req.arg(i), |_| (Op::Put(v), ())).await;
                    }
                    o.put_slice(reply::OK);
                }
            }
            "del" | "unlink" => {
                let mut n = 0;
                for i in 1..req.argc() {
                    n += self
                        .modify(req.arg(i), |cur| match cur {
                            Some(_) => (Op::Remove, 1),
                            None => (Op::Nop, 0),
                        })
                        .await;
                }
                reply::integer(o, n);
            }
            "exists" => {
                let mut n = 0;
                for i in 1..req.argc() {
                    n += i64::from(self.read(req.arg(i)).await.is_some());
                }
                reply::integer(o, n);
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => self.expire(req, name, o).await,
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                let n = match self.read(req.arg(1)).await {
                    None => -2,
                    Some(Value { deadline: None, .. }) => -1,
                    Some(Value {
                        deadline: Some(at), ..
                    }) => {
                        let absolute = name.ends_with("expiretime");
                        let ms = if absolute {
                            at
                        } else {
                            at.saturating_sub(now_ms())
                        }
                        .max(0);
                        if name.starts_with('p') {
                            ms
                        } else {
                            // Rounded to the nearest second; i128 as `ms` may be i64::MAX.
                            ((i128::from(ms) + 500) / 1000) as i64
                        }
                    }
                };
                reply::integer(o, n);
            }
            "persist" => {
                let n = self
                    .modify(req.arg(1), |cur| match cur {
                        Some(v) if v.deadline.is_some() => (Op::Put(Value::new(v.data, None)), 1),
                        _ => (Op::Nop, 0),
                    })
                    .await;
                reply::integer(o, n);
            }
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match name {
                    "incr" => Ok(1),
                    "decr" => Ok(-1),
                    _ => match parse_i64(req.arg(2)) {
                        None => Err(NOT_INTEGER),
                        Some(i64::MIN) if name == "decrby" => Err("ERR decrement would overflow"),
                        Some(n) if name == "decrby" => Ok(-n),
                        Some(n) => Ok(n),
                    },
                };
                match by {
                    Ok(by) => self.incr(req.arg(1), by, o).await,
                    Err(e) => reply::error(o, e),
                }
            }
            "incrbyfloat" => match float::parse(req.arg(2)) {
                Some(by) => self.incr_float(req.arg(1), by, o).await,
                None => reply::error(o, NOT_FLOAT),
            },
            "append" => {
                let tail = req.arg(2);
                let len = self
                    .modify(req.arg(1), |cur| {
                        let Some(cur) = cur else {
                            let v = Value::new(Bytes::copy_from_slice(tail), None);
                            return (Op::Put(v), Ok(tail.len()));
                        };
                        let len = cur.data.len() + tail.len();
                        if len > MAX_STRING {
                            let e = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
                            return (Op::Nop, Err(e));
                        }
                        let mut data = BytesMut::with_capacity(len);
                        data.put_slice(&cur.data);
                        data.put_slice(tail);
                        (Op::Put(Value::new(data.freeze(), cur.deadline)), Ok(len))
                    })
                    .await;
                match len {
                    Ok(len) => reply::integer(o, len as i64),
                    Err(e) => reply::error(o, e),
                }
            }
            "strlen" => {
                let len = self.read(req.arg(1)).await.map_or(0, |v| v.data.len());
                reply::integer(o, len as i64);
            }
            "getdel" => {
                let old = self
                    .modify(req.arg(1), |cur| match cur {
                        Some(v) => (Op::Remove, Some(v)),
                        None => (Op::Nop, None),
                    })
                    .await;
                bulk_or_null(o, old, proto);
            }
            "getex" => self.getex(req, proto, o).await,
            "dbsize" => {
                self.cache.run_pending_tasks().await;
                reply::integer(o, self.entry_count() as i64);
            }
            "flushdb" | "flushall" => {
                let ok = req.argc() == 1
                    || (req.argc() == 2 && (req.arg_is(1, "SYNC") || req.arg_is(1, "ASYNC")));
                if ok {
                    self.flush().await;
                    o.put_slice(reply::OK);
                } else {
                    reply::error(o, SYNTAX);
                }
            }
            "info" => self.info(req, proto, o).await,
            _ => unknown(o, req),
        }
        out.freeze()
    }

    /// The key's value, unless missing or past its deadline.
    async fn read(&self, key: &[u8]) -> Option<Value> {
        let v = self.cache.get(key).await?;
        v.live_at(now_ms()).then_some(v)
    }

    /// Runs `f` on the key's live value under moka's per-key compute lock, applies the op it
    /// returns (a value whose deadline has passed is removed, not stored) and returns its result.
    async fn modify<R>(&self, key: &[u8], f: impl FnOnce(Option<Value>) -> (Op<Value>, R)) -> R {
        let mut result = None;
        // Keys are copied: a slice of the request would pin the client's whole read buffer.
        let key = Bytes::copy_from_slice(key);
        self.cache
            .entry(key)
            .and_compute_with(|entry| {
                let now = now_ms();
                let live = entry.map(|e| e.into_value()).filter(|v| v.live_at(now));
                let (op, r) = f(live);
                result = Some(r);
                std::future::ready(match op {
                    Op::Put(v) if !v.live_at(now) => Op::Remove,
                    op => op,
                })
            })
            .await;
        result.expect("and_compute_with calls its closure exactly once")
    }
}

/// The command's Redis name and arity, for a name in any case.
fn command(name: &[u8]) -> Option<(&'static str, i32)> {
    COMMANDS
        .iter()
        .copied()
        .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
}

fn arity_error(o: &mut BytesMut, name: &str) {
    reply::error(
        o,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

/// Redis's reply to a command it does not know (callers check `supports` first).
fn unknown(o: &mut BytesMut, req: &Request) {
    let name = String::from_utf8_lossy(req.arg(0));
    reply::error(
        o,
        &format!("ERR unknown command '{name}', with args beginning with: "),
    );
}

/// Argument `i` copied out of the request: stored values must not pin the client's read buffer.
fn owned(req: &Request, i: usize) -> Bytes {
    Bytes::copy_from_slice(req.arg(i))
}

fn bulk_or_null(o: &mut BytesMut, v: Option<Value>, proto: Proto) {
    match v {
        Some(v) => reply::bulk(o, &v.data),
        None => reply::null(o, proto),
    }
}
