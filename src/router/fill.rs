//! Cached and mapped reads: answering GET, MGET, HGET, HGETALL, EXISTS and STRLEN from the hot
//! tier; for misses, the upstream request that reads the value together with what completing it
//! needs (the key's `PTTL` for the tier, the "not found" marker for a mapping); and the
//! completion, which either answers at once or, for a mapped key Redis does not hold, loads it
//! from PostgreSQL first.

use crate::error::ProxyError;
use crate::loader::{self, Loader, Mapping};
use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::{encode_array_header, encode_bulk};
use crate::protocol::scan::{integer, Value};
use crate::protocol::Request;
use crate::tier::hot::{Cached, Fill, HotTier, Rule, Stamp, View};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

mod batch;
mod fence;
pub use fence::Fence;
mod load;
#[cfg(test)]
mod tests;
pub use batch::finish_all;
pub use load::finish;

/// A read that missed the tier: what to send upstream, and how to complete it.
#[derive(Debug)]
pub struct FillPlan {
    pub frame: Bytes,
    /// Replies the upstream sends for `frame`.
    pub upstream_replies: u32,
    pub kind: FillKind,
}

/// One key of a read that missed: what to store, what to load, and where its extra replies are.
#[derive(Debug)]
pub struct Pending {
    pub key: Bytes,
    pub view: View,
    hot: Option<(Stamp, Arc<Rule>)>,
    load: Option<(Arc<Mapping>, Vec<Bytes>)>,
    /// The loader's ticket, taken before the upstream read is sent: a load that shares another
    /// read's value needs it (see `loader::flight`).
    begun: u64,
    /// Index of the key's PTTL reply (hot tier) and of its EXISTS on the "not found" marker.
    pttl_at: Option<usize>,
    negative_at: Option<usize>,
}

#[derive(Debug)]
pub enum FillKind {
    One(Pending),
    /// MGET: the hits, and one upstream MGET of the misses (one `Pending` per miss).
    Mget {
        parts: Vec<Part>,
        pending: Vec<Pending>,
    },
}

#[derive(Debug)]
pub enum Part {
    Hit(Cached),
    /// The n-th key of the upstream MGET.
    Miss(usize),
}

/// What answering a read came to.
pub enum Outcome {
    /// Answered: the reply was appended to the caller's buffer.
    Hit,
    Miss(Box<FillPlan>),
    /// Nothing to do for the tier or the loader: forward as usual.
    Skip,
}

/// Serves `req` from the tier, or plans its fill. `name` is the table name of the command.
pub async fn read(
    tier: Option<&HotTier>,
    loader: Option<&Loader>,
    name: &str,
    req: &Request,
    proto: Proto,
    fence: &mut Fence,
    out: &mut BytesMut,
) -> Outcome {
    let now = fence.at();
    let single = |view: View| (req.arg(1), view);
    let (key, view) = match (name, req.argc()) {
        ("GET", 2) => single(View::Get),
        ("EXISTS", 2) => single(View::Exists),
        ("HGET", 3) => single(View::HGet(req.arg_bytes(2))),
        ("HGETALL", 2) => single(View::HGetAll(proto)),
        ("STRLEN", 2) => {
            let Some(tier) = tier.filter(|t| t.caches(req.arg(1)) && !fence.pending(t)) else {
                return Outcome::Skip;
            };
            return match tier.strlen(req.arg(1)).await {
                Some(b) => {
                    out.extend_from_slice(&b);
                    Outcome::Hit
                }
                None => Outcome::Skip,
            };
        }
        ("MGET", n) if n >= 2 => return mget(tier, loader, req, proto, fence, out).await,
        _ => return Outcome::Skip,
    };
    let rule = tier.and_then(|t| t.rule(key));
    // The fence comes before the lookup: once it finds nothing pending, every invalidation
    // that reached this sidecar before the request was sent is applied, so what the lookup
    // finds is not older than it. (Checked after, an invalidation applied between the two
    // would let the value it removed be served.)
    if let (Some(t), Some(_)) = (tier, &rule) {
        if !fence.pending(t) && t.get_into(key, &view, now, proto, out).await {
            return Outcome::Hit;
        }
    }
    let hot = match (tier, rule) {
        (Some(t), Some(r)) if t.is_coherent() => Some((t.stamp(key), r)),
        _ => None,
    };
    // EXISTS and STRLEN are not read through: only the value commands are.
    let load = match view {
        View::Exists => None,
        _ => loader.and_then(|l| l.resolve(key)),
    };
    if hot.is_none() && load.is_none() {
        return Outcome::Skip;
    }
    let mut frame = BytesMut::with_capacity(req.frame().len() + 2 * key.len() + 64);
    frame.extend_from_slice(req.frame());
    let mut replies = 1;
    let mut p = Pending {
        key: req.arg_bytes(1),
        view,
        hot,
        begun: ticket(loader, &load),
        load,
        pttl_at: None,
        negative_at: None,
    };
    extras(&mut frame, &mut replies, &mut p);
    Outcome::Miss(Box::new(FillPlan {
        frame: frame.freeze(),
        upstream_replies: replies as u32,
        kind: FillKind::One(p),
    }))
}

/// A loader ticket for a read that may load.
fn ticket(loader: Option<&Loader>, load: &Option<(Arc<Mapping>, Vec<Bytes>)>) -> u64 {
    match (loader, load) {
        (Some(l), Some(_)) => l.ticket(),
        _ => 0,
    }
}

/// Appends a pending key's PTTL (for the tier) and "not found" probe (for a mapping).
fn extras(frame: &mut BytesMut, replies: &mut usize, p: &mut Pending) {
    let refresh = p
        .load
        .as_ref()
        .is_some_and(|(m, _)| m.refresh_ahead.is_some());
    if p.hot.is_some() || refresh {
        encode_array_header(frame, 2);
        encode_bulk(frame, b"PTTL");
        encode_bulk(frame, &p.key);
        p.pttl_at = Some(*replies);
        *replies += 1;
    }
    if p.load.is_some() {
        encode_array_header(frame, 2);
        encode_bulk(frame, b"EXISTS");
        encode_bulk(frame, &loader::negative_key(&p.key));
        p.negative_at = Some(*replies);
        *replies += 1;
    }
}

async fn mget(
    tier: Option<&HotTier>,
    loader: Option<&Loader>,
    req: &Request,
    proto: Proto,
    fence: &mut Fence,
    out: &mut BytesMut,
) -> Outcome {
    let now = fence.at();
    let n = req.argc() - 1;
    let cacheable = |k: &[u8]| tier.is_some_and(|t| t.caches(k));
    let mapped = |k: &[u8]| loader.is_some_and(|l| l.resolve(k).is_some());
    if (1..=n).all(|i| !cacheable(req.arg(i)) && !mapped(req.arg(i))) {
        return Outcome::Skip;
    }
    // As for one key: the fence before the lookups; with invalidations pending, every key
    // is read upstream.
    let lookups =
        !((1..=n).any(|i| cacheable(req.arg(i))) && tier.is_some_and(|t| fence.pending(t)));
    let mut parts = Vec::with_capacity(n);
    let mut misses: Vec<Bytes> = Vec::new();
    for i in 1..=n {
        let key = req.arg_bytes(i);
        if let (Some(t), true, true) = (tier, lookups, cacheable(&key)) {
            if let Some(hit) = t.get_at(&key, &View::Get, now).await {
                parts.push(Part::Hit(hit));
                continue;
            }
        }
        parts.push(Part::Miss(misses.len()));
        misses.push(key);
    }
    if misses.is_empty() {
        encode_array_header(out, n);
        for p in &parts {
            if let Part::Hit(c) = p {
                c.render_into(proto, out);
            }
        }
        return Outcome::Hit;
    }
    let mut frame = BytesMut::new();
    encode_array_header(&mut frame, misses.len() + 1);
    encode_bulk(&mut frame, b"MGET");
    for k in &misses {
        encode_bulk(&mut frame, k);
    }
    let mut replies = 1;
    let pending = misses
        .into_iter()
        .map(|key| {
            let hot = tier
                .filter(|t| t.is_coherent())
                .and_then(|t| t.rule(&key).map(|r| (t.stamp(&key), r)));
            let load = loader.and_then(|l| l.resolve(&key));
            let mut p = Pending {
                begun: ticket(loader, &load),
                load,
                key,
                view: View::Get,
                hot,
                pttl_at: None,
                negative_at: None,
            };
            extras(&mut frame, &mut replies, &mut p);
            p
        })
        .collect();
    Outcome::Miss(Box::new(FillPlan {
        frame: frame.freeze(),
        upstream_replies: replies as u32,
        kind: FillKind::Mget { parts, pending },
    }))
}

/// Whether a reply frame is a null (or, for HGETALL, an empty hash) in either protocol.
fn is_nil(b: &[u8]) -> bool {
    matches!(
        b,
        b"$-1\r\n" | b"*-1\r\n" | b"_\r\n" | b"*0\r\n" | b"%0\r\n"
    )
}

fn cached(b: Bytes) -> Cached {
    if b == b"$-1\r\n"[..] || b == b"_\r\n"[..] {
        Cached::Nil
    } else {
        Cached::Value(b)
    }
}

/// The elements of an array reply (RESP2 or RESP3), as slices of it; `None` for anything else.
fn elements(array: &Bytes, proto: Proto) -> Option<Vec<Bytes>> {
    if array.first() != Some(&b'*') {
        return None;
    }
    let (v, _) = Value::parse(array, proto)?;
    let mut items = v.items()?;
    let mut out = Vec::with_capacity(items.len());
    while let Some(r) = items.next_range() {
        out.push(array.slice(r));
    }
    Some(out)
}

/// A completed read: what the client sees and what the tier stores, or a load still to run.
pub enum Completion {
    Done(Bytes, Vec<Fill>),
    Load(Box<LoadStep>),
}

/// Keys Redis did not hold whose mapping must load them before the reply can be written.
pub struct LoadStep {
    kind: StepKind,
    fills: Vec<Fill>,
}

enum StepKind {
    One(Pending),
    /// Rendered elements per position; `None` where a load fills it in.
    Mget {
        elements: Vec<Option<Bytes>>,
        loads: Vec<(usize, Pending)>,
    },
}

fn fill_of(p: &Pending, value: Cached, pttl: i64) -> Option<Fill> {
    let (stamp, rule) = p.hot.clone()?;
    Some(Fill {
        key: p.key.clone(),
        view: p.view.clone(),
        value,
        pttl,
        stamp,
        rule,
    })
}

/// What a mapped key that Redis does not hold comes to: answered nil from a remembered
/// "not found", or to be loaded.
enum Missing {
    Negative(i64),
    Load,
}

fn missing(p: &Pending, all: &[(Bytes, ReplyKind)]) -> Option<Missing> {
    let (m, _) = p.load.as_ref()?;
    let marker = p
        .negative_at
        .and_then(|i| all.get(i))
        .and_then(|(b, _)| integer(b));
    Some(if marker == Some(1) {
        m.metrics.negative_hits.inc();
        Missing::Negative(m.negative_ttl.as_millis() as i64)
    } else {
        Missing::Load
    })
}

/// Completes a read from the upstream's replies.
pub fn complete(plan: FillPlan, replies: &Bytes, proto: Proto) -> Completion {
    let Some(all) = reply::split(replies, plan.upstream_replies as usize, proto) else {
        return Completion::Done(
            crate::error::reply_bytes(&ProxyError::UpstreamReply),
            Vec::new(),
        );
    };
    // Refresh-ahead: a value found in its mapping's window asks for a reload, and the hot tier
    // keeps it only until the window begins, so reads then reach Redis and see it.
    let pttl = |p: &Pending| {
        let t = p
            .pttl_at
            .and_then(|i| all.get(i))
            .and_then(|(b, _)| integer(b))?;
        Some(
            match (
                &p.load,
                p.load.as_ref().and_then(|(m, _)| m.refresh_window_ms()),
            ) {
                (Some((m, _)), Some(window)) => {
                    m.maybe_refresh(&p.key, t);
                    if t > window {
                        t - window
                    } else {
                        t
                    }
                }
                _ => t,
            },
        )
    };
    match plan.kind {
        FillKind::One(p) => {
            let (first, kind) = all[0].clone();
            if kind != ReplyKind::Value {
                return Completion::Done(first, Vec::new());
            }
            if is_nil(&first) {
                match missing(&p, &all) {
                    Some(Missing::Load) => {
                        return Completion::Load(Box::new(LoadStep {
                            kind: StepKind::One(p),
                            fills: Vec::new(),
                        }))
                    }
                    Some(Missing::Negative(ttl)) => {
                        let fills = fill_of(&p, cached(first.clone()), ttl)
                            .into_iter()
                            .collect();
                        return Completion::Done(first, fills);
                    }
                    None => {}
                }
            }
            let fills = pttl(&p)
                .and_then(|t| fill_of(&p, cached(first.clone()), t))
                .into_iter()
                .collect();
            Completion::Done(first, fills)
        }
        FillKind::Mget { parts, pending } => {
            let (array, kind) = &all[0];
            let values = match (kind, elements(array, proto)) {
                (ReplyKind::Value, Some(v)) if v.len() == pending.len() => v,
                _ => return Completion::Done(array.clone(), Vec::new()),
            };
            let mut fills = Vec::new();
            let mut loads = Vec::new();
            let mut elements: Vec<Option<Bytes>> = Vec::with_capacity(parts.len());
            let mut pending: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
            for part in &parts {
                match part {
                    Part::Hit(c) => elements.push(Some(c.render(proto))),
                    Part::Miss(i) => {
                        let value = values[*i].clone();
                        let Some(p) = pending[*i].take() else {
                            // The same missing key twice: the first position resolves both.
                            elements.push(Some(value));
                            continue;
                        };
                        if is_nil(&value) {
                            match missing(&p, &all) {
                                Some(Missing::Load) => {
                                    elements.push(None);
                                    loads.push((elements.len() - 1, p));
                                    continue;
                                }
                                Some(Missing::Negative(ttl)) => {
                                    fills.extend(fill_of(&p, Cached::Nil, ttl));
                                    elements.push(Some(value));
                                    continue;
                                }
                                None => {}
                            }
                        }
                        if let Some(t) = pttl(&p) {
                            fills.extend(fill_of(&p, cached(value.clone()), t));
                        }
                        elements.push(Some(value));
                    }
                }
            }
            if loads.is_empty() {
                return Completion::Done(assemble(&elements), fills);
            }
            Completion::Load(Box::new(LoadStep {
                kind: StepKind::Mget { elements, loads },
                fills,
            }))
        }
    }
}

fn assemble(elements: &[Option<Bytes>]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(elements.iter().flatten().map(|e| e.len()).sum::<usize>() + 16);
    encode_array_header(&mut out, elements.len());
    for e in elements.iter().flatten() {
        out.extend_from_slice(e);
    }
    out.freeze()
}

/// The load of a single mapped read whose upstream request failed (Redis unavailable).
pub fn degraded(plan: FillPlan) -> Option<LoadStep> {
    match plan.kind {
        FillKind::One(p) if p.load.is_some() => Some(LoadStep {
            kind: StepKind::One(Pending { hot: None, ..p }),
            fills: Vec::new(),
        }),
        _ => None,
    }
}
