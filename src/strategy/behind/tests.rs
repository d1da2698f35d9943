use super::apply::StreamId;
use super::scripts::{DEL_SCRIPT, QUEUE_FULL, SET_SCRIPT};
use super::*;

fn behind() -> Arc<Behind> {
    Behind::new(
        vec![BehindSettings {
            mapping: "item".into(),
            pattern: KeyPattern::parse("item:{id}").unwrap(),
            write_query: "INSERT INTO items (id, body) VALUES ($1, $2)".into(),
            delete_query: Some("DELETE FROM items WHERE id = $1".into()),
            max_attempts: 5,
            max_queue: 1000,
            max_lag: Some(Duration::from_secs(60)),
            claim_idle: Duration::from_secs(30),
            sweep_every: Duration::from_secs(60),
        }],
        &prometheus::Registry::new(),
        Arc::default(),
    )
}

fn args(frame: &Bytes) -> Vec<String> {
    use crate::protocol::request::{parse, Step};
    let Ok(Step::Request(p)) = parse(frame, 0, &Default::default()) else {
        panic!("not one request");
    };
    Request::from_parsed(frame, p)
        .args()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn set_setex_and_psetex_become_the_script_with_the_value_index() {
    let b = behind();
    let out = b
        .rewrite(
            "SET",
            &Request::from_args(&["SET", "item:1", "v1", "EX", "60"]),
        )
        .unwrap()
        .unwrap();
    let a = args(&out.bytes);
    assert_eq!(&a[..3], ["EVAL", SET_SCRIPT, "2"]);
    assert_eq!(
        &a[3..],
        [
            "item:1",
            "cacheside:wb:item",
            "1000",
            "4",
            "SET",
            "v1",
            "EX",
            "60"
        ]
    );
    // ARGV[4] is the value (ARGV = a[5..]).
    assert_eq!(a[5 + 3], "v1");
    let out = b
        .rewrite(
            "SETEX",
            &Request::from_args(&["SETEX", "item:1", "60", "v2"]),
        )
        .unwrap()
        .unwrap();
    let a = args(&out.bytes);
    assert_eq!(&a[6..], ["5", "SETEX", "60", "v2"]);
    assert_eq!(a[5 + 4], "v2");
}

#[test]
fn other_keys_and_commands_pass_through_and_set_get_is_refused() {
    let b = behind();
    let r = |a: &[&str]| b.rewrite(a[0], &Request::from_args(a));
    assert!(r(&["SET", "other:1", "v"]).is_none());
    assert!(r(&["SET", "item:1:x", "v"]).is_none());
    assert!(r(&["GET", "item:1"]).is_none());
    assert!(r(&["SET", "item:1"]).is_none());
    assert!(r(&["SETEX", "item:1", "60"]).is_none());
    assert!(matches!(r(&["SET", "item:1", "v", "get"]), Some(Err(_))));
}

#[test]
fn writes_are_refused_while_the_queue_lags_past_the_bound_and_counted() {
    let registry = prometheus::Registry::new();
    let b = Behind::new(
        vec![BehindSettings {
            mapping: "item".into(),
            pattern: KeyPattern::parse("item:{id}").unwrap(),
            write_query: "INSERT INTO items (id, body) VALUES ($1, $2)".into(),
            delete_query: Some("DELETE FROM items WHERE id = $1".into()),
            max_attempts: 5,
            max_queue: 1000,
            max_lag: Some(Duration::from_secs(60)),
            claim_idle: Duration::from_secs(30),
            sweep_every: Duration::from_secs(60),
        }],
        &registry,
        Arc::default(),
    );
    let set = || b.rewrite("SET", &Request::from_args(&["SET", "item:1", "v"]));
    b.list[0].lag_ms.store(60_000, Ordering::Relaxed);
    assert!(matches!(set(), Some(Ok(_))), "at the bound: accepted");
    b.list[0].lag_ms.store(61_500, Ordering::Relaxed);
    let Some(Err(e)) = set() else {
        panic!("past the bound: refused");
    };
    let reply = crate::error::reply_bytes(&e);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR cacheside: mapping item is write-behind and its queue is 61.5s behind, past write_behind_max_lag (60s): write refused until PostgreSQL catches up\r\n"
    );
    assert!(b
        .rewrite("SET", &Request::from_args(&["SET", "other:1", "v"]))
        .is_none());
    b.list[0].lag_ms.store(0, Ordering::Relaxed);
    assert!(matches!(set(), Some(Ok(_))), "caught up: accepted again");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("cacheside_write_behind_lag_refusals_total{mapping=\"item\"} 1"),
        "{text}"
    );
}

#[test]
fn stream_ids_order_by_time_then_sequence() {
    assert!(
        StreamId::parse(b"1700000000000-2").unwrap() > StreamId::parse(b"1700000000000-1").unwrap()
    );
    assert!(StreamId::parse(b"9-0").unwrap() < StreamId::parse(b"10-0").unwrap());
    assert!(StreamId::parse(b"junk").is_none());
}

#[test]
fn del_and_unlink_of_keys_with_a_delete_query_become_the_delete_script() {
    let b = behind();
    let out = b
        .rewrite(
            "DEL",
            &Request::from_args(&["DEL", "item:1", "other:2", "item:3"]),
        )
        .unwrap()
        .unwrap();
    let a = args(&out.bytes);
    // KEYS in threes: the key, its stream, its marker (an unmapped key: itself three times).
    assert_eq!(&a[..3], ["EVAL", DEL_SCRIPT, "9"]);
    assert_eq!(
        &a[3..12],
        [
            "item:1",
            "cacheside:wb:item",
            "cacheside:neg:{item:1}",
            "other:2",
            "other:2",
            "other:2",
            "item:3",
            "cacheside:wb:item",
            "cacheside:neg:{item:3}"
        ]
    );
    // ARGV: the command, then each key's queue bound (0: not queued).
    assert_eq!(&a[12..], ["DEL", "1000", "0", "1000"]);
    let out = b
        .rewrite("UNLINK", &Request::from_args(&["UNLINK", "item:9"]))
        .unwrap()
        .unwrap();
    assert_eq!(args(&out.bytes)[6], "UNLINK");
    assert!(b
        .rewrite("DEL", &Request::from_args(&["DEL", "other:1"]))
        .is_none());
}

#[test]
fn both_scripts_refuse_a_full_queue_with_the_reply_that_is_counted() {
    let text = std::str::from_utf8(&QUEUE_FULL[1..QUEUE_FULL.len() - 2]).unwrap();
    for script in [SET_SCRIPT, DEL_SCRIPT] {
        assert!(script.contains(&format!("redis.error_reply('{text}')")));
    }
    let b = behind();
    for args in [&["SET", "item:1", "v"][..], &["DEL", "item:1"]] {
        let r = b
            .rewrite(args[0], &Request::from_args(args))
            .unwrap()
            .unwrap();
        assert!(r.refusals.is_some(), "{args:?} counts its refusals");
    }
}

#[test]
fn other_writes_of_a_write_behind_key_are_refused_and_expiry_passes() {
    use crate::protocol::command::lookup;
    let b = behind();
    let refused = |args: &[&str]| {
        let req = Request::from_args(args);
        b.refusal(lookup(req.arg(0)), &req).map(|e| e.to_string())
    };
    let e = refused(&["MSET", "other:1", "a", "item:2", "b"]).expect("MSET refused");
    assert!(
        e.contains("mapping item is write-behind: MSET is not queued"),
        "{e}"
    );
    assert!(refused(&["APPEND", "item:1", "x"]).is_some());
    assert!(refused(&["INCR", "item:1"]).is_some());
    assert!(refused(&["RENAME", "item:1", "other:1"]).is_some());
    for ok in [
        &["EXPIRE", "item:1", "10"][..],
        &["PERSIST", "item:1"],
        &["GET", "item:1"],
        &["MSET", "other:1", "a"],
        &["DEL", "item:1"],
    ] {
        assert!(refused(ok).is_none(), "{ok:?} passes");
    }
}

#[test]
fn on_a_cluster_each_key_is_queued_in_its_slots_stream_and_the_slot_is_marked() {
    use crate::tier::redis::cluster::slot;
    let b = behind();
    b.list[0].cluster.store(true, Ordering::Release);
    let stream = |k: &str| {
        format!(
            "cacheside:wb:{{{}}}:item",
            slot::slot_tag(slot::of(k.as_bytes()))
        )
    };
    let out = b
        .rewrite("SET", &Request::from_args(&["SET", "item:1", "v"]))
        .unwrap()
        .unwrap();
    let a = args(&out.bytes);
    assert_eq!(a[4], stream("item:1"));
    assert_eq!(slot::of(a[4].as_bytes()), slot::of(b"item:1"));
    let out = b
        .rewrite(
            "DEL",
            &Request::from_args(&["DEL", "item:2", "other:1", "item:3"]),
        )
        .unwrap()
        .unwrap();
    let a = args(&out.bytes);
    assert_eq!(a[4], stream("item:2"));
    assert_eq!(a[10], stream("item:3"));
    let mut marked = b.list[0].marks.take();
    marked.sort_unstable();
    let mut want: Vec<u16> = ["item:1", "item:2", "item:3"]
        .iter()
        .map(|k| slot::of(k.as_bytes()))
        .collect();
    want.sort_unstable();
    want.dedup();
    assert_eq!(marked, want, "marked before the write is sent");
    // The summed depth at the bound: refused here, and counted.
    b.list[0].depth.store(1000, Ordering::Relaxed);
    let Some(Err(e)) = b.rewrite("SET", &Request::from_args(&["SET", "item:1", "v"])) else {
        panic!("refused");
    };
    assert_eq!(&crate::error::reply_bytes(&e)[..], QUEUE_FULL);
    assert_eq!(b.list[0].metrics.full_refusals.get(), 1);
}
