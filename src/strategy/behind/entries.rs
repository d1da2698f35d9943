//! Stream replies (XREADGROUP, XRANGE, XAUTOCLAIM) parsed into write-behind entries, each
//! with the stream it was read from, and the ids of entries deleted since they were delivered.

use super::apply::{Entry, StreamId};
use crate::protocol::scan::Value;
use crate::protocol::Proto;
use bytes::Bytes;

/// The entries of an XREADGROUP reply (`[[stream, [[id, [k, key, v, value]], ...]]]`), and the
/// ids of entries deleted since they were delivered (their fields are nil).
pub(super) fn read_group(reply: &Bytes, stream: &Bytes) -> (Vec<Entry>, Vec<Bytes>) {
    let Some((v, _)) = Value::parse(reply, Proto::Resp2) else {
        return (Vec::new(), Vec::new());
    };
    let Some(first) = v.items().and_then(|mut s| s.next()) else {
        return (Vec::new(), Vec::new());
    };
    match first.items().and_then(|mut i| {
        i.next();
        i.next()
    }) {
        Some(list) => entries_of(reply, list, stream),
        None => (Vec::new(), Vec::new()),
    }
}

/// XRANGE's reply: a list of entries.
pub(super) fn read_range(reply: &Bytes, stream: &Bytes) -> (Vec<Entry>, Vec<Bytes>) {
    match Value::parse(reply, Proto::Resp2) {
        Some((v, _)) => entries_of(reply, v, stream),
        None => (Vec::new(), Vec::new()),
    }
}

/// XAUTOCLAIM's reply: `[next cursor, [entries], [deleted ids]]`; `None` for an error.
pub(super) fn read_claim(reply: &Bytes, stream: &Bytes) -> Option<(Vec<Entry>, Vec<Bytes>)> {
    let (v, _) = Value::parse(reply, Proto::Resp2)?;
    let mut items = v.items()?;
    items.next();
    Some(match items.next() {
        Some(claimed) => entries_of(reply, claimed, stream),
        None => (Vec::new(), Vec::new()),
    })
}

fn entries_of(reply: &Bytes, list: Value<'_>, stream: &Bytes) -> (Vec<Entry>, Vec<Bytes>) {
    let (mut entries, mut gone) = (Vec::new(), Vec::new());
    let Some(items) = list.items() else {
        return (entries, gone);
    };
    for item in items {
        let Some(mut parts) = item.items() else {
            continue;
        };
        let Some(id_text) = parts.next().and_then(|i| i.string()) else {
            continue;
        };
        let id_text = reply.slice_ref(id_text);
        let Some(id) = StreamId::parse(&id_text) else {
            continue;
        };
        let fields = parts.next();
        let mut key = None;
        let mut value = None;
        let mut delete = false;
        if let Some(mut f) = fields.and_then(|f| f.items()) {
            while let (Some(name), Some(v)) = (f.next(), f.next()) {
                match (name.string(), v.string()) {
                    (Some(b"k"), Some(k)) => key = Some(reply.slice_ref(k)),
                    (Some(b"v"), Some(val)) => value = Some(reply.slice_ref(val)),
                    (Some(b"d"), Some(_)) => delete = true,
                    _ => {}
                }
            }
        }
        if delete && value.is_none() {
            value = Some(Bytes::new());
        }
        match (key, value) {
            (Some(key), Some(value)) => entries.push(Entry {
                stream: stream.clone(),
                id,
                id_text,
                key,
                value,
                delete,
            }),
            _ => gone.push(id_text),
        }
    }
    (entries, gone)
}
