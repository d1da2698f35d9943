//! The loads a completed read still needs: each mapping's keys in one query, the replies
//! rendered as Redis would give them once filled, and what the tier stores for them.

use super::{assemble, cached, fill_of, LoadStep, Pending, StepKind};
use crate::error::ProxyError;
use crate::loader::{LoadError, Loaded, Loader, Mapping};
use crate::protocol::reply::{self, Proto};
use crate::tier::hot::{Fill, View};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

const WRONGTYPE: &[u8] = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";

/// The reply `view` gets for a loaded value, as Redis would give it once the value is filled.
pub(super) fn render(view: &View, loaded: &Loaded, proto: Proto, in_mget: bool) -> Bytes {
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

/// What the tier stores for a loaded key (answered `reply`).
pub(super) fn tier_fill(p: &Pending, reply: &Bytes, loaded: &Loaded, fills: &mut Vec<Fill>) {
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
            match loader.load(m, &p.key, caps, upstream_down, p.begun).await {
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
            // Every load of the MGET serves reads begun by this ticket (see `loader::flight`).
            let begun = loads.iter().map(|(_, p)| p.begun).max().unwrap_or(0);
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
                async move { loader.load_many(m, &items, upstream_down, begun).await }
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
pub(super) async fn futures_join<F: std::future::Future>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output> {
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

pub(super) fn load_error(e: &LoadError) -> Bytes {
    crate::error::reply_bytes(&ProxyError::Load(e.to_string()))
}
