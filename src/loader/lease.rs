//! Fill leases in Redis: taking one (and re-reading the key with it), filling under it with a
//! compare-and-set script, waiting for another sidecar's fill, and the cleanup a write sends so
//! that a load in flight gives way.

use super::flight::Lead;
use super::{negative_key, params, prefixed, LoadError, Loaded, Loader, Mapping, Shape};
use crate::error::UpstreamError;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::encode_command;
use crate::protocol::scan::{integer, Value};
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE_PREFIX: &[u8] = b"cacheside:lease:";
/// How often a sidecar that lost the lease looks for the winner's fill.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// Writes the loaded value only while the lease still holds our token, and releases it.
/// KEYS: key, lease, negative. ARGV: token, kind (v|n|h), value, ttl ms, field, value, ...
const FILL_SCRIPT: &str = r#"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] == 'v' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'n' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1"#;

/// FILL_SCRIPT for mappings with `stale_if_error`: the value also goes to its stale copy.
/// KEYS: key, lease, negative, stale copy. ARGV: token, kind, value, ttl ms, stale ttl ms,
/// field, value, ...
const FILL_STALE_SCRIPT: &str = r#"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] == 'v' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[5])
elseif ARGV[2] == 'n' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  redis.call('DEL', KEYS[4])
else
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('HSET', KEYS[4], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1"#;

/// Releases a lease only while it still holds our token. KEYS: lease. ARGV: token.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1";

/// The command that gives back our lease on `key` (a load that failed).
pub(super) fn release_command(key: &[u8], token: &[u8]) -> Bytes {
    encode_command(&[
        &b"EVAL"[..],
        RELEASE_SCRIPT.as_bytes(),
        b"1",
        &lease_key(key),
        token,
    ])
}

pub(super) fn lease_key(key: &[u8]) -> Bytes {
    prefixed(LEASE_PREFIX, key)
}

impl Loader {
    /// For a write to `key`: the commands that make any load in flight for it give way (its
    /// lease is deleted) and forget a remembered "not found". `None` for unmapped keys.
    pub fn write_cleanup(&self, key: &[u8], deleting: bool) -> Option<Bytes> {
        let (m, _) = self.resolve(key)?;
        let mut del = vec![Bytes::from_static(b"DEL"), lease_key(key)];
        // A queued write-behind DEL leaves its "not found" marker (see `strategy::behind`).
        if !(deleting && m.write.queued_delete) {
            del.push(negative_key(key));
        }
        if m.stale_if_error.is_some() {
            // A stale copy older than this write must never be answered after it.
            del.push(super::stale::stale_key(key));
        }
        Some(encode_command(&del))
    }

    /// Loads as the leader; with the value, whether it is Redis's (found there, or filled by
    /// us under our lease), and the ticket taken just before the read that produced it.
    pub(super) async fn lead(
        &self,
        m: &Arc<Mapping>,
        key: &Bytes,
        captures: &[Bytes],
        upstream_down: bool,
    ) -> Result<Lead, LoadError> {
        let params = self.params(m, captures).await?;
        let Some(upstream) = self.upstream.as_ref().filter(|_| !upstream_down) else {
            m.metrics.degraded.inc();
            return self.query_unkept(m, &params).await;
        };
        let token = new_token();
        // The key is read again right after the lease is taken: holding a free lease means any
        // earlier holder has already filled (or given up), and its fill is visible to that read.
        let mut acquire = self.take_lease(m, key, &token);
        acquire.extend_from_slice(&encode_command(&[&b"EXISTS"[..], &negative_key(key)]));
        let read_at = self.ticket();
        match call(upstream, Bytes::from(acquire), 3).await {
            Err(_) => {
                m.metrics.degraded.inc();
                self.query_unkept(m, &params).await
            }
            Ok(r) if r[0].starts_with(b"+OK") => {
                let filled = from_reply(&r[1])
                    .or_else(|| r[2].starts_with(b":1").then_some(Loaded::NotFound));
                if let Some(found) = filled {
                    let _ =
                        call(upstream, encode_command(&[&b"DEL"[..], &lease_key(key)]), 1).await;
                    if found == Loaded::NotFound {
                        m.metrics.negative_hits.inc();
                    }
                    return Ok(Lead {
                        loaded: found,
                        kept: true,
                        read_at,
                    });
                }
                let read_at = self.ticket();
                let loaded = match self.query(m, &params).await {
                    Ok(l) => l,
                    Err(e) => {
                        // Sidecars waiting for our fill query themselves (or answer stale) now,
                        // instead of when the lease runs out.
                        let _ = call(upstream, release_command(key, &token), 1).await;
                        return Err(e);
                    }
                };
                let kept = self.fill(upstream, m, key, &token, &loaded).await;
                Ok(Lead {
                    loaded,
                    kept,
                    read_at,
                })
            }
            Ok(_) => {
                m.metrics.lease_waits.inc();
                match self.await_fill(upstream, m, key).await {
                    Some((loaded, read_at)) => Ok(Lead {
                        loaded,
                        kept: true,
                        read_at,
                    }),
                    // The holder did not fill in time (or a write removed its lease): query,
                    // without filling, since the lease is not ours.
                    None => self.query_unkept(m, &params).await,
                }
            }
        }
    }

    /// Queries without filling Redis: the value is not Redis's.
    pub(super) async fn query_unkept(
        &self,
        m: &Mapping,
        params: &[params::Param],
    ) -> Result<Lead, LoadError> {
        let read_at = self.ticket();
        Ok(Lead {
            loaded: self.query(m, params).await?,
            kept: false,
            read_at,
        })
    }

    /// Writes the loaded value to Redis if our lease still holds; a failure (e.g. maxmemory)
    /// only skips the fill: the value is still returned. Whether Redis took it.
    pub(super) async fn fill(
        &self,
        upstream: &Upstream,
        m: &Mapping,
        key: &Bytes,
        token: &Bytes,
        loaded: &Loaded,
    ) -> bool {
        let reply = call(upstream, self.fill_command(m, key, token, loaded), 1).await;
        counted_fill(m, reply.as_ref().ok().and_then(|r| integer(&r[0])))
    }

    /// The compare-and-set fill of one loaded key (see FILL_SCRIPT).
    pub(super) fn fill_command(
        &self,
        m: &Mapping,
        key: &Bytes,
        token: &Bytes,
        loaded: &Loaded,
    ) -> Bytes {
        let (kind, ttl): (&[u8], Duration) = match loaded {
            Loaded::Value(_) => (b"v", m.jitter.apply(m.ttl)),
            Loaded::Hash(_) => (b"h", m.jitter.apply(m.ttl)),
            Loaded::NotFound => (b"n", m.negative_ttl),
        };
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let (script, nkeys): (&'static str, &'static [u8]) = match m.stale_if_error {
            Some(_) => (FILL_STALE_SCRIPT, b"4"),
            None => (FILL_SCRIPT, b"3"),
        };
        let mut args: Vec<Bytes> = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(script.as_bytes()),
            Bytes::from_static(nkeys),
            key.clone(),
            lease_key(key),
            negative_key(key),
        ];
        if m.stale_if_error.is_some() {
            args.push(super::stale::stale_key(key));
        }
        let kind_at = args.len() + 1;
        args.push(token.clone());
        args.push(Bytes::copy_from_slice(kind));
        match loaded {
            Loaded::Value(v) => args.push(v.clone()),
            _ => args.push(Bytes::new()),
        }
        args.push(Bytes::from(ttl_ms));
        if let Some(stale) = m.stale_if_error {
            args.push(Bytes::from((ttl + stale).as_millis().max(1).to_string()));
        }
        if let Loaded::Hash(pairs) = loaded {
            if pairs.is_empty() {
                // An all-NULL row: nothing to store as a hash; remember it as not found instead.
                args[kind_at] = Bytes::from_static(b"n");
            }
            for (f, v) in pairs {
                args.push(f.clone());
                args.push(v.clone());
            }
        }
        encode_command(&args)
    }

    /// `SET <lease> <token> NX PX <lease>`, then a read of the key (GET, or HGETALL for hashes).
    pub(super) fn take_lease(&self, m: &Mapping, key: &[u8], token: &[u8]) -> Vec<u8> {
        let lease_ms = self.lease.as_millis().max(1).to_string();
        let mut out = encode_command(&[
            &b"SET"[..],
            &lease_key(key),
            token,
            b"NX",
            b"PX",
            lease_ms.as_bytes(),
        ])
        .to_vec();
        out.extend_from_slice(&encode_command(&[read_command(m), key]));
        out
    }

    /// Polls Redis for another sidecar's fill while its lease lasts; with the fill, the ticket
    /// taken before the poll that found it.
    pub(super) async fn await_fill(
        &self,
        upstream: &Upstream,
        m: &Mapping,
        key: &Bytes,
    ) -> Option<(Loaded, u64)> {
        let read = read_command(m);
        // The lease is asked about first: the fill script deletes it and writes the value in one
        // step, so once the lease is seen gone, the reads after it see the fill (or its absence).
        let mut probe = encode_command(&[&b"EXISTS"[..], &lease_key(key)]).to_vec();
        probe.extend_from_slice(&encode_command(&[read, key]));
        probe.extend_from_slice(&encode_command(&[&b"EXISTS"[..], &negative_key(key)]));
        let probe = Bytes::from(probe);
        let deadline = Instant::now() + self.lease;
        while Instant::now() < deadline {
            tokio::time::sleep(LEASE_POLL).await;
            let read_at = self.ticket();
            let Ok(r) = call(upstream, probe.clone(), 3).await else {
                return None;
            };
            if let Some(found) = from_reply(&r[1]) {
                return Some((found, read_at));
            }
            if r[2].starts_with(b":1") {
                m.metrics.negative_hits.inc();
                return Some((Loaded::NotFound, read_at));
            }
            if r[0].starts_with(b":0") {
                return None;
            }
        }
        None
    }
}

/// Counts what the fill script answered (1 filled, 0 lost the lease, anything else an error);
/// whether Redis took the value.
pub(super) fn counted_fill(m: &Mapping, answer: Option<i64>) -> bool {
    match answer {
        Some(1) => m.metrics.fills.inc(),
        Some(0) => m.metrics.fills_skipped_raced.inc(),
        _ => m.metrics.fills_skipped_error.inc(),
    }
    answer == Some(1)
}

/// A fresh lease token.
pub(super) fn new_token() -> Bytes {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// How a mapping's value is read back from Redis.
pub(super) fn read_command(m: &Mapping) -> &'static [u8] {
    if m.shape == Shape::Hash {
        b"HGETALL"
    } else {
        b"GET"
    }
}

/// Sends `n` commands on a shared RESP2 connection and splits the replies.
pub(crate) async fn call(
    upstream: &Upstream,
    bytes: Bytes,
    n: u32,
) -> Result<Vec<Bytes>, UpstreamError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // Any shared connection: each call is awaited before the next that depends on it, and
    // spreading them keeps loader traffic off the connection clients of id 0 mod n use.
    let replies = upstream
        .send(Proto::Resp2, rand::random::<u32>() as u64, bytes, n)
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Closed {
                addr: "upstream".into(),
            })
        })?;
    match reply::split(&replies, n as usize, Proto::Resp2) {
        Some(frames) => Ok(frames.into_iter().map(|(b, _)| b).collect()),
        None => Err(UpstreamError::Protocol {
            addr: "upstream".into(),
            detail: "short reply".into(),
        }),
    }
}

/// A value found in Redis (a bulk string, or a non-empty hash as a RESP2 array); `None` for a
/// null, an empty hash, or a reply of any other shape.
pub(super) fn from_reply(b: &Bytes) -> Option<Loaded> {
    let (v, _) = Value::parse(b, Proto::Resp2)?;
    if v.is_null() {
        return None;
    }
    if let Some(s) = v.string().filter(|_| b.first() == Some(&b'$')) {
        return Some(Loaded::Value(b.slice_ref(s)));
    }
    let mut items = v.items()?;
    if items.is_empty() || items.len() % 2 != 0 {
        return None;
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    while let (Some(f), Some(v)) = (items.next(), items.next()) {
        pairs.push((b.slice_ref(f.string()?), b.slice_ref(v.string()?)));
    }
    Some(Loaded::Hash(pairs))
}
