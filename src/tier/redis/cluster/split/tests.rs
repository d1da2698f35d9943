//! Planning and merging without a cluster: which parts a request becomes, and the reply built
//! from the parts' replies.

use super::*;
use std::sync::Arc;

/// Three primaries over the slots as `redis-cli --cluster create` splits them.
fn topo() -> Topology {
    let a: Arc<str> = "h:1".into();
    let b: Arc<str> = "h:2".into();
    let c: Arc<str> = "h:3".into();
    Topology::from_ranges(vec![(0, 5460, a), (5461, 10922, b), (10923, 16383, c)]).unwrap()
}

fn req(args: &[&str]) -> Request {
    Request::from_args(args)
}

fn parts(p: Plan) -> (Vec<Part>, Merge) {
    match p {
        Plan::Parts(parts, m) => (parts, m),
        Plan::Reply(r) => panic!("answered at once: {:?}", String::from_utf8_lossy(&r)),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn same_slot_keys_go_whole_to_their_slot() {
    let r = req(&["SUNION", "{u}a", "{u}b"]);
    let (p, m) = parts(plan(&r, &topo()));
    assert_eq!(m, Merge::Single);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].target, Target::Slot(slot::of(b"u")));
    assert_eq!(p[0].frame, r.frame());
}

#[test]
fn spublish_goes_to_its_channels_slot() {
    let r = req(&["SPUBLISH", "{u}news", "hi"]);
    let (p, m) = parts(plan(&r, &topo()));
    assert_eq!(m, Merge::Single);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].target, Target::Slot(slot::of(b"u")));
    // A wrong arity is the node's to answer, on any primary.
    let (p, _) = parts(plan(&req(&["SPUBLISH", "c"]), &topo()));
    assert_eq!(p[0].target, Target::Any);
}

#[test]
fn other_multi_key_commands_across_slots_get_crossslot() {
    match plan(&req(&["SUNION", "foo", "bar"]), &topo()) {
        Plan::Reply(r) => assert_eq!(
            &r[..],
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        ),
        p => panic!("{p:?}"),
    }
}

#[test]
fn mget_splits_per_slot_and_merges_in_the_clients_order() {
    // foo and {foo}x share a slot; bar is elsewhere.
    let (p, m) = parts(plan(&req(&["MGET", "foo", "bar", "{foo}x"]), &topo()));
    assert_eq!(p.len(), 2);
    assert_eq!(
        &p[0].frame[..],
        &Request::from_args(&["MGET", "foo", "{foo}x"]).frame()[..]
    );
    assert_eq!(
        &p[1].frame[..],
        &Request::from_args(&["MGET", "bar"]).frame()[..]
    );
    let replies = [b("*2\r\n$1\r\n1\r\n$-1\r\n"), b("*1\r\n$1\r\n2\r\n")];
    assert_eq!(
        &merge(&m, &replies, Proto::Resp2)[..],
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"
    );
}

#[test]
fn mset_and_counting_commands_merge_to_one_reply() {
    let (p, m) = parts(plan(&req(&["MSET", "foo", "1", "bar", "2"]), &topo()));
    assert_eq!(p.len(), 2);
    assert_eq!(
        &p[1].frame[..],
        &Request::from_args(&["MSET", "bar", "2"]).frame()[..]
    );
    assert_eq!(
        &merge(&m, &[b("+OK\r\n"), b("+OK\r\n")], Proto::Resp2)[..],
        b"+OK\r\n"
    );
    let (_, m) = parts(plan(&req(&["DEL", "foo", "bar", "baz"]), &topo()));
    assert_eq!(
        &merge(&m, &[b(":1\r\n"), b(":2\r\n")], Proto::Resp2)[..],
        b":3\r\n"
    );
    // An error from any part is the reply.
    assert_eq!(
        &merge(&m, &[b(":1\r\n"), b("-ERR x\r\n")], Proto::Resp2)[..],
        b"-ERR x\r\n"
    );
}

#[test]
fn keyless_commands_run_on_every_primary_or_any_one() {
    let (p, m) = parts(plan(&req(&["DBSIZE"]), &topo()));
    assert_eq!(p.len(), 3);
    assert_eq!(m, Merge::Sum);
    let (p, m) = parts(plan(&req(&["KEYS", "*"]), &topo()));
    assert_eq!((p.len(), m.clone()), (3, Merge::Concat));
    assert_eq!(
        &merge(
            &m,
            &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n"), b("*1\r\n$1\r\nb\r\n")],
            Proto::Resp2
        )[..],
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
    let (p, _) = parts(plan(&req(&["SCRIPT", "LOAD", "return 1"]), &topo()));
    assert_eq!(p.len(), 3);
    let (p, _) = parts(plan(&req(&["PING"]), &topo()));
    assert_eq!(p[0].target, Target::Any);
    match plan(&req(&["CLUSTER", "SLOTS"]), &topo()) {
        Plan::Reply(r) => {
            assert!(r.starts_with(b"-ERR This instance has cluster support disabled"))
        }
        p => panic!("{p:?}"),
    }
}

#[test]
fn scan_cursor_encodes_the_primary_and_its_cursor() {
    let t = topo();
    let (p, m) = parts(plan(&req(&["SCAN", "0", "COUNT", "10"]), &t));
    assert_eq!(p[0].target, Target::Node(0));
    // The node has more: its cursor times 1024 plus the node.
    let more = b("*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n");
    assert_eq!(
        &merge(&m, &[more], Proto::Resp2)[..],
        format!("*2\r\n$5\r\n{}\r\n*1\r\n$1\r\nk\r\n", 17 * 1024).as_bytes()
    );
    let (p, m) = parts(plan(&req(&["SCAN", &(17 * 1024 + 1).to_string()]), &t));
    assert_eq!(p[0].target, Target::Node(1));
    assert_eq!(
        &p[0].frame[..],
        &Request::from_args(&["SCAN", "17"]).frame()[..]
    );
    // Node 1 is done: the next cursor starts node 2.
    assert_eq!(
        &merge(&m, &[b("*2\r\n$1\r\n0\r\n*0\r\n")], Proto::Resp2)[..],
        b"*2\r\n$1\r\n2\r\n*0\r\n"
    );
    // The last node done: the walk is over.
    let (_, m) = parts(plan(&req(&["SCAN", "2"]), &t));
    assert_eq!(
        &merge(&m, &[b("*2\r\n$1\r\n0\r\n*0\r\n")], Proto::Resp2)[..],
        b"*2\r\n$1\r\n0\r\n*0\r\n"
    );
    for bad in ["3", "x", "-1"] {
        assert!(
            matches!(plan(&req(&["SCAN", bad]), &t), Plan::Reply(_)),
            "{bad}"
        );
    }
}

#[test]
fn garbage_replies_never_panic() {
    for m in [
        Merge::Sum,
        Merge::Concat,
        Merge::Array(vec![(0, 5)]),
        Merge::Scan { node: 0, nodes: 1 },
    ] {
        for r in ["*1\r\n", "+OK\r\n", "*2\r\n$1\r\nx\r\n*0\r\n", ":1\r\n"] {
            let _ = merge(&m, &[b(r), b(r)], Proto::Resp2);
        }
    }
}

#[test]
fn a_huge_mget_over_every_slot_splits_in_linear_time() {
    let keys: Vec<String> = (0..200_000).map(|i| format!("k{i}")).collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let started = std::time::Instant::now();
    let (p, m) = parts(plan(&req(&args), &topo()));
    assert_eq!(p.len(), 16384);
    let Merge::Array(places) = m else {
        panic!("{m:?}")
    };
    assert_eq!(places.len(), 200_000);
    // Quadratic work here took tens of seconds.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_per_key_script_over_slots_runs_once_per_slot_with_its_threes() {
    let script = format!("{PER_KEY_SCRIPT}return 1");
    let r = req(&[
        "EVAL", &script, "9", "{a}1", "{a}s", "{a}m", "{b}1", "{b}s", "{b}m", "{a}2", "{a}s",
        "{a}n", "DEL", "5", "0", "6",
    ]);
    let (p, m) = parts(plan(&r, &topo()));
    assert_eq!(m, Merge::Sum);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].target, Target::Slot(slot::of(b"a")));
    let a = req(&[
        "EVAL", &script, "6", "{a}1", "{a}s", "{a}m", "{a}2", "{a}s", "{a}n", "DEL", "5", "6",
    ]);
    assert_eq!(p[0].frame, a.frame());
    let b = req(&["EVAL", &script, "3", "{b}1", "{b}s", "{b}m", "DEL", "0"]);
    assert_eq!(p[1].frame, b.frame());
    // Any other script, or a per-key one of the wrong shape, over several slots: CROSSSLOT.
    for r in [
        req(&["EVAL", "return 1", "2", "{a}1", "{b}1"]),
        req(&[
            "EVAL", &script, "6", "{a}1", "{a}s", "{a}m", "{b}1", "{b}s", "{b}m", "DEL", "5",
        ]),
        // A number of keys no request can hold: refused, not an overflow.
        req(&["EVAL", &script, "18446744073709551615", "{a}1", "{b}1"]),
    ] {
        assert!(matches!(plan(&r, &topo()), Plan::Reply(_)));
    }
}
