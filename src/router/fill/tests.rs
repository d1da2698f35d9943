//! Unit tests of cached and mapped reads: planning a miss, completing it, rendering loaded values.

use super::load::render;
use super::*;
use crate::config::validate::{Coherence, HotSettings, RuleSettings};
use crate::loader::Loaded;
use crate::metrics::Metrics;
use std::time::Duration;

async fn tier() -> Arc<HotTier> {
    let t = HotTier::new(
        &HotSettings {
            max_bytes: 1 << 20,
            lru: false,
            coherence: Coherence::Ttl,
            channel: "c".into(),
            broadcast_batching: true,
            broadcast_packed: false,
            broadcast_relay: false,
            channel_per_prefix: false,
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
        &mut BytesMut::new(),
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
    let mut out = BytesMut::new();
    match read(
        Some(&t),
        None,
        "GET",
        &req,
        Proto::Resp2,
        &mut Fence::default(),
        &mut out,
    )
    .await
    {
        Outcome::Hit => assert_eq!(&out[..], b"$1\r\nv\r\n"),
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
        rule: t.rule(b"p:hit").unwrap(),
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
        &mut BytesMut::new(),
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
        &mut BytesMut::new(),
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
