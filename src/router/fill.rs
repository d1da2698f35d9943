//! Hot-tier reads: answering GET, MGET, HGET, HGETALL, EXISTS and STRLEN from the tier, and for
//! misses, the upstream request that reads the value together with its remaining TTL (`PTTL`),
//! and the completion that splits the replies into what the client sees and what is stored.

use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::{encode_array_header, encode_bulk};
use crate::protocol::Request;
use crate::tier::hot::{Cached, Fill, HotTier, Rule, Stamp, View};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// A read that missed the tier: what to send upstream, and how to complete it.
#[derive(Debug)]
pub struct FillPlan {
    pub frame: Bytes,
    /// Replies the upstream sends for `frame`.
    pub upstream_replies: u32,
    pub kind: FillKind,
}

#[derive(Debug)]
pub struct Pending {
    pub key: Bytes,
    pub view: View,
    pub stamp: Stamp,
    pub rule: Arc<Rule>,
}

#[derive(Debug)]
pub enum FillKind {
    /// One command's reply, then the key's PTTL.
    One(Pending),
    /// MGET: the hits, and one upstream MGET of the misses followed by a PTTL per cacheable miss.
    Mget {
        parts: Vec<Part>,
        pending: Vec<Option<Pending>>,
    },
}

#[derive(Debug)]
pub enum Part {
    Hit(Cached),
    /// The n-th key of the upstream MGET.
    Miss(usize),
}

/// What answering a read from the tier came to.
pub enum Outcome {
    Hit(Bytes),
    Miss(Box<FillPlan>),
    /// Not a read the tier can serve (no rule, wrong arity, ...): forward as usual.
    Skip,
}

fn pttl(out: &mut BytesMut, key: &[u8]) {
    encode_array_header(out, 2);
    encode_bulk(out, b"PTTL");
    encode_bulk(out, key);
}

/// Serves `req` from the tier, or plans its fill. `name` is the table name of the command.
pub async fn read(tier: &HotTier, name: &str, req: &Request, proto: Proto) -> Outcome {
    let single = |view: View| (req.arg_bytes(1), view);
    let (key, view) = match (name, req.argc()) {
        ("GET", 2) => single(View::Get),
        ("EXISTS", 2) => single(View::Exists),
        ("HGET", 3) => single(View::HGet(req.arg_bytes(2))),
        ("HGETALL", 2) => single(View::HGetAll(proto)),
        ("STRLEN", 2) => {
            if tier.rule(req.arg(1)).is_none() || tier.invalidations_pending() {
                return Outcome::Skip;
            }
            return match tier.strlen(req.arg(1)).await {
                Some(b) => Outcome::Hit(b),
                None => Outcome::Skip,
            };
        }
        ("MGET", n) if n >= 2 => return mget(tier, req, proto).await,
        _ => return Outcome::Skip,
    };
    let Some(rule) = tier.rule(&key) else {
        return Outcome::Skip;
    };
    if let Some(hit) = tier.get(&key, &view).await {
        if tier.invalidations_pending() {
            return Outcome::Skip;
        }
        return Outcome::Hit(hit.render(proto));
    }
    if !tier.is_coherent() {
        return Outcome::Skip;
    }
    let mut frame = BytesMut::with_capacity(req.frame().len() + key.len() + 24);
    frame.extend_from_slice(req.frame());
    pttl(&mut frame, &key);
    Outcome::Miss(Box::new(FillPlan {
        frame: frame.freeze(),
        upstream_replies: 2,
        kind: FillKind::One(Pending {
            stamp: tier.stamp(&key),
            rule: rule.clone(),
            key,
            view,
        }),
    }))
}

async fn mget(tier: &HotTier, req: &Request, proto: Proto) -> Outcome {
    let n = req.argc() - 1;
    if (1..=n).all(|i| tier.rule(req.arg(i)).is_none()) {
        return Outcome::Skip;
    }
    let mut parts = Vec::with_capacity(n);
    let mut misses: Vec<(Bytes, Option<Arc<Rule>>)> = Vec::new();
    for i in 1..=n {
        let key = req.arg_bytes(i);
        let rule = tier.rule(&key).cloned();
        if rule.is_some() {
            if let Some(hit) = tier.get(&key, &View::Get).await {
                parts.push(Part::Hit(hit));
                continue;
            }
        }
        parts.push(Part::Miss(misses.len()));
        misses.push((key, rule));
    }
    if parts.iter().any(|p| matches!(p, Part::Hit(_))) && tier.invalidations_pending() {
        return Outcome::Skip;
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
    let coherent = tier.is_coherent();
    let mut frame = BytesMut::new();
    encode_array_header(&mut frame, misses.len() + 1);
    encode_bulk(&mut frame, b"MGET");
    for (k, _) in &misses {
        encode_bulk(&mut frame, k);
    }
    let mut upstream_replies = 1;
    let pending = misses
        .into_iter()
        .map(|(key, rule)| {
            let rule = rule.filter(|_| coherent)?;
            pttl(&mut frame, &key);
            upstream_replies += 1;
            Some(Pending {
                stamp: tier.stamp(&key),
                view: View::Get,
                rule,
                key,
            })
        })
        .collect();
    Outcome::Miss(Box::new(FillPlan {
        frame: frame.freeze(),
        upstream_replies,
        kind: FillKind::Mget { parts, pending },
    }))
}

/// Whether a reply frame is a null in either protocol.
fn is_nil(b: &[u8]) -> bool {
    b == b"$-1\r\n" || b == b"*-1\r\n" || b == b"_\r\n"
}

fn cached(b: Bytes) -> Cached {
    if is_nil(&b) {
        Cached::Nil
    } else {
        Cached::Value(b)
    }
}

fn pttl_of(b: &[u8]) -> Option<i64> {
    let text = b.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Splits `count` frames off the front of `replies`.
fn frames(replies: &Bytes, count: usize, proto: Proto) -> Option<Vec<(Bytes, ReplyKind)>> {
    let mut out = Vec::with_capacity(count);
    let mut pos = 0;
    for _ in 0..count {
        let f = reply::frame(&replies[pos..], proto).ok()??;
        out.push((replies.slice(pos..pos + f.len), f.kind));
        pos += f.len;
    }
    Some(out)
}

/// The elements of an array reply (RESP2 or RESP3), as slices of it.
fn elements(array: &Bytes, proto: Proto) -> Option<Vec<Bytes>> {
    let header_end = memchr::memchr(b'\n', array)? + 1;
    if !array.starts_with(b"*") {
        return None;
    }
    let n: usize = std::str::from_utf8(&array[1..header_end - 2])
        .ok()?
        .parse()
        .ok()?;
    let body = array.slice(header_end..);
    let parts = frames(&body, n, proto)?;
    Some(parts.into_iter().map(|(b, _)| b).collect())
}

/// Completes a fill: the bytes the client gets, and what to store.
pub fn complete(plan: &FillPlan, replies: &Bytes, proto: Proto) -> (Bytes, Vec<Fill>) {
    let Some(all) = frames(replies, plan.upstream_replies as usize, proto) else {
        return (
            reply::error_bytes("ERR cacheside: malformed upstream reply to a cached read"),
            Vec::new(),
        );
    };
    match &plan.kind {
        FillKind::One(p) => {
            let (first, kind) = all[0].clone();
            let fills = match (kind, all.get(1).and_then(|(b, _)| pttl_of(b))) {
                (ReplyKind::Value, Some(pttl)) => vec![Fill {
                    key: p.key.clone(),
                    view: p.view.clone(),
                    value: cached(first.clone()),
                    pttl,
                    stamp: p.stamp,
                    rule: p.rule.clone(),
                }],
                _ => Vec::new(),
            };
            (first, fills)
        }
        FillKind::Mget { parts, pending } => {
            let (array, kind) = &all[0];
            let values = match (kind, elements(array, proto)) {
                (ReplyKind::Value, Some(v)) if v.len() == pending.len() => v,
                // An error (e.g. WRONGTYPE never happens for MGET, but OOM could): pass it on.
                _ => return (array.clone(), Vec::new()),
            };
            let mut out = BytesMut::with_capacity(replies.len() + 64);
            encode_array_header(&mut out, parts.len());
            for p in parts {
                match p {
                    Part::Hit(c) => out.extend_from_slice(&c.render(proto)),
                    Part::Miss(i) => out.extend_from_slice(&values[*i]),
                }
            }
            let mut ttls = all[1..].iter().map(|(b, _)| pttl_of(b));
            let mut fills = Vec::new();
            for (i, p) in pending.iter().enumerate() {
                let Some(p) = p else { continue };
                if let Some(Some(pttl)) = ttls.next() {
                    fills.push(Fill {
                        key: p.key.clone(),
                        view: View::Get,
                        value: cached(values[i].clone()),
                        pttl,
                        stamp: p.stamp,
                        rule: p.rule.clone(),
                    });
                }
            }
            (out.freeze(), fills)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::{Coherence, HotSettings, RuleSettings};
    use crate::metrics::Metrics;
    use std::time::Duration;

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

    #[tokio::test]
    async fn a_get_miss_reads_the_value_and_its_ttl_then_a_hit_needs_no_upstream() {
        let t = tier().await;
        let req = Request::from_args(&["GET", "p:1"]);
        let Outcome::Miss(plan) = read(&t, "GET", &req, Proto::Resp2).await else {
            panic!("expected a miss")
        };
        assert_eq!(
            &plan.frame[..],
            b"*2\r\n$3\r\nGET\r\n$3\r\np:1\r\n*2\r\n$4\r\nPTTL\r\n$3\r\np:1\r\n"
        );
        let (client, fills) = complete(
            &plan,
            &Bytes::from_static(b"$1\r\nv\r\n:5000\r\n"),
            Proto::Resp2,
        );
        assert_eq!(&client[..], b"$1\r\nv\r\n");
        for f in fills {
            t.fill(f).await;
        }
        match read(&t, "GET", &req, Proto::Resp2).await {
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
        let Outcome::Miss(plan) = read(&t, "MGET", &req, Proto::Resp3).await else {
            panic!("expected a miss")
        };
        assert!(plan
            .frame
            .starts_with(b"*4\r\n$4\r\nMGET\r\n$3\r\np:a\r\n$5\r\nother\r\n$3\r\np:a\r\n"));
        assert_eq!(plan.upstream_replies, 3, "MGET + a PTTL per cacheable miss");
        let replies = Bytes::from_static(b"*3\r\n$1\r\na\r\n_\r\n$1\r\na\r\n:-1\r\n:-1\r\n");
        let (client, fills) = complete(&plan, &replies, Proto::Resp3);
        assert_eq!(&client[..], b"*4\r\n$1\r\na\r\n$1\r\nh\r\n_\r\n$1\r\na\r\n");
        assert_eq!(fills.len(), 2);
    }

    #[tokio::test]
    async fn errors_are_passed_on_and_never_stored() {
        let t = tier().await;
        let req = Request::from_args(&["HGETALL", "p:s"]);
        let Outcome::Miss(plan) = read(&t, "HGETALL", &req, Proto::Resp2).await else {
            panic!()
        };
        let wrong = Bytes::from_static(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:-1\r\n",
        );
        let (client, fills) = complete(&plan, &wrong, Proto::Resp2);
        assert!(client.starts_with(b"-WRONGTYPE"));
        assert!(fills.is_empty());
    }
}
