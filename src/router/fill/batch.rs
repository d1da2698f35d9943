//! Loads of reads that arrived together (a pipeline of GETs of cold mapped keys, each its own
//! command): single-key loads of one mapping run as one query, mappings run concurrently, and
//! MGETs and reads answered while Redis is down load as they would alone.

use super::load::{futures_join, load_error, render, tier_fill};
use super::{finish, LoadStep, StepKind};
use crate::loader::{Loader, Mapping};
use crate::protocol::Proto;
use crate::tier::hot::Fill;
use bytes::Bytes;
use std::sync::Arc;

/// The distinct keys (with their captures) of one mapping to load.
type Group = (Arc<Mapping>, Vec<(Bytes, Vec<Bytes>)>);

/// One read waiting for a load: its step, whether Redis was down for it, its protocol.
pub type Waiting = (LoadStep, bool, Proto);

/// Completes every waiting read; replies (and what the tier stores) in the order given.
pub async fn finish_all(waiting: Vec<Waiting>, loader: &Loader) -> Vec<(Bytes, Vec<Fill>)> {
    let mut out: Vec<Option<(Bytes, Vec<Fill>)>> = (0..waiting.len()).map(|_| None).collect();
    // Per mapping, the distinct keys to load: a key asked for twice is loaded once.
    let mut groups: Vec<Group> = Vec::new();
    // Every load serves reads begun by this ticket (see `loader::flight`).
    let begun = waiting
        .iter()
        .map(|(step, _, _)| match &step.kind {
            StepKind::One(p) => p.begun,
            StepKind::Mget { loads, .. } => loads.iter().map(|(_, p)| p.begun).max().unwrap_or(0),
        })
        .max()
        .unwrap_or(0);
    let mut singles = Vec::new();
    let mut others = Vec::new();
    for (i, (step, down, proto)) in waiting.into_iter().enumerate() {
        let LoadStep { kind, fills } = step;
        match kind {
            StepKind::One(p) if !down => {
                let Some((m, caps)) = p.load.clone() else {
                    others.push((
                        i,
                        LoadStep {
                            kind: StepKind::One(p),
                            fills,
                        },
                        down,
                        proto,
                    ));
                    continue;
                };
                let g = match groups.iter().position(|(gm, _)| Arc::ptr_eq(gm, &m)) {
                    Some(g) => g,
                    None => {
                        groups.push((m, Vec::new()));
                        groups.len() - 1
                    }
                };
                let items = &mut groups[g].1;
                let at = match items.iter().position(|(k, _)| *k == p.key) {
                    Some(at) => at,
                    None => {
                        items.push((p.key.clone(), caps));
                        items.len() - 1
                    }
                };
                singles.push((i, p, fills, g, at, proto));
            }
            kind => others.push((i, LoadStep { kind, fills }, down, proto)),
        }
    }
    let loaded = futures_join(
        groups
            .iter()
            .map(|(m, items)| loader.load_many(m, items, false, begun)),
    )
    .await;
    let rest =
        futures_join(others.into_iter().map(|(i, step, down, proto)| async move {
            (i, finish(step, loader, down, proto).await)
        }))
        .await;
    for (i, r) in rest {
        out[i] = Some(r);
    }
    for (i, p, mut fills, g, at, proto) in singles {
        let reply = match loaded.get(g).and_then(|r| r.get(at)) {
            Some(Ok(value)) => {
                let reply = render(&p.view, value, proto, false);
                tier_fill(&p, &reply, value, &mut fills);
                reply
            }
            Some(Err(e)) => load_error(e),
            None => not_loaded(),
        };
        out[i] = Some((reply, fills));
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| (not_loaded(), Vec::new())))
        .collect()
}

fn not_loaded() -> Bytes {
    crate::error::reply_bytes(&crate::error::ProxyError::Internal("not loaded"))
}
