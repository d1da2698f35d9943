//! Keeping `cacheside_write_versions` bounded. A key's version row is there to turn away an
//! older entry of the key applied after a newer one. Every entry that can still be applied is
//! in the stream (entries leave it only once applied), and stream ids only grow, so a row whose
//! version is below the oldest id in the stream can never turn anything away: it is deleted.
//! With the stream empty, rows up to the newest entry this worker applied go the same way.
//! (On a cluster the sweeper prunes, over every slot's stream: see `cluster.rs`.)

use super::apply::StreamId;
use super::entries::read_range;
use super::Queue;
use crate::loader::{call, Database};
use crate::protocol::request::encode_command;
use crate::tier::redis::Upstream;
use bytes::Bytes;
use std::time::Duration;

/// At most this often while entries keep coming; at once when the stream runs empty.
pub(super) const EVERY: Duration = Duration::from_secs(60);

const DELETE: &str =
    "DELETE FROM cacheside_write_versions WHERE mapping = $1 AND (ms, seq) < ($2, $3)";

/// Deletes the mapping's version rows below the oldest entry still in the stream (or, with the
/// stream empty, up to `applied`, the newest entry this worker applied); the rows deleted, or
/// `None` when Redis or the database could not be asked.
pub(super) async fn run(
    q: &Queue,
    upstream: &Upstream,
    db: &Database,
    applied: StreamId,
) -> Option<u64> {
    let cmd = encode_command(&[&b"XRANGE"[..], &q.stream, b"-", b"+", b"COUNT", b"1"]);
    let r = call(upstream, Bytes::from(cmd.to_vec()), 1).await.ok()?;
    if r[0].starts_with(b"-") {
        return None;
    }
    let (entries, gone) = read_range(&r[0], &q.stream);
    let oldest = entries
        .first()
        .map(|e| e.id)
        .or_else(|| gone.first().and_then(|g| StreamId::parse(g)));
    let below = oldest.unwrap_or(StreamId(applied.0, applied.1.saturating_add(1)));
    delete_below(db, &q.settings.mapping, below).await
}

/// Deletes the mapping's version rows below `below`; the rows deleted, or `None`.
pub(super) async fn delete_below(db: &Database, mapping: &str, below: StreamId) -> Option<u64> {
    let conn = db.connection().await.ok()?;
    conn.execute(DELETE, &[&mapping, &below.0, &below.1])
        .await
        .ok()
}

/// Consumers idle this long with nothing pending are sidecars that are gone.
const GONE_AFTER: Duration = Duration::from_secs(3600);

/// Removes the group's consumers that hold nothing and have not read for [`GONE_AFTER`]
/// (sidecars that are gone: each pod's worker has a name of its own). A live worker reads every
/// few milliseconds, and one removed anyway is made again by its next read. The consumers
/// removed, or `None` when Redis could not be asked.
pub(super) async fn forget_gone_consumers(q: &Queue, upstream: &Upstream) -> Option<usize> {
    let cmd = encode_command(&[&b"XINFO"[..], b"CONSUMERS", &q.stream, super::worker::GROUP]);
    let r = call(upstream, Bytes::from(cmd.to_vec()), 1).await.ok()?;
    let gone = gone_consumers(&r[0]);
    for name in &gone {
        let cmd = encode_command(&[
            &b"XGROUP"[..],
            b"DELCONSUMER",
            &q.stream,
            super::worker::GROUP,
            name,
        ]);
        call(upstream, Bytes::from(cmd.to_vec()), 1).await.ok()?;
    }
    Some(gone.len())
}

/// The names in an XINFO CONSUMERS reply (RESP2: a list of flat name/value lists) of consumers
/// with no pending entries, idle past [`GONE_AFTER`].
pub(super) fn gone_consumers(reply: &[u8]) -> Vec<Vec<u8>> {
    use crate::protocol::scan::Value;
    let Some((list, _)) = Value::parse(reply, crate::protocol::Proto::Resp2) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in list.items().into_iter().flatten() {
        let (mut name, mut pending, mut idle) = (None, None, None);
        let Some(mut fields) = c.items() else {
            continue;
        };
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            match k.string() {
                Some(b"name") => name = v.string(),
                Some(b"pending") => pending = v.integer(),
                Some(b"idle") => idle = v.integer(),
                _ => {}
            }
        }
        if let (Some(n), Some(0), Some(ms)) = (name, pending, idle) {
            if ms >= GONE_AFTER.as_millis() as i64 {
                out.push(n.to_vec());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_consumers_idle_long_with_nothing_pending_are_gone() {
        let reply = b"*3\r\n\
*6\r\n$4\r\nname\r\n$4\r\nlive\r\n$7\r\npending\r\n:0\r\n$4\r\nidle\r\n:20\r\n\
*8\r\n$4\r\nname\r\n$4\r\ngone\r\n$7\r\npending\r\n:0\r\n$4\r\nidle\r\n:7200000\r\n$8\r\ninactive\r\n:7200000\r\n\
*6\r\n$4\r\nname\r\n$4\r\nheld\r\n$7\r\npending\r\n:3\r\n$4\r\nidle\r\n:7200000\r\n";
        assert_eq!(super::gone_consumers(reply), vec![b"gone".to_vec()]);
        assert!(super::gone_consumers(b"-ERR no such key\r\n").is_empty());
    }
}
