//! Unit tests of the hot tier: the fill/invalidate race, writes in flight, views, the byte bound.

use super::*;

pub(super) fn tier(max: u64) -> Arc<HotTier> {
    let settings = HotSettings {
        max_bytes: max,
        lru: false,
        coherence: settings::Coherence::Ttl,
        channel: "c".into(),
        broadcast_batching: true,
        broadcast_packed: false,
        broadcast_relay: false,
        channel_per_prefix: false,
        rules: vec![RuleSettings {
            pattern: "p:*".into(),
            ttl: Duration::from_secs(30),
            max_value_size: 1024,
        }],
    };
    HotTier::new(
        &settings,
        Arc::new(Metrics::new(prometheus::Registry::new())),
    )
}

fn fill(t: &HotTier, key: &'static str, value: &'static [u8], stamp: Stamp) -> Fill {
    Fill {
        key: Bytes::from_static(key.as_bytes()),
        view: View::Get,
        value: Cached::Value(Bytes::from_static(value)),
        pttl: -1,
        stamp,
        rule: t.rule(key.as_bytes()).unwrap(),
    }
}

#[tokio::test]
async fn a_fill_that_raced_an_invalidation_is_not_stored() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    let stamp = t.stamp(b"p:1");
    // The write's invalidation lands while the read is in flight.
    t.invalidate(b"p:1", InvalidationSource::LocalWrite).await;
    t.fill(fill(&t, "p:1", b"$3\r\nold\r\n", stamp)).await;
    assert_eq!(t.get(b"p:1", &View::Get).await, None);
    // A fill that started after the write is stored.
    let stamp = t.stamp(b"p:1");
    t.fill(fill(&t, "p:1", b"$3\r\nnew\r\n", stamp)).await;
    assert_eq!(
        t.get(b"p:1", &View::Get).await,
        Some(Cached::Value(Bytes::from_static(b"$3\r\nnew\r\n")))
    );
}

#[tokio::test]
async fn nothing_is_served_or_kept_while_a_write_to_the_key_is_in_flight() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    t.fill(fill(&t, "p:w", b"$3\r\nold\r\n", t.stamp(b"p:w")))
        .await;
    let guard = t.begin_write(vec![Bytes::from_static(b"p:w")], false);
    t.evict(b"p:w").await;
    // A fill that starts after the write was sent, but may read Redis before it runs.
    let stamp = t.stamp(b"p:w");
    t.fill(fill(&t, "p:w", b"$3\r\nold\r\n", stamp)).await;
    assert_eq!(
        t.get(b"p:w", &View::Get).await,
        None,
        "not kept while the write is in flight"
    );
    guard.complete().await;
    assert_eq!(t.get(b"p:w", &View::Get).await, None);
    let stamp = t.stamp(b"p:w");
    t.fill(fill(&t, "p:w", b"$3\r\nnew\r\n", stamp)).await;
    assert!(
        t.get(b"p:w", &View::Get).await.is_some(),
        "cached again once the write is answered"
    );
    // A guard dropped unanswered releases the key too.
    drop(t.begin_write(vec![Bytes::from_static(b"p:w")], false));
    let stamp = t.stamp(b"p:w");
    t.fill(fill(&t, "p:w", b"$1\r\nx\r\n", stamp)).await;
    assert!(t.get(b"p:w", &View::Get).await.is_some());
}

#[tokio::test]
async fn exists_and_strlen_are_answered_from_a_cached_get() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    t.fill(fill(&t, "p:2", b"$5\r\nhello\r\n", t.stamp(b"p:2")))
        .await;
    assert_eq!(
        t.get(b"p:2", &View::Exists).await,
        Some(Cached::Value(Bytes::from_static(b":1\r\n")))
    );
    assert_eq!(t.strlen(b"p:2").await.as_deref(), Some(&b":5\r\n"[..]));
}

#[tokio::test]
async fn the_upstream_ttl_caps_the_view() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    let mut f = fill(&t, "p:3", b"$1\r\nx\r\n", t.stamp(b"p:3"));
    f.pttl = 40;
    t.fill(f).await;
    assert!(t.get(b"p:3", &View::Get).await.is_some());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(t.get(b"p:3", &View::Get).await, None);
}

#[tokio::test]
async fn nothing_is_served_or_stored_while_not_coherent() {
    let t = tier(1 << 20);
    t.fill(fill(&t, "p:4", b"$1\r\nx\r\n", t.stamp(b"p:4")))
        .await;
    assert_eq!(t.get(b"p:4", &View::Get).await, None);
}

#[tokio::test]
async fn the_byte_bound_holds_under_a_workload_ten_times_larger() {
    let t = tier(64 * 1024);
    t.set_coherent(true).await;
    let value = Bytes::from(vec![b'v'; 600]);
    for i in 0..1000 {
        let key = Bytes::from(format!("p:{i}"));
        t.fill(Fill {
            key: key.clone(),
            view: View::Get,
            value: Cached::Value(value.clone()),
            pttl: -1,
            stamp: t.stamp(&key),
            rule: t.rule(&key).unwrap(),
        })
        .await;
    }
    t.sync().await;
    assert!(t.weighted_size() <= 64 * 1024, "{}", t.weighted_size());
    assert!(t.entry_count() > 10);
    // The read path holds nothing moka evicted: the bound covers what is served.
    let mut served = 0;
    for i in 0..1000 {
        let key = format!("p:{i}");
        if t.get(key.as_bytes(), &View::Get).await.is_some() {
            served += 1;
            assert!(
                t.cache.contains_key(key.as_bytes()),
                "{key} served, not held"
            );
        }
    }
    assert!(served > 10, "{served}");
}

#[tokio::test]
async fn concurrent_fills_and_evictions_leave_the_read_path_within_moka() {
    let t = tier(32 * 1024);
    t.set_coherent(true).await;
    let value = Bytes::from(vec![b'v'; 500]);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (t, value) = (t.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..2000 {
                // Overlapping keys: puts race each other and moka's listener.
                let key = Bytes::from(format!("p:{}", (i * 7 + w) % 300));
                t.fill(Fill {
                    key: key.clone(),
                    view: View::Get,
                    value: Cached::Value(value.clone()),
                    pttl: -1,
                    stamp: t.stamp(&key),
                    rule: t.rule(&key).unwrap(),
                })
                .await;
                if i % 5 == 0 {
                    let _ = t.get(&key, &View::Get).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    t.sync().await;
    for i in 0..300 {
        let key = format!("p:{i}");
        if t.get(key.as_bytes(), &View::Get).await.is_some() {
            assert!(
                t.cache.contains_key(key.as_bytes()),
                "{key} served, not held"
            );
        }
    }
}

#[test]
fn a_late_removal_keeps_a_newer_put() {
    let f = front::Front::new();
    let key = Bytes::from_static(b"k");
    let h = f.hash(&key);
    let held = |id| front::Held {
        key: front::Key::new(&key),
        id,
        slots: Slots::new(),
    };
    assert!(f.put(held(2), h, || true));
    // An older put that lost the race is not kept over a newer one.
    f.put(held(1), h, || true);
    f.remove(&key, h, 1);
    assert!(f.contains(&key, h), "removing id 1 keeps id 2");
    f.remove(&key, h, 2);
    assert!(!f.contains(&key, h));
}

#[test]
fn a_put_whose_admission_fails_leaves_nothing() {
    let f = front::Front::new();
    let key = Bytes::from_static(b"k");
    let h = f.hash(&key);
    let held = front::Held {
        key: front::Key::new(&key),
        id: 1,
        slots: Slots::new(),
    };
    assert!(!f.put(held, h, || false));
    assert!(!f.contains(&key, h));
}

/// A history checker at the tier's level: fillers read the current version and fill it, a
/// writer moves the version on and invalidates, readers compare every hit with the version
/// acknowledged before the read began. A fill whose stamp check passed just before an
/// invalidation must not become visible after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_hit_is_older_than_an_acknowledged_invalidation() {
    use std::sync::atomic::AtomicBool;
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    let version = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rule = t.rule(b"p:race").unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        let (t, version, stop, rule) = (t.clone(), version.clone(), stop.clone(), rule.clone());
        fillers.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let stamp = t.stamp(b"p:race");
                let v = version.load(SeqCst);
                t.fill(Fill {
                    key: Bytes::from_static(b"p:race"),
                    view: View::Get,
                    value: Cached::Value(Bytes::from(v.to_string())),
                    pttl: -1,
                    stamp,
                    rule: rule.clone(),
                })
                .await;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (t, acked, stop) = (t.clone(), acked.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut hits, mut stale) = (0u64, 0u64);
            while !stop.load(SeqCst) {
                let floor = acked.load(SeqCst);
                if let Some(Cached::Value(b)) = t.get(b"p:race", &View::Get).await {
                    hits += 1;
                    let seen: u64 = std::str::from_utf8(&b).unwrap().parse().unwrap();
                    if seen < floor {
                        stale += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            (hits, stale)
        }));
    }
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let v = version.fetch_add(1, SeqCst) + 1;
        t.invalidate(b"p:race", InvalidationSource::LocalWrite)
            .await;
        acked.store(v, SeqCst);
        tokio::task::yield_now().await;
    }
    stop.store(true, SeqCst);
    let (mut hits, mut stale) = (0, 0);
    for r in readers {
        let (h, s) = r.await.unwrap();
        hits += h;
        stale += s;
    }
    for f in fillers {
        f.await.unwrap();
    }
    assert!(hits > 100, "the readers were served hits ({hits})");
    assert_eq!(
        stale, 0,
        "{stale} of {hits} hits were older than an acknowledged invalidation"
    );
}

#[tokio::test]
async fn forgetting_a_key_takes_out_a_fill_that_shared_its_load() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    // A read that shared a load stored the value before the loader learned Redis did not
    // take it: forgetting the key must take the value out, as no invalidation will.
    t.fill(fill(&t, "p:f", b"$3\r\nold\r\n", t.stamp(b"p:f")))
        .await;
    assert!(t.get(b"p:f", &View::Get).await.is_some());
    t.forget(b"p:f");
    assert_eq!(t.get(b"p:f", &View::Get).await, None);
}

/// A publisher that counts its PUBLISHes and the keys in them, answers after `delay`, and
/// reports `ok`.
fn counting_publisher(
    sent: Arc<AtomicU64>,
    keys: Arc<AtomicU64>,
    delay: Duration,
    ok: bool,
) -> Publish {
    Box::new(move |cmd: Bytes| {
        sent.fetch_add(1, SeqCst);
        let n = cmd.windows(4).filter(|w| w == b"\r\np:").count();
        keys.fetch_add(n as u64, SeqCst);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            ok.then(|| Bytes::from_static(b":1\r\n"))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_overlap_an_announcement_share_the_next_publish() {
    let t = tier(1 << 20);
    t.start_broadcast(Broadcast {
        shard: false,
        channel: Bytes::from_static(b"c"),
        id: Bytes::from_static(b"me"),
        per_prefix: false,
        packed: false,
    });
    let (sent, keys) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    t.set_publisher(counting_publisher(
        sent.clone(),
        keys.clone(),
        Duration::from_millis(20),
        true,
    ));
    let mut waits = Vec::new();
    for i in 0..50 {
        let t = t.clone();
        waits.push(tokio::spawn(async move {
            t.announce(vec![Bytes::from(format!("p:{i}"))], false).await
        }));
    }
    for w in waits {
        assert!(w.await.unwrap(), "every announcement was answered");
    }
    let sent = sent.load(SeqCst);
    assert!(sent <= 5, "50 announcements went in {sent} PUBLISHes");
    assert_eq!(keys.load(SeqCst), 50, "every key was announced once");
    // The first write with nothing in flight carries its own PUBLISH; while it is out, the next
    // one is batched.
    let first = t.announce_inline().expect("nothing is announcing");
    assert!(t.announce_inline().is_none());
    drop(first);
    assert!(t.announce_inline().is_some());
}

#[tokio::test]
async fn a_failed_publish_fails_the_writes_it_announced() {
    let t = tier(1 << 20);
    t.start_broadcast(Broadcast {
        shard: false,
        channel: Bytes::from_static(b"c"),
        id: Bytes::from_static(b"me"),
        per_prefix: false,
        packed: false,
    });
    let (sent, keys) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    t.set_publisher(counting_publisher(sent, keys, Duration::ZERO, false));
    assert!(!t.announce(vec![Bytes::from_static(b"p:1")], false).await);
}

#[test]
fn keys_held_inline_and_shared_are_found_and_removed_alike() {
    let f = front::Front::new();
    for len in [0, 1, 29, 30, 31, 200] {
        let key = Bytes::from(vec![b'k'; len]);
        let other = Bytes::from(vec![b'j'; len.max(1)]);
        let h = f.hash(&key);
        let held = front::Held {
            key: front::Key::new(&key),
            id: 1,
            slots: Slots::new(),
        };
        assert_eq!(held.key.as_slice(), &key[..], "a key of {len} bytes");
        assert!(f.put(held, h, || true));
        assert!(f.contains(&key, h), "a key of {len} bytes is found");
        assert!(!f.contains(&other, f.hash(&other)), "another key is not");
        f.remove(&key, h, 1);
        assert!(!f.contains(&key, h), "a key of {len} bytes is removed");
    }
}

/// A packed announcement from another sidecar evicts exactly the keys it names; one that does
/// not unpack empties the tier (which keys it meant is unknown); ours are skipped.
#[tokio::test]
async fn packed_announcements_evict_their_keys_and_a_broken_one_empties_the_tier() {
    let t = tier(1 << 20);
    t.set_coherent(true).await;
    let keys = ["p:1", "p:10", "p:2", "p:3"];
    let put = |k: &'static str| fill(&t, k, b"$1\r\nv\r\n", t.stamp(k.as_bytes()));
    for k in keys {
        t.fill(put(k)).await;
    }
    let b = Broadcast {
        shard: false,
        channel: Bytes::from_static(b"c"),
        id: Bytes::from_static(b"other"),
        per_prefix: false,
        packed: true,
    };
    let named = [Bytes::from_static(b"p:1"), Bytes::from_static(b"p:10")];
    let msg = b.message(&named, false);
    assert!(
        msg.windows(7).any(|w| w == b"$1\r\nP\r\n"),
        "packed: {msg:?}"
    );
    let me = Bytes::from_static(b"me");
    super::subscribe::apply_broadcast(&t, &msg, &me).await;
    let held = |k: &str| t.holds(k.as_bytes());
    assert!(!held("p:1") && !held("p:10"), "named keys evicted");
    assert!(held("p:2") && held("p:3"), "other keys kept");
    // Our own announcement: our writes evicted locally already.
    super::subscribe::apply_broadcast(&t, &msg, &Bytes::from_static(b"other")).await;
    assert!(held("p:2"));
    // A packing that does not unpack.
    let broken = crate::protocol::request::encode_command(&[&b"other"[..], b"P", &[5, 1, b'x']]);
    super::subscribe::apply_broadcast(&t, &broken, &me).await;
    assert!(
        !held("p:2") && !held("p:3"),
        "a broken announcement empties the tier"
    );
}
