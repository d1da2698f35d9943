use super::flush::Move;
use super::*;

fn counters(threshold: Option<u64>) -> Arc<Counters> {
    counters_on(threshold, false)
}

fn counters_on(threshold: Option<u64>, cluster: bool) -> Arc<Counters> {
    Counters::new(
        vec![CounterSettings {
            name: "views".into(),
            pattern: KeyPattern::parse("product:{id}:views").unwrap(),
            flush_query: "UPDATE products SET views = views + $2 WHERE id = $1".into(),
            flush_every: Duration::from_secs(1),
            flush_threshold: threshold,
            sweep_every: Duration::from_secs(60),
        }],
        &prometheus::Registry::new(),
        Arc::new(AtomicBool::new(cluster)),
    )
}

fn args(frame: &Bytes) -> Vec<Vec<u8>> {
    use crate::protocol::request::{parse, Step};
    let Ok(Step::Request(p)) = parse(frame, 0, &Default::default()) else {
        panic!("not one request: {frame:?}");
    };
    Request::from_parsed(frame, p)
        .args()
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn each_incr_family_command_becomes_the_script_with_its_own_increment() {
    let c = counters(None);
    let cases: [(&[&str], &str, &str); 4] = [
        (&["INCR", "product:7:views"], "INCRBY", "1"),
        (&["INCRBY", "product:7:views", "5"], "INCRBY", "5"),
        (&["DECR", "product:7:views"], "DECRBY", "1"),
        (&["DECRBY", "product:7:views", "x"], "DECRBY", "x"),
    ];
    for (cmd, op, by) in cases {
        let req = Request::from_args(cmd);
        let out = c.rewrite(cmd[0], &req).expect("a counter key is rewritten");
        let a = args(&out);
        assert_eq!(a[0], b"EVAL");
        assert_eq!(a[1], INCR_SCRIPT.as_bytes());
        assert_eq!(a[2], b"3");
        assert_eq!(a[3], b"product:7:views");
        assert_eq!(a[4], b"cacheside:counter:pending:{product:7:views}");
        assert_eq!(a[5], b"cacheside:counter:dirty:views");
        assert_eq!(a[6], op.as_bytes());
        // Passed through untouched: a bad increment gets Redis's own error.
        assert_eq!(a[7], by.as_bytes());
    }
}

#[test]
fn on_a_cluster_every_key_of_the_script_shares_the_counter_keys_slot() {
    use crate::tier::redis::cluster::slot;
    let c = counters_on(None, true);
    for key in [
        "product:7:views",
        "product:{7}:views",
        "product:a}b:views",
        "product:{}:views",
    ] {
        let out = c
            .rewrite("INCR", &Request::from_args(&["INCR", key]))
            .expect("a counter key is rewritten");
        let a = args(&out);
        let s = slot::of(key.as_bytes());
        for k in &a[3..6] {
            assert_eq!(slot::of(k), s, "{key}: {}", String::from_utf8_lossy(k));
        }
        assert!(a[5].starts_with(b"cacheside:counter:dirty:{"), "{key}");
        assert!(a[5].ends_with(b"}:views"), "{key}");
        // The pending key is named as on one Redis wherever that hashes right.
        if !key.contains('}') || key.contains("{7}") {
            assert_eq!(
                a[4],
                c.list[0].names(key.as_bytes(), false).pending.to_vec()
            );
        }
        // The slot is marked for the flusher.
        assert!(c.list[0].marks.take().contains(&s));
    }
    // The take script's keys, as the flusher names them, share the slot too.
    let n = c.list[0].names(b"product:{7}:views", true);
    let s = slot::of(b"{7}");
    assert_eq!(
        [&n.pending, &n.dirty, &n.moves].map(|k| slot::of(k)),
        [s, s, s]
    );
}

#[test]
fn on_one_redis_the_names_are_those_of_every_release_so_far() {
    let c = counters(None);
    let n = c.list[0].names(b"product:7:views", false);
    assert_eq!(
        &n.pending[..],
        b"cacheside:counter:pending:{product:7:views}"
    );
    assert_eq!(&n.dirty[..], b"cacheside:counter:dirty:views");
    assert_eq!(&n.moves[..], b"cacheside:counter:moves:views");
    c.rewrite("INCR", &Request::from_args(&["INCR", "product:7:views"]));
    assert!(
        c.list[0].marks.take().is_empty(),
        "no slots outside cluster mode"
    );
}

#[test]
fn other_keys_commands_and_arities_pass_through() {
    let c = counters(None);
    let r = |a: &[&str]| c.rewrite(a[0], &Request::from_args(a));
    assert!(r(&["INCR", "product:7"]).is_none());
    assert!(r(&["INCR", "product:7:likes"]).is_none());
    assert!(r(&["INCRBYFLOAT", "product:7:views", "1.5"]).is_none());
    assert!(r(&["INCR", "product:7:views", "extra"]).is_none());
    assert!(r(&["INCRBY", "product:7:views"]).is_none());
    assert!(r(&["GET", "product:7:views"]).is_none());
}

#[test]
fn a_key_past_the_threshold_is_queued_once_for_an_early_flush() {
    let c = counters(Some(10));
    let incr = Request::from_args(&["INCRBY", "product:1:views", "4"]);
    let decr = Request::from_args(&["DECRBY", "product:1:views", "1"]);
    c.rewrite("INCRBY", &incr);
    c.rewrite("INCRBY", &incr);
    c.rewrite("DECRBY", &decr);
    assert!(c.take_urgent().is_empty(), "7 is under 10");
    c.rewrite("INCRBY", &incr);
    let urgent = c.take_urgent();
    assert_eq!(urgent, vec![(0, Bytes::from_static(b"product:1:views"))]);
    c.rewrite("INCRBY", &incr);
    assert!(
        c.take_urgent().is_empty(),
        "counting starts again after the key is queued"
    );
}

#[test]
fn move_records_parse_keys_with_colons_and_negative_deltas() {
    let hash = Bytes::from_static(b"cacheside:counter:moves:views");
    let m = Move::parse(&hash, b"ab12", b"1700000000000:-42:product:7:views").unwrap();
    assert_eq!(m.hash, hash);
    assert_eq!(m.id, "ab12");
    assert_eq!(m.at, 1_700_000_000_000);
    assert_eq!(m.delta, -42);
    assert_eq!(&m.key[..], b"product:7:views");
    assert!(Move::parse(&hash, b"x", b"garbage").is_none());
    assert!(Move::parse(&hash, b"x", b"1:notanumber:k").is_none());
    assert!(Move::parse(&hash, &[0xff], b"1:1:k").is_none());
}
