//! Cached and mapped reads: answering GET, MGET, HGET, HGETALL, EXISTS and STRLEN from the hot
//! tier; for misses, the upstream request that reads the value together with what completing it
//! needs (the key's `PTTL` for the tier, the "not found" marker for a mapping); and the
//! completion, which either answers at once or, for a mapped key Redis does not hold, loads it
//! from PostgreSQL first.

use crate::error::ProxyError;
use crate::loader::{self, LoadError, Loaded, Loader, Mapping};
use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::{encode_array_header, encode_bulk};
use crate::protocol::scan::{integer, Value};
use crate::protocol::Request;
use crate::tier::hot::{Cached, Fill, HotTier, Rule, Stamp, View};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

mod batch;
pub use batch::finish_all;

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
    Hit(Bytes),
    Miss(Box<FillPlan>),
    /// Nothing to do for the tier or the loader: forward as usual.
    Skip,
}

/// Whether invalidations are pending (see `HotTier::invalidations_pending`), asked at most once
/// per read from the client: every request of one read was sent after whatever reply the
/// client had seen, so one check after the read covers them all and saves a syscall per hit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fence(Option<bool>);

impl Fence {
    /// Forgets the answer: the session calls this for each new read from the client.
    pub fn reset(&mut self) {
        self.0 = None;
    }

    fn pending(&mut self, tier: &HotTier) -> bool {
        *self.0.get_or_insert_with(|| tier.invalidations_pending())
    }
}

/// Serves `req` from the tier, or plans its fill. `name` is the table name of the command.
pub async fn read(
    tier: Option<&HotTier>,
    loader: Option<&Loader>,
    name: &str,
    req: &Request,
    proto: Proto,
    fence: &mut Fence,
) -> Outcome {
    let single = |view: View| (req.arg_bytes(1), view);
    let (key, view) = match (name, req.argc()) {
        ("GET", 2) => single(View::Get),
        ("EXISTS", 2) => single(View::Exists),
        ("HGET", 3) => single(View::HGet(req.arg_bytes(2))),
        ("HGETALL", 2) => single(View::HGetAll(proto)),
        ("STRLEN", 2) => {
            let Some(tier) = tier.filter(|t| t.rule(req.arg(1)).is_some() && !fence.pending(t))
            else {
                return Outcome::Skip;
            };
            return match tier.strlen(req.arg(1)).await {
                Some(b) => Outcome::Hit(b),
                None => Outcome::Skip,
            };
        }
        ("MGET", n) if n >= 2 => return mget(tier, loader, req, proto, fence).await,
        _ => return Outcome::Skip,
    };
    let rule = tier.and_then(|t| t.rule(&key).cloned());
    // The fence comes before the lookup: once it finds nothing pending, every invalidation
    // that reached this sidecar before the request was sent is applied, so what the lookup
    // finds is not older than it. (Checked after, an invalidation applied between the two
    // would let the value it removed be served.)
    if let (Some(t), Some(_)) = (tier, &rule) {
        if !fence.pending(t) {
            if let Some(hit) = t.get(&key, &view).await {
                return Outcome::Hit(hit.render(proto));
            }
        }
    }
    let hot = match (tier, rule) {
        (Some(t), Some(r)) if t.is_coherent() => Some((t.stamp(&key), r)),
        _ => None,
    };
    // EXISTS and STRLEN are not read through: only the value commands are.
    let load = match view {
        View::Exists => None,
        _ => loader.and_then(|l| l.resolve(&key)),
    };
    if hot.is_none() && load.is_none() {
        return Outcome::Skip;
    }
    let mut frame = BytesMut::with_capacity(req.frame().len() + 2 * key.len() + 64);
    frame.extend_from_slice(req.frame());
    let mut replies = 1;
    let mut p = Pending {
        key,
        view,
        hot,
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

/// Appends a pending key's PTTL (for the tier) and "not found" probe (for a mapping).
fn extras(frame: &mut BytesMut, replies: &mut usize, p: &mut Pending) {
    if p.hot.is_some() {
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
) -> Outcome {
    let n = req.argc() - 1;
    let cacheable = |k: &[u8]| tier.is_some_and(|t| t.rule(k).is_some());
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
            if let Some(hit) = t.get(&key, &View::Get).await {
                parts.push(Part::Hit(hit));
                continue;
            }
        }
        parts.push(Part::Miss(misses.len()));
        misses.push(key);
    }
    if misses.is_empty() {
        let mut out = BytesMut::new();
        encode_array_header(&mut out, n);
        for p in &parts {
            if let Part::Hit(c) = p {
                out.extend_from_slice(&c.render(proto));
            }
        }
        return Outcome::Hit(out.freeze());
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
                .and_then(|t| t.rule(&key).cloned().map(|r| (t.stamp(&key), r)));
            let mut p = Pending {
                load: loader.and_then(|l| l.resolve(&key)),
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
    let pttl = |p: &Pending| {
        p.pttl_at
            .and_then(|i| all.get(i))
            .and_then(|(b, _)| integer(b))
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

const WRONGTYPE: &[u8] = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";

/// The reply `view` gets for a loaded value, as Redis would give it once the value is filled.
fn render(view: &View, loaded: &Loaded, proto: Proto, in_mget: bool) -> Bytes {
    let mut out = BytesMut::new();
    match (view, loaded) {
        (_, Loaded::NotFound) if matches!(view, View::HGetAll(_)) => {
            reply::map_header(&mut out, 0, proto)
        }
        (_, Loaded::NotFound) => reply::null(&mut out, proto),
        (View::Get, Loaded::Value(v)) => reply::bulk(&mut out, v),
        (View::Get, Loaded::Hash(_)) if in_mget => reply::null(&mut out, proto),
        (View::HGet(field), Loaded::Hash(pairs)) => match pairs.iter().find(|(f, _)| f == field) {
            Some((_, v)) => reply::bulk(&mut out, v),
            None => reply::null(&mut out, proto),
        },
        (View::HGetAll(_), Loaded::Hash(pairs)) => {
            reply::map_header(&mut out, pairs.len(), proto);
            for (f, v) in pairs {
                reply::bulk(&mut out, f);
                reply::bulk(&mut out, v);
            }
        }
        _ => out.extend_from_slice(WRONGTYPE),
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

/// What the tier stores for a loaded key (answered `reply`).
fn tier_fill(p: &Pending, reply: &Bytes, loaded: &Loaded, fills: &mut Vec<Fill>) {
    let ttl = match (&p.load, loaded) {
        (Some((m, _)), Loaded::NotFound) => m.negative_ttl,
        (Some((m, _)), _) => m.ttl,
        _ => Duration::ZERO,
    };
    if !reply.starts_with(b"-") {
        fills.extend(fill_of(p, cached(reply.clone()), ttl.as_millis() as i64));
    }
}

/// Runs the loads a completion needs; returns the client's reply and what the tier stores.
pub async fn finish(
    step: LoadStep,
    loader: &Loader,
    upstream_down: bool,
    proto: Proto,
) -> (Bytes, Vec<Fill>) {
    let mut fills = step.fills;
    match step.kind {
        StepKind::One(p) => {
            let Some((m, caps)) = &p.load else {
                return (
                    crate::error::reply_bytes(&ProxyError::Internal("nothing to load")),
                    fills,
                );
            };
            match loader.load(m, &p.key, caps, upstream_down).await {
                Ok(loaded) => {
                    let reply = render(&p.view, &loaded, proto, false);
                    tier_fill(&p, &reply, &loaded, &mut fills);
                    (reply, fills)
                }
                Err(e) => (load_error(&e), fills),
            }
        }
        StepKind::Mget {
            mut elements,
            loads,
        } => {
            // Keys of one mapping load together (one query); mappings run concurrently.
            // A key asked for twice is loaded once (`same` maps each load to its first copy).
            let mut groups: Vec<(Arc<Mapping>, Vec<usize>)> = Vec::new();
            let mut same: Vec<usize> = Vec::with_capacity(loads.len());
            for (i, (_, p)) in loads.iter().enumerate() {
                if let Some(first) = loads[..i].iter().position(|(_, q)| q.key == p.key) {
                    same.push(first);
                    continue;
                }
                same.push(i);
                let (m, _) = p.load.as_ref().expect("only mapped keys are loaded");
                match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, m)) {
                    Some((_, idx)) => idx.push(i),
                    None => groups.push((m.clone(), vec![i])),
                }
            }
            let grouped = futures_join(groups.iter().map(|(m, idx)| {
                let items: Vec<(Bytes, Vec<Bytes>)> = idx
                    .iter()
                    .map(|&i| {
                        let p = &loads[i].1;
                        (
                            p.key.clone(),
                            p.load.as_ref().map(|(_, c)| c.clone()).unwrap_or_default(),
                        )
                    })
                    .collect();
                async move { loader.load_many(m, &items, upstream_down).await }
            }))
            .await;
            let mut results: Vec<Option<Result<Loaded, LoadError>>> =
                (0..loads.len()).map(|_| None).collect();
            for ((_, idx), rs) in groups.iter().zip(grouped) {
                for (&i, r) in idx.iter().zip(rs) {
                    results[i] = Some(r);
                }
            }
            let results: Vec<Result<Loaded, LoadError>> = (0..loads.len())
                .map(|i| {
                    results[same[i]]
                        .clone()
                        .expect("every first copy has a result")
                })
                .collect();
            for ((pos, p), result) in loads.iter().zip(results) {
                match result {
                    Ok(loaded) => {
                        let reply = render(&p.view, &loaded, proto, true);
                        tier_fill(p, &reply, &loaded, &mut fills);
                        elements[*pos] = Some(reply);
                    }
                    // MGET has no per-key errors: one failed load fails the command.
                    Err(e) => return (load_error(&e), Vec::new()),
                }
            }
            (assemble(&elements), fills)
        }
    }
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

fn load_error(e: &LoadError) -> Bytes {
    crate::error::reply_bytes(&ProxyError::Load(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::{Coherence, HotSettings, RuleSettings};
    use crate::metrics::Metrics;

    async fn tier() -> Arc<HotTier> {
        let t = HotTier::new(
            &HotSettings {
                max_bytes: 1 << 20,
                lru: false,
                coherence: Coherence::Ttl,
                channel: "c".into(),
                rules: vec![RuleSettings {
                    pattern: "p:*".into(),
                    ttl: Duration::from_secs(30),
                    max_value_size: 1 << 20,
                }],
            },
            Arc::new(Metrics::new(prometheus::Registry::new())),
        );
        t.set_coherent(true).await;
        t
    }

    fn done(c: Completion) -> (Bytes, Vec<Fill>) {
        match c {
            Completion::Done(b, f) => (b, f),
            Completion::Load(_) => panic!("no loader in these tests"),
        }
    }

    #[tokio::test]
    async fn a_get_miss_reads_the_value_and_its_ttl_then_a_hit_needs_no_upstream() {
        let t = tier().await;
        let req = Request::from_args(&["GET", "p:1"]);
        let Outcome::Miss(plan) = read(
            Some(&t),
            None,
            "GET",
            &req,
            Proto::Resp2,
            &mut Fence::default(),
        )
        .await
        else {
            panic!("expected a miss")
        };
        assert_eq!(
            &plan.frame[..],
            b"*2\r\n$3\r\nGET\r\n$3\r\np:1\r\n*2\r\n$4\r\nPTTL\r\n$3\r\np:1\r\n"
        );
        let (client, fills) = done(complete(
            *plan,
            &Bytes::from_static(b"$1\r\nv\r\n:5000\r\n"),
            Proto::Resp2,
        ));
        assert_eq!(&client[..], b"$1\r\nv\r\n");
        for f in fills {
            t.fill(f).await;
        }
        match read(
            Some(&t),
            None,
            "GET",
            &req,
            Proto::Resp2,
            &mut Fence::default(),
        )
        .await
        {
            Outcome::Hit(b) => assert_eq!(&b[..], b"$1\r\nv\r\n"),
            _ => panic!("expected a hit"),
        }
    }

    #[tokio::test]
    async fn mget_keeps_order_duplicates_and_nils_and_fetches_only_misses() {
        let t = tier().await;
        t.fill(Fill {
            key: Bytes::from_static(b"p:hit"),
            view: View::Get,
            value: Cached::Value(Bytes::from_static(b"$1\r\nh\r\n")),
            pttl: -1,
            stamp: t.stamp(b"p:hit"),
            rule: t.rule(b"p:hit").unwrap().clone(),
        })
        .await;
        let req = Request::from_args(&["MGET", "p:a", "p:hit", "other", "p:a"]);
        let Outcome::Miss(plan) = read(
            Some(&t),
            None,
            "MGET",
            &req,
            Proto::Resp3,
            &mut Fence::default(),
        )
        .await
        else {
            panic!("expected a miss")
        };
        assert!(plan
            .frame
            .starts_with(b"*4\r\n$4\r\nMGET\r\n$3\r\np:a\r\n$5\r\nother\r\n$3\r\np:a\r\n"));
        assert_eq!(plan.upstream_replies, 3, "MGET + a PTTL per cacheable miss");
        let replies = Bytes::from_static(b"*3\r\n$1\r\na\r\n_\r\n$1\r\na\r\n:-1\r\n:-1\r\n");
        let (client, fills) = done(complete(*plan, &replies, Proto::Resp3));
        assert_eq!(&client[..], b"*4\r\n$1\r\na\r\n$1\r\nh\r\n_\r\n$1\r\na\r\n");
        assert_eq!(fills.len(), 2);
    }

    #[tokio::test]
    async fn errors_are_passed_on_and_never_stored() {
        let t = tier().await;
        let req = Request::from_args(&["HGETALL", "p:s"]);
        let Outcome::Miss(plan) = read(
            Some(&t),
            None,
            "HGETALL",
            &req,
            Proto::Resp2,
            &mut Fence::default(),
        )
        .await
        else {
            panic!()
        };
        let wrong = Bytes::from_static(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:-1\r\n",
        );
        let (client, fills) = done(complete(*plan, &wrong, Proto::Resp2));
        assert!(client.starts_with(b"-WRONGTYPE"));
        assert!(fills.is_empty());
    }

    #[test]
    fn loaded_values_render_as_redis_would_answer_once_filled() {
        let hash = Loaded::Hash(vec![(
            Bytes::from_static(b"name"),
            Bytes::from_static(b"Lamp"),
        )]);
        let value = Loaded::Value(Bytes::from_static(b"{\"id\":1}"));
        assert_eq!(
            &render(&View::Get, &value, Proto::Resp2, false)[..],
            b"$8\r\n{\"id\":1}\r\n"
        );
        assert_eq!(
            &render(
                &View::HGet(Bytes::from_static(b"name")),
                &hash,
                Proto::Resp2,
                false
            )[..],
            b"$4\r\nLamp\r\n"
        );
        assert_eq!(
            &render(&View::HGetAll(Proto::Resp3), &hash, Proto::Resp3, false)[..],
            b"%1\r\n$4\r\nname\r\n$4\r\nLamp\r\n"
        );
        assert_eq!(
            &render(&View::Get, &Loaded::NotFound, Proto::Resp3, false)[..],
            b"_\r\n"
        );
        assert_eq!(
            &render(
                &View::HGetAll(Proto::Resp2),
                &Loaded::NotFound,
                Proto::Resp2,
                false
            )[..],
            b"*0\r\n"
        );
        assert!(render(&View::Get, &hash, Proto::Resp2, false).starts_with(b"-WRONGTYPE"));
    }
}
