//! How one client request runs on a cluster: whole on the node of its keys' slot, split per
//! slot and merged (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH), on every primary (DBSIZE, KEYS,
//! SCAN, FLUSHALL, ...), or refused with the error Redis Cluster itself gives.
//!
//! SCAN's cursor walks the primaries in address order: `node cursor * 1024 + primary index`.

use super::slot;
use super::topology::Topology;
use crate::error::{reply_bytes, ProxyError};
use crate::protocol::command;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::{encode_array_header, encode_bulk};
use crate::protocol::scan::Value;
use crate::protocol::Request;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

/// Primaries a SCAN cursor can address.
pub const SCAN_NODES: u64 = 1024;

/// Where a part of a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Slot(u16),
    /// A primary, by its index in the topology.
    Node(usize),
    /// Any primary (keyless commands).
    Any,
}

/// One command sent for a client request.
#[derive(Debug, Clone)]
pub struct Part {
    pub target: Target,
    pub frame: Bytes,
}

/// How the parts' replies become the client's one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The only part's reply, as it is.
    Single,
    /// MGET: element `i` of the reply is element `.1` of part `.0`'s array.
    Array(Vec<(u32, u32)>),
    /// DEL, UNLINK, EXISTS, TOUCH, DBSIZE: the integers summed.
    Sum,
    /// MSET, FLUSHALL, SCRIPT LOAD, ...: the first error, else the first part's reply.
    First,
    /// KEYS: the arrays concatenated.
    Concat,
    /// SCAN on primary `node` of `nodes`: the cursor re-encoded.
    Scan { node: u64, nodes: u64 },
}

#[derive(Debug)]
pub enum Plan {
    Parts(Vec<Part>, Merge),
    /// Answered now, without the cluster.
    Reply(Bytes),
}

fn refuse(text: &str) -> Plan {
    Plan::Reply(reply_bytes(&ProxyError::Command(text.into())))
}

/// What a non-cluster Redis answers to CLUSTER, READONLY and READWRITE: a cluster-aware client
/// pointed at cacheside then treats it as the one Redis it is, and never sees node addresses.
const NO_CLUSTER: &str = "ERR This instance has cluster support disabled";
const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Decides how `req` runs on the cluster mapped by `topo`.
pub fn plan(req: &Request, topo: &Topology) -> Plan {
    let info = command::lookup(req.arg(0));
    let keys = info.key_indices(req);
    let whole = |target| Plan::Parts(vec![part(target, req.frame().clone())], Merge::Single);
    let Some(&first) = keys.first() else {
        return keyless(req, info.name, topo);
    };
    let s = slot::of(req.arg(first));
    if keys.iter().all(|&i| slot::of(req.arg(i)) == s) {
        return whole(Target::Slot(s));
    }
    match info.name {
        "MGET" => split(req, 1, Merge::Array(Vec::new())),
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => split(req, 1, Merge::Sum),
        // MSET's pairs are complete (the key table saw them); a stray last argument is left
        // to the node, which answers Redis's arity error.
        "MSET" if req.argc() % 2 == 1 => split(req, 2, Merge::First),
        "EVAL" => per_key(req).unwrap_or_else(|| refuse(CROSSSLOT)),
        _ => refuse(CROSSSLOT),
    }
}

/// The first line of a script of cacheside's that may run per slot, like DEL: its keys come in
/// threes (a key and two keys of the key's slot), its arguments are one shared, then one per
/// three keys, and its reply is an integer (summed). Write-behind's DEL/UNLINK is one.
pub const PER_KEY_SCRIPT: &str = "-- cacheside: per key\n";

/// An EVAL of a [`PER_KEY_SCRIPT`] over several slots: one EVAL per slot, with that slot's
/// threes of keys and their arguments, in the client's order. `None` for any other EVAL.
fn per_key(req: &Request) -> Option<Plan> {
    if req.argc() < 3 || !req.arg(1).starts_with(PER_KEY_SCRIPT.as_bytes()) {
        return None;
    }
    let numkeys: usize = std::str::from_utf8(req.arg(2)).ok()?.parse().ok()?;
    let groups = numkeys / 3;
    // Checked: numkeys is the client's number.
    let argc = numkeys.checked_add(4)?.checked_add(groups)?;
    if !numkeys.is_multiple_of(3) || req.argc() != argc {
        return None;
    }
    let shared = 3 + numkeys;
    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut index: HashMap<u16, usize> = HashMap::new();
    for g in 0..groups {
        let s = slot::of(req.arg(3 + 3 * g));
        let at = *index.entry(s).or_insert_with(|| {
            slots.push((s, Vec::new()));
            slots.len() - 1
        });
        slots[at].1.push(g);
    }
    let parts = slots
        .into_iter()
        .map(|(s, gs)| {
            let mut out = BytesMut::new();
            encode_array_header(&mut out, 3 + gs.len() * 4 + 1);
            encode_bulk(&mut out, req.arg(0));
            encode_bulk(&mut out, req.arg(1));
            encode_bulk(&mut out, (gs.len() * 3).to_string().as_bytes());
            for &g in &gs {
                for k in 0..3 {
                    encode_bulk(&mut out, req.arg(3 + 3 * g + k));
                }
            }
            encode_bulk(&mut out, req.arg(shared));
            for &g in &gs {
                encode_bulk(&mut out, req.arg(shared + 1 + g));
            }
            part(Target::Slot(s), out.freeze())
        })
        .collect();
    Some(Plan::Parts(parts, Merge::Sum))
}

fn part(target: Target, frame: Bytes) -> Part {
    Part { target, frame }
}

/// One command per slot, with the keys (each followed by `width - 1` values) of that slot in
/// the client's order.
fn split(req: &Request, width: usize, merge: Merge) -> Plan {
    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
    // Slot -> its part: a lookup, so a request of many keys over many slots stays linear.
    let mut index: HashMap<u16, usize> = HashMap::new();
    let mut places = Vec::new();
    for i in (1..req.argc()).step_by(width) {
        let s = slot::of(req.arg(i));
        let at = *index.entry(s).or_insert_with(|| {
            slots.push((s, Vec::new()));
            slots.len() - 1
        });
        places.push((at as u32, slots[at].1.len() as u32));
        slots[at].1.push(i);
    }
    let parts = slots
        .into_iter()
        .map(|(s, firsts)| {
            let mut out = BytesMut::new();
            encode_array_header(&mut out, 1 + firsts.len() * width);
            encode_bulk(&mut out, req.arg(0));
            for i in firsts {
                for j in i..i + width {
                    encode_bulk(&mut out, req.arg(j));
                }
            }
            part(Target::Slot(s), out.freeze())
        })
        .collect();
    let merge = match merge {
        Merge::Array(_) => Merge::Array(places),
        m => m,
    };
    Plan::Parts(parts, merge)
}

fn keyless(req: &Request, name: &str, topo: &Topology) -> Plan {
    let all = |merge| {
        let parts = (0..topo.primaries.len())
            .map(|n| part(Target::Node(n), req.frame().clone()))
            .collect();
        Plan::Parts(parts, merge)
    };
    match name {
        "DBSIZE" => all(Merge::Sum),
        "KEYS" => all(Merge::Concat),
        "FLUSHALL" | "FLUSHDB" => all(Merge::First),
        "SCRIPT" if req.arg_is(1, "LOAD") || req.arg_is(1, "FLUSH") => all(Merge::First),
        "FUNCTION"
            if ["LOAD", "FLUSH", "DELETE", "RESTORE"]
                .iter()
                .any(|s| req.arg_is(1, s)) =>
        {
            all(Merge::First)
        }
        "SCAN" => scan(req, topo),
        // A shard channel lives in its slot, like a key (PUBSUB SHARDNUMSUB and the like are
        // asked of any primary, as for other keyless commands).
        "SPUBLISH" if req.argc() == 3 => whole_slot(req, slot::of(req.arg(1))),
        "CLUSTER" | "READONLY" | "READWRITE" | "ASKING" => refuse(NO_CLUSTER),
        _ => Plan::Parts(vec![part(Target::Any, req.frame().clone())], Merge::Single),
    }
}

fn whole_slot(req: &Request, s: u16) -> Plan {
    Plan::Parts(
        vec![part(Target::Slot(s), req.frame().clone())],
        Merge::Single,
    )
}

/// SCAN with the client's cursor decoded into a primary and that primary's own cursor.
fn scan(req: &Request, topo: &Topology) -> Plan {
    if req.argc() < 2 {
        // The node answers Redis's arity error.
        return Plan::Parts(vec![part(Target::Any, req.frame().clone())], Merge::Single);
    }
    let nodes = topo.primaries.len() as u64;
    let cursor = std::str::from_utf8(req.arg(1))
        .ok()
        .and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return refuse("ERR invalid cursor");
    };
    let (node, inner) = (cursor % SCAN_NODES, cursor / SCAN_NODES);
    if node >= nodes {
        return refuse("ERR invalid cursor");
    }
    let mut out = BytesMut::new();
    encode_array_header(&mut out, req.argc());
    encode_bulk(&mut out, req.arg(0));
    encode_bulk(&mut out, inner.to_string().as_bytes());
    for i in 2..req.argc() {
        encode_bulk(&mut out, req.arg(i));
    }
    Plan::Parts(
        vec![part(Target::Node(node as usize), out.freeze())],
        Merge::Scan { node, nodes },
    )
}

/// The client's reply from the parts' replies (one complete frame each, in part order).
pub fn merge(how: &Merge, replies: &[Bytes], proto: Proto) -> Bytes {
    if let (Merge::Single, [one]) = (how, replies) {
        return one.clone();
    }
    let values: Option<Vec<Value<'_>>> = replies
        .iter()
        .map(|r| Value::parse(r, proto).map(|(v, _)| v))
        .collect();
    let Some(values) = values else {
        return reply_bytes(&ProxyError::UpstreamReply);
    };
    if let Some(i) = values.iter().position(|v| v.error().is_some()) {
        return replies[i].clone();
    }
    merge_values(how, replies, &values).unwrap_or_else(|| reply_bytes(&ProxyError::UpstreamReply))
}

fn merge_values(how: &Merge, replies: &[Bytes], values: &[Value<'_>]) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match how {
        Merge::Single | Merge::First => return replies.first().cloned(),
        Merge::Sum => {
            let mut sum = 0i64;
            for v in values {
                sum = sum.checked_add(v.integer()?)?;
            }
            reply::integer(&mut out, sum);
        }
        Merge::Concat => {
            let total = values
                .iter()
                .map(|v| v.items().map_or(0, |i| i.len()))
                .sum();
            encode_array_header(&mut out, total);
            for v in values {
                let mut items = v.items()?;
                while let Some(r) = items.next_range() {
                    out.extend_from_slice(v.bytes().get(r)?);
                }
            }
        }
        Merge::Array(places) => {
            let elements: Vec<Vec<&[u8]>> = values
                .iter()
                .map(|v| {
                    let mut items = v.items()?;
                    let mut els = Vec::with_capacity(items.len());
                    while let Some(r) = items.next_range() {
                        els.push(v.bytes().get(r)?);
                    }
                    Some(els)
                })
                .collect::<Option<_>>()?;
            encode_array_header(&mut out, places.len());
            for &(p, i) in places {
                out.extend_from_slice(elements.get(p as usize)?.get(i as usize)?);
            }
        }
        Merge::Scan { node, nodes } => {
            let v = values.first()?;
            let mut items = v.items()?;
            let inner: u64 = std::str::from_utf8(items.next()?.string()?)
                .ok()?
                .parse()
                .ok()?;
            let keys = items.next_range()?;
            let next = if inner != 0 {
                inner.checked_mul(SCAN_NODES)?.checked_add(*node)?
            } else if node + 1 < *nodes {
                node + 1
            } else {
                0
            };
            encode_array_header(&mut out, 2);
            encode_bulk(&mut out, next.to_string().as_bytes());
            out.extend_from_slice(v.bytes().get(keys)?);
        }
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests;
