//! Write-through and related-key invalidation: planning a write of mapped keys, and running
//! SET/HSET (database first, then Redis, the hot tier and the other sidecars, then the reply).
//! DEL/UNLINK: `delete.rs`.

use super::{related, set_args, Pending};
use crate::error::{reply_bytes, ProxyError};
use crate::loader::write::Statement;
use crate::loader::{DbError, LoadError, Loaded, Loader, Mapping, Shape};
use crate::metrics::InvalidationSource;
use crate::protocol::command::CommandInfo;
use crate::protocol::reply::Proto;
use crate::protocol::request::encode_command;
use crate::protocol::Request;
use crate::tier::hot::HotTier;
use bytes::Bytes;
use std::sync::Arc;

/// What cacheside does with a write of mapped keys instead of forwarding it.
pub enum Planned {
    /// Refused with this error; nothing runs anywhere.
    Refuse(ProxyError),
    /// Run by cacheside; the future answers the client.
    Run(Pending),
}

/// Writes that change only a key's expiry: forwarded as they are, even for write-through keys.
const EXPIRY_ONLY: &[&str] = &["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST"];

/// Sets the key, after deleting the other keys (lease, marker, related keys).
/// KEYS: key, deletes... ARGV: SET's arguments after the key.
const SET_SCRIPT: &str = "if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
return redis.call('SET', KEYS[1], unpack(ARGV))";

/// Replaces a hash with the row's fields, after deleting the other keys.
/// KEYS: key, deletes... ARGV: ttl ms, field, value, ...
const HASH_SCRIPT: &str = "redis.call('DEL', unpack(KEYS))
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1";

/// What a write needs to run: where it goes and who sent it.
#[derive(Clone)]
pub(super) struct Env {
    pub(super) loader: Arc<Loader>,
    hot: Option<Arc<HotTier>>,
    pub(super) client: u64,
    proto: Proto,
}

fn run(work: impl std::future::Future<Output = Bytes> + Send + 'static) -> Option<Planned> {
    Some(Planned::Run(Pending(Box::pin(work))))
}

/// Decides whether cacheside runs `req` itself; `None` forwards it as before. `pinned`: the
/// client's commands go to its pinned connection (MULTI, WATCH, ...).
pub fn plan(
    loader: &Arc<Loader>,
    hot: Option<&Arc<HotTier>>,
    info: &CommandInfo,
    req: &Request,
    pinned: bool,
    client: u64,
    proto: Proto,
) -> Option<Planned> {
    if !info.is_write() || EXPIRY_ONLY.contains(&info.name) {
        return None;
    }
    let keys = info.key_indices(req);
    let mapped: Vec<Arc<Mapping>> = keys
        .iter()
        .filter_map(|&i| loader.resolve(req.arg(i)).map(|(m, _)| m))
        .collect();
    let through = mapped.iter().find(|m| m.write.through);
    let related = mapped.iter().any(|m| !m.write.invalidates.is_empty());
    if through.is_none() && !related {
        return None;
    }
    let env = Env {
        loader: loader.clone(),
        hot: hot.cloned(),
        client,
        proto,
    };
    let refuse = |m: &Mapping, why: String| {
        Some(Planned::Refuse(ProxyError::Load(format!(
            "mapping {}: {why}",
            m.name
        ))))
    };
    let Some(m) = through else {
        // Related keys only: DEL/UNLINK outside a transaction invalidates them. A write-behind
        // DEL that is queued is left to `behind` (its related keys are not invalidated, as for
        // its SETs).
        if mapped.iter().any(|m| m.write.queued_delete) {
            return None;
        }
        return match info.name {
            "DEL" | "UNLINK" if !pinned => run(super::delete::delete(
                env,
                info.name,
                req.args().skip(1).map(Bytes::copy_from_slice).collect(),
            )),
            _ => None,
        };
    };
    if pinned {
        return refuse(
            m,
            format!(
                "{} of a write-through key is refused inside MULTI/WATCH or on a pinned connection (it cannot run in the database first)",
                info.name
            ),
        );
    }
    match (info.name, m.shape) {
        ("SET", Shape::Hash) | ("HSET" | "HMSET", Shape::Json | Shape::JsonArray | Shape::String) => {
            refuse(
                m,
                format!(
                    "{} does not fit the mapping's shape; write-through uses {}",
                    info.name,
                    if m.shape == Shape::Hash { "HSET" } else { "SET" }
                ),
            )
        }
        ("SET", _) if req.argc() >= 3 => {
            let rest: Vec<Bytes> = req.args().skip(3).map(Bytes::copy_from_slice).collect();
            let expiry = match set_args::check(&rest) {
                Ok(e) => e,
                Err(why) => return refuse(m, why),
            };
            let (m, caps) = loader.resolve(req.arg(1))?;
            let mut args = vec![req.arg_bytes(2)];
            args.extend(rest);
            if !expiry {
                // As a read-through fill would: the mapping's TTL, jittered.
                args.push(Bytes::from_static(b"PX"));
                args.push(Bytes::from(m.jitter.apply(m.ttl).as_millis().max(1).to_string()));
            }
            run(set(
                env,
                m,
                caps,
                req.arg_bytes(1),
                args,
            ))
        }
        ("HSET" | "HMSET", Shape::Hash) if req.argc() >= 4 && req.argc().is_multiple_of(2) => {
            let (m, caps) = loader.resolve(req.arg(1))?;
            let pairs: Vec<(Bytes, Bytes)> = (2..req.argc())
                .step_by(2)
                .map(|i| (req.arg_bytes(i), req.arg_bytes(i + 1)))
                .collect();
            run(hset(
                env,
                m,
                caps,
                req.arg_bytes(1),
                pairs,
                info.name == "HMSET",
            ))
        }
        ("DEL" | "UNLINK", _) => run(super::delete::delete(
            env,
            info.name,
            req.args().skip(1).map(Bytes::copy_from_slice).collect(),
        )),
        // Malformed: Redis answers its own error, and nothing is written.
        ("SET" | "HSET" | "HMSET", _) => None,
        (name, _) => refuse(
            m,
            format!("{name} is not written through to the database; use SET or DEL (or HSET for hash shapes)"),
        ),
    }
}

/// Whether a failed statement may still have committed (the connection broke or the timeout
/// fired after it was sent): then the cached key is invalidated rather than kept.
pub(super) fn ambiguous(e: &LoadError) -> bool {
    matches!(
        e,
        LoadError::Db {
            err: DbError::Timeout(_) | DbError::Unavailable(_),
            ..
        }
    )
}

pub(super) fn error(e: &LoadError) -> Bytes {
    reply_bytes(&ProxyError::Load(e.to_string()))
}

/// The deletes that go with writing `key` and its related keys: leases and markers of mapped
/// ones, and the related keys themselves.
fn deletes(loader: &Loader, key: &[u8], related: &[Bytes]) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = loader.guard_keys(key).into_iter().flatten().collect();
    for r in related {
        out.push(r.clone());
        out.extend(loader.guard_keys(r).into_iter().flatten());
    }
    out
}

/// The rows' fields, for the related keys.
fn rows(rows: &[Option<String>]) -> Vec<Option<serde_json::Map<String, serde_json::Value>>> {
    rows.iter()
        .map(|r| r.as_deref().and_then(related::fields))
        .collect()
}

pub(super) fn related_keys(m: &Mapping, caps: &[Bytes], found: &[Option<String>]) -> Vec<Bytes> {
    if m.write.invalidates.is_empty() {
        return Vec::new();
    }
    let parsed = rows(found);
    let mut refs: Vec<Option<&serde_json::Map<String, serde_json::Value>>> =
        parsed.iter().map(Option::as_ref).collect();
    refs.push(None);
    related::keys(m, caps, &refs)
}

impl Env {
    /// Runs one script upstream on the client's connection with the hot tier held for
    /// `written` (the client's keys) and `related`, then completes the hot tier and, in
    /// broadcast mode, tells the other sidecars; the script's reply, or an error reply.
    pub(super) async fn apply(&self, script: Bytes, written: &[Bytes], related: &[Bytes]) -> Bytes {
        let Some(upstream) = self.loader.upstream() else {
            return reply_bytes(&ProxyError::Internal("write-through needs an upstream"));
        };
        let guard = self.hot.as_ref().map(|hot| {
            let held: Vec<Bytes> = written
                .iter()
                .chain(related)
                .filter(|k| hot.caches(k))
                .cloned()
                .collect();
            (hot, hot.begin_write(held, false))
        });
        if let Some((hot, _)) = &guard {
            for k in written {
                hot.invalidate(k, InvalidationSource::WriteThrough).await;
            }
            for k in related {
                hot.invalidate(k, InvalidationSource::Related).await;
            }
        }
        let reply = match upstream.send(self.proto, self.client, script, 1).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => reply_bytes(&ProxyError::Upstream(e)),
            Err(_) => reply_bytes(&ProxyError::Internal("upstream reply lost")),
        };
        if let Some((hot, g)) = guard {
            g.complete().await;
            if hot.broadcast().is_some() {
                let keys: Vec<Bytes> = written.iter().chain(related).cloned().collect();
                if !hot.announce(keys, false).await {
                    return reply_bytes(&ProxyError::Announce);
                }
            }
        }
        reply
    }

    /// After a statement that may have committed: the key and its lease go, so the next read
    /// loads whatever the database holds.
    pub(super) async fn drop_key(&self, key: &Bytes) {
        let mut keys = vec![key.clone()];
        keys.extend(deletes(&self.loader, key, &[]));
        let script = eval(
            super::delete::DEL_SCRIPT,
            &keys,
            &[Bytes::from_static(b"DEL"), "1".into()],
        );
        let _ = self.apply(script, std::slice::from_ref(key), &[]).await;
    }
}

pub(super) fn eval(script: &str, keys: &[Bytes], argv: &[Bytes]) -> Bytes {
    let mut args: Vec<Bytes> = Vec::with_capacity(3 + keys.len() + argv.len());
    args.push(Bytes::from_static(b"EVAL"));
    args.push(Bytes::copy_from_slice(script.as_bytes()));
    args.push(Bytes::from(keys.len().to_string()));
    args.extend(keys.iter().cloned());
    args.extend(argv.iter().cloned());
    encode_command(&args)
}

/// Counts a write whose statement committed: ok once Redis took it too, error otherwise.
pub(super) fn counted(m: &Mapping, reply: &Bytes) {
    if reply.starts_with(b"-") {
        m.strategy_metrics.write_through_error.inc();
    } else {
        m.strategy_metrics.write_through_ok.inc();
    }
}

pub(super) fn failed(m: &Mapping, e: &LoadError) -> Bytes {
    m.strategy_metrics.write_through_error.inc();
    tracing::debug!(mapping = %m.name, error = %e, "write-through refused by the database");
    error(e)
}

/// Write-through SET: the statement, then SET with the lease, marker and related keys gone.
async fn set(env: Env, m: Arc<Mapping>, caps: Vec<Bytes>, key: Bytes, args: Vec<Bytes>) -> Bytes {
    let want = related::needs_rows(&m);
    let written = match env
        .loader
        .write_row(&m, &caps, Statement::Write(&args[0]), want, want)
        .await
    {
        Ok(w) => w,
        Err(e) => {
            if ambiguous(&e) {
                env.drop_key(&key).await;
            }
            return failed(&m, &e);
        }
    };
    let related = related_keys(&m, &caps, &[written.old, written.new]);
    let mut keys = vec![key.clone()];
    keys.extend(deletes(&env.loader, &key, &related));
    let reply = env
        .apply(eval(SET_SCRIPT, &keys, &args), &[key], &related)
        .await;
    counted(&m, &reply);
    reply
}

/// Write-through HSET/HMSET of a hash-shaped key: the statement gets the fields as one JSON
/// object; Redis then holds the whole row as the read query renders it after the write (a
/// partial hash is never cached). Answered as Redis would have: the fields new to the row.
async fn hset(
    env: Env,
    m: Arc<Mapping>,
    caps: Vec<Bytes>,
    key: Bytes,
    pairs: Vec<(Bytes, Bytes)>,
    hmset: bool,
) -> Bytes {
    let object: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(f, v)| {
            (
                String::from_utf8_lossy(f).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    let json = serde_json::Value::Object(object).to_string();
    let written = match env
        .loader
        .write_row(&m, &caps, Statement::Write(json.as_bytes()), true, true)
        .await
    {
        Ok(w) => w,
        Err(e) => {
            if ambiguous(&e) {
                env.drop_key(&key).await;
            }
            return failed(&m, &e);
        }
    };
    let before = written.old.as_deref().and_then(related::fields);
    let mut fields: Vec<&Bytes> = pairs.iter().map(|(f, _)| f).collect();
    fields.sort();
    fields.dedup();
    let added = fields
        .iter()
        .filter(|f| {
            let name = String::from_utf8_lossy(f);
            before
                .as_ref()
                .and_then(|b| b.get(name.as_ref()))
                .is_none_or(|v| v.is_null())
        })
        .count();
    let mut argv = vec![Bytes::from(
        m.jitter.apply(m.ttl).as_millis().max(1).to_string(),
    )];
    let new_rows: Vec<String> = written.new.iter().cloned().collect();
    if let Ok(Loaded::Hash(row)) = crate::loader::encode::encode(Shape::Hash, &new_rows) {
        for (f, v) in row {
            argv.push(f);
            argv.push(v);
        }
    }
    let related = related_keys(&m, &caps, &[written.old, written.new]);
    let mut keys = vec![key.clone()];
    keys.extend(deletes(&env.loader, &key, &related));
    let reply = env
        .apply(eval(HASH_SCRIPT, &keys, &argv), &[key], &related)
        .await;
    counted(&m, &reply);
    if reply.starts_with(b"-") {
        return reply;
    }
    if hmset {
        Bytes::from_static(b"+OK\r\n")
    } else {
        Bytes::from(format!(":{added}\r\n"))
    }
}
