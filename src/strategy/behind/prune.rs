//! Keeping `cacheside_write_versions` bounded. A key's version row is there to turn away an
//! older entry of the key applied after a newer one. Every entry that can still be applied is
//! in the stream (entries leave it only once applied), and stream ids only grow, so a row whose
//! version is below the oldest id in the stream can never turn anything away: it is deleted.
//! With the stream empty, rows up to the newest entry this worker applied go the same way.

use super::apply::StreamId;
use super::worker::read_range;
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
    let (entries, gone) = read_range(&r[0]);
    let oldest = entries
        .first()
        .map(|e| e.id)
        .or_else(|| gone.first().and_then(|g| StreamId::parse(g)));
    let below = oldest.unwrap_or(StreamId(applied.0, applied.1.saturating_add(1)));
    let conn = db.connection().await.ok()?;
    conn.execute(DELETE, &[&q.settings.mapping, &below.0, &below.1])
        .await
        .ok()
}
