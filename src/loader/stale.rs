//! Stale-if-error: every value loaded for a mapping with `stale_if_error` is also kept in a
//! stale copy (`cacheside:stale:{<key>}`) that outlives the key by that long. The key itself
//! expires as before, so a read past its TTL is a miss that loads; only when the load fails
//! (PostgreSQL down, slow or erroring) is the stale copy answered. Apps' plain GETs see the
//! row's own encoding: the copy is a second key, not an envelope around the value.

use super::lease::{call, from_reply};
use super::{prefixed, LoadError, Loaded, Loader, Mapping};
use crate::protocol::request::encode_command;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

const STALE_PREFIX: &[u8] = b"cacheside:stale:";
/// A mapping logs its stale answers at most once in this many seconds.
const LOG_EVERY_SECS: u64 = 60;

/// The Redis key of `key`'s stale copy.
pub fn stale_key(key: &[u8]) -> Bytes {
    prefixed(STALE_PREFIX, key)
}

impl Loader {
    /// A failed load of `key` is answered from its stale copy, if the mapping keeps one and
    /// Redis still holds it; otherwise the error stands.
    pub(super) async fn or_stale(
        &self,
        m: &Mapping,
        key: &[u8],
        result: Result<Loaded, LoadError>,
    ) -> Result<Loaded, LoadError> {
        let err = match result {
            Err(e @ LoadError::Db { .. }) if m.stale_if_error.is_some() => e,
            other => return other,
        };
        let Some(upstream) = self.upstream.as_ref() else {
            return Err(err);
        };
        let read: &[u8] = if m.shape == super::Shape::Hash {
            b"HGETALL"
        } else {
            b"GET"
        };
        let found = match call(upstream, encode_command(&[read, &stale_key(key)]), 1).await {
            Ok(r) => from_reply(&r[0]),
            Err(_) => None,
        };
        let Some(stale) = found else {
            return Err(err);
        };
        m.strategy_metrics.stale_answers.inc();
        // Never kept in a hot tier: a fresh load replaces it as soon as the database is back.
        self.forget(key);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = m.stale_logged.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY_SECS
            && m.stale_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(mapping = %m.name, error = %err, "answering values past their ttl (stale_if_error) while the database fails");
        }
        Ok(stale)
    }
}
