//! DEL/UNLINK of mapped keys run by cacheside: the rows of write-through keys deleted first (one
//! transaction), the related keys found from the rows before and after, then one script that
//! deletes everything and answers Redis's count.

use super::related;
use super::through::{ambiguous, counted, error, eval, failed, related_keys, Env};
use crate::loader::{Loaded, Mapping, Shape};
use crate::protocol::reply::Proto;
use crate::protocol::request::encode_command;
use bytes::Bytes;
use std::sync::Arc;

/// Deletes the client's keys (DEL or UNLINK: ARGV[1]) and answers their count, then the rest.
/// KEYS: the client's keys (ARGV[2] of them), deletes...
pub(super) const DEL_SCRIPT: &str = "local n = tonumber(ARGV[2])
local gone = redis.call(ARGV[1], unpack(KEYS, 1, n))
if #KEYS > n then redis.call('DEL', unpack(KEYS, n + 1)) end
return gone";

/// DEL/UNLINK of keys among which some are mapped: write-through keys with a delete statement
/// have their rows deleted first (all in one transaction); related keys are found from the
/// key, the row before (from the transaction, or for keys that only invalidate, from Redis's
/// copy) and the row now; then one script deletes everything and answers Redis's count.
pub(super) async fn delete(env: Env, command: &'static str, keys: Vec<Bytes>) -> Bytes {
    let resolved: Vec<Option<(Arc<Mapping>, Vec<Bytes>)>> =
        keys.iter().map(|k| env.loader.resolve(k)).collect();
    let statements: Vec<(Arc<Mapping>, Vec<Bytes>)> = resolved
        .iter()
        .flatten()
        .filter(|(m, _)| m.write.deletes_rows())
        .cloned()
        .collect();
    let want_old = statements.iter().any(|(m, _)| related::needs_rows(m));
    let mut old_rows = match env.loader.delete_rows(&statements, want_old).await {
        Ok(r) => r.into_iter(),
        Err(e) => {
            if ambiguous(&e) {
                for (k, r) in keys.iter().zip(&resolved) {
                    if r.as_ref().is_some_and(|(m, _)| m.write.deletes_rows()) {
                        env.drop_key(k).await;
                    }
                }
            }
            return match statements.first() {
                Some((m, _)) => failed(m, &e),
                None => error(&e),
            };
        }
    };
    let mut related: Vec<Bytes> = Vec::new();
    for (key, r) in keys.iter().zip(&resolved) {
        let Some((m, caps)) = r else { continue };
        let found = if m.write.deletes_rows() {
            vec![old_rows.next().flatten()]
        } else if related::needs_rows(m) {
            // The row was changed (or deleted) by the app itself: Redis's copy is the row as
            // it was, the database's is the row now.
            vec![
                env.cached_row(m, key).await,
                env.loader.current_row(m, caps).await.ok().flatten(),
            ]
        } else {
            Vec::new()
        };
        for k in related_keys(m, caps, &found) {
            if !related.contains(&k) && !keys.contains(&k) {
                related.push(k);
            }
        }
    }
    let mut all = keys.clone();
    for (k, r) in keys.iter().zip(&resolved) {
        if r.is_some() {
            all.extend(env.loader.guard_keys(k).into_iter().flatten());
        }
    }
    for r in &related {
        all.push(r.clone());
        all.extend(env.loader.guard_keys(r).into_iter().flatten());
    }
    let argv = [
        Bytes::from_static(command.as_bytes()),
        Bytes::from(keys.len().to_string()),
    ];
    let reply = env
        .apply(eval(DEL_SCRIPT, &all, &argv), &keys, &related)
        .await;
    for (m, _) in &statements {
        counted(m, &reply);
    }
    reply
}

impl Env {
    /// The row Redis holds for a mapped key, as JSON (a json value, or a hash's fields).
    async fn cached_row(&self, m: &Mapping, key: &Bytes) -> Option<String> {
        let upstream = self.loader.upstream()?;
        let read: &[u8] = if m.shape == Shape::Hash {
            b"HGETALL"
        } else {
            b"GET"
        };
        let reply = upstream
            .send(Proto::Resp2, self.client, encode_command(&[read, key]), 1)
            .await
            .ok()?
            .ok()?;
        match crate::loader::write::value_of_reply(&reply)? {
            Loaded::Value(v) => String::from_utf8(v.to_vec()).ok(),
            Loaded::Hash(pairs) => {
                let object: serde_json::Map<String, serde_json::Value> = pairs
                    .iter()
                    .map(|(f, v)| {
                        (
                            String::from_utf8_lossy(f).into_owned(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                Some(serde_json::Value::Object(object).to_string())
            }
            Loaded::NotFound => None,
        }
    }
}
