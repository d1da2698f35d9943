//! A config reload's side of read-through: the mappings are swapped whole, and what a mapping
//! whose query changed (or that is gone) filled is flushed from Redis.
//!
//! The flush SCANs the mapping's key pattern (and its negative, stale and lease keys) on the
//! upstream (on a Redis Cluster, SCAN walks every primary) and UNLINKs what matches, in batches. Deleting the leases makes fills of the old
//! query that still hold one (in any sidecar) refuse to write, as a write does. Loads of the
//! old query that hold no lease, or that began before the flush and fill after it, are caught
//! by a second flush once no load holds the old mapping any more (see `crate::reload`).

use super::lease::call;
use super::{compile, prefixed, Loader, Mapping, MappingSettings};
use crate::error::UpstreamError;
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use crate::protocol::Proto;
use bytes::Bytes;
use std::sync::Arc;

/// Keys asked for per SCAN call, and deleted per UNLINK.
const SCAN_COUNT: &str = "1000";

/// Prefixes of the keys that cacheside keeps beside a mapped key.
const COMPANIONS: [&[u8]; 4] = [
    b"",
    b"cacheside:neg:",
    b"cacheside:stale:",
    b"cacheside:lease:",
];

impl Loader {
    /// Compiles new settings into a mapping of this loader (not in force until swapped in).
    pub fn compile(&self, s: MappingSettings, metrics: &crate::metrics::Metrics) -> Arc<Mapping> {
        compile(s, metrics, &self.refresher)
    }

    /// Puts `mappings` in force; returns the ones they replace. Loads already resolved keep
    /// the mapping they resolved.
    pub fn replace_mappings(&self, mappings: Vec<Arc<Mapping>>) -> Arc<Vec<Arc<Mapping>>> {
        self.mappings.swap(Arc::new(mappings))
    }

    /// Deletes from the upstream every key of `m`'s pattern, with its negative, stale and lease
    /// keys. Returns how many keys were deleted.
    pub async fn flush_keys(&self, m: &Mapping) -> Result<u64, UpstreamError> {
        let Some(upstream) = self.upstream.as_ref() else {
            return Ok(0);
        };
        let glob = m.pattern.glob();
        let mut deleted = 0;
        for prefix in COMPANIONS {
            // A companion is `prefix{key}` (or `prefix` + key for a key with a hash tag, see
            // `prefixed`): one glob covers every form, and each key found is checked exactly.
            let mut matcher = prefix.to_vec();
            if !prefix.is_empty() {
                matcher.push(b'*');
            }
            matcher.extend_from_slice(&glob);
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let cmd = encode_command(&[
                    &b"SCAN"[..],
                    &cursor,
                    b"MATCH",
                    &matcher,
                    b"COUNT",
                    SCAN_COUNT.as_bytes(),
                ]);
                let reply = call(upstream, cmd, 1).await?;
                let (next, keys) =
                    scan_reply(&reply[0]).ok_or_else(|| UpstreamError::Protocol {
                        addr: "upstream".into(),
                        detail: "unexpected SCAN reply".into(),
                    })?;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| {
                        companion_of(prefix, k).is_some_and(|k| m.pattern.matches(k).is_some())
                    })
                    .collect();
                if !keys.is_empty() {
                    let mut args: Vec<&[u8]> = vec![b"UNLINK"];
                    args.extend(keys.iter().map(|k| &k[..]));
                    call(upstream, encode_command(&args), 1).await?;
                    deleted += keys.len() as u64;
                }
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

/// The key whose `prefix` companion `key` is (`key` itself for the empty prefix).
fn companion_of<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k [u8]> {
    let rest = key.strip_prefix(prefix)?;
    if prefix.is_empty() {
        return Some(rest);
    }
    let wrapped = rest
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .into_iter();
    let tagged = rest
        .strip_prefix(b"{")
        .and_then(|r| memchr::memchr(b'}', r).map(|i| &r[i + 1..]))
        .into_iter();
    wrapped
        .chain(tagged)
        .chain(std::iter::once(rest))
        .find(|inner| prefixed(prefix, inner)[..] == *key)
}

/// A SCAN reply: the next cursor and the keys of this step.
fn scan_reply(reply: &[u8]) -> Option<(Bytes, Vec<Bytes>)> {
    let (v, _) = Value::parse(reply, Proto::Resp2)?;
    let mut items = v.items()?;
    let cursor = Bytes::copy_from_slice(items.next()?.string()?);
    let keys = items
        .next()?
        .items()?
        .filter_map(|k| k.string().map(Bytes::copy_from_slice))
        .collect();
    Some((cursor, keys))
}

#[cfg(test)]
mod tests {
    use super::scan_reply;

    #[test]
    fn scan_replies_give_cursor_and_keys() {
        let (c, k) = scan_reply(b"*2\r\n$2\r\n17\r\n*2\r\n$3\r\np:1\r\n$3\r\np:2\r\n").unwrap();
        assert_eq!(&c[..], b"17");
        assert_eq!(k, vec![&b"p:1"[..], &b"p:2"[..]]);
        assert!(scan_reply(b"-ERR no\r\n").is_none());
    }

    #[test]
    fn companions_lead_back_to_their_key() {
        for key in [&b"product:1"[..], b"u:{7}:x", b"odd}key"] {
            for prefix in [&b"cacheside:neg:"[..], b"cacheside:lease:"] {
                let c = super::prefixed(prefix, key);
                assert_eq!(super::companion_of(prefix, &c), Some(key), "{c:?}");
            }
        }
        assert_eq!(
            super::companion_of(b"", b"product:1"),
            Some(&b"product:1"[..])
        );
        assert_eq!(super::companion_of(b"cacheside:neg:", b"product:1"), None);
    }
}
