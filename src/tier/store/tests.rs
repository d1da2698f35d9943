//! Reply bytes of the standalone store, checked against what redis-server 7.0 sends.

use super::*;
use std::time::Duration;

fn store() -> Store {
    Store::new(1 << 20, Policy::TinyLfu)
}

async fn run_in(s: &Store, proto: Proto, args: &[&[u8]]) -> Vec<u8> {
    s.execute(&Request::from_args(args), proto).await.to_vec()
}

/// Runs a command given as space-separated words, in RESP2.
async fn run(s: &Store, line: &str) -> Vec<u8> {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    run_in(s, Proto::Resp2, &args).await
}

/// Asserts each `(command, reply)` in order.
async fn script(s: &Store, steps: &[(&str, &str)]) {
    for (line, want) in steps {
        let got = run(s, line).await;
        assert_eq!(String::from_utf8_lossy(&got), *want, "reply to `{line}`");
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn get_and_set_round_trip_and_missing_keys_are_nil() {
    let s = store();
    script(
        &s,
        &[
            ("GET k", "$-1\r\n"),
            ("SET k hello", "+OK\r\n"),
            ("get k", "$5\r\nhello\r\n"),
            ("SET k world", "+OK\r\n"),
            ("GET k", "$5\r\nworld\r\n"),
            ("STRLEN k", ":5\r\n"),
            ("STRLEN nokey", ":0\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn nil_is_underscore_in_resp3() {
    let s = store();
    let r3 = |args: &'static [&'static [u8]]| run_in(&s, Proto::Resp3, args);
    assert_eq!(r3(&[b"GET", b"nokey"]).await, b"_\r\n");
    assert_eq!(r3(&[b"SET", b"a", b"1"]).await, b"+OK\r\n");
    assert_eq!(r3(&[b"SET", b"a", b"1", b"NX"]).await, b"_\r\n");
    assert_eq!(r3(&[b"SET", b"z", b"1", b"GET", b"XX"]).await, b"_\r\n");
    assert_eq!(
        r3(&[b"MGET", b"a", b"nokey"]).await,
        b"*2\r\n$1\r\n1\r\n_\r\n"
    );
    assert_eq!(r3(&[b"GETDEL", b"nokey"]).await, b"_\r\n");
    assert_eq!(r3(&[b"GETEX", b"nokey"]).await, b"_\r\n");
    assert_eq!(r3(&[b"SETNX", b"a", b"1"]).await, b":0\r\n");
}

#[tokio::test]
async fn values_and_keys_are_binary_safe() {
    let s = store();
    let key: &[u8] = b"k\0\r\n\xff";
    let val: &[u8] = b"\0\x01\r\n\xfe";
    assert_eq!(
        run_in(&s, Proto::Resp2, &[b"SET", key, val]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        run_in(&s, Proto::Resp2, &[b"GET", key]).await,
        b"$5\r\n\0\x01\r\n\xfe\r\n"
    );
    assert_eq!(
        run_in(&s, Proto::Resp2, &[b"SET", b"e", b""]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        run_in(&s, Proto::Resp2, &[b"GET", b"e"]).await,
        b"$0\r\n\r\n"
    );
}

#[tokio::test]
async fn set_options_are_parsed_like_redis() {
    let s = store();
    script(
        &s,
        &[
            ("SET k v EX", "-ERR syntax error\r\n"),
            ("SET k v foo", "-ERR syntax error\r\n"),
            ("SET k v NX XX", "-ERR syntax error\r\n"),
            ("SET k v Nx Xx", "-ERR syntax error\r\n"),
            ("SET k v EX 10 KEEPTTL", "-ERR syntax error\r\n"),
            ("SET k v KEEPTTL EX 10", "-ERR syntax error\r\n"),
            ("SET k v EX 10 PX 100", "-ERR syntax error\r\n"),
            ("SET k v PERSIST", "-ERR syntax error\r\n"),
            (
                "SET k v EX abc",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "SET k v EX 0",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v EX -1",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v EX 9223372036854775807",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v PX 9223372036854775807",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            ("GET k", "$-1\r\n"),
            ("SET k v PXAT 9223372036854775807", "+OK\r\n"),
            ("SET k v NX NX", "$-1\r\n"),
            ("SET k v KEEPTTL KEEPTTL", "+OK\r\n"),
            ("SET k v EX 10 EX 20", "+OK\r\n"),
            ("TTL k", ":20\r\n"),
            ("SET k v PX 100 PX 20000", "+OK\r\n"),
            ("TTL k", ":20\r\n"),
            ("SET k v PXAT 1", "+OK\r\n"),
            ("GET k", "$-1\r\n"),
            ("EXISTS k", ":0\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn set_nx_xx_and_get_combine_as_in_redis() {
    let s = store();
    script(
        &s,
        &[
            ("SET k v XX", "$-1\r\n"),
            ("SET k v GET NX", "$-1\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k v2 GET NX", "$1\r\nv\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k v3 GET XX", "$1\r\nv\r\n"),
            ("GET k", "$2\r\nv3\r\n"),
            ("SET k v4 GET", "$2\r\nv3\r\n"),
            ("SET k2 v GET XX", "$-1\r\n"),
            ("EXISTS k2", ":0\r\n"),
            ("SET k v5 XX", "+OK\r\n"),
            ("SET k v6 NX", "$-1\r\n"),
            ("SETNX k x", ":0\r\n"),
            ("SETNX n x", ":1\r\n"),
            ("GETSET n y", "$1\r\nx\r\n"),
            ("GETSET m y", "$-1\r\n"),
            ("GET n", "$1\r\ny\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn keepttl_keeps_the_deadline_and_plain_set_clears_it() {
    let s = store();
    script(
        &s,
        &[
            ("SET k v EX 100", "+OK\r\n"),
            ("SET k w KEEPTTL", "+OK\r\n"),
            ("TTL k", ":100\r\n"),
            ("GET k", "$1\r\nw\r\n"),
            ("SET k x", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("SETEX k 50 y", "+OK\r\n"),
            ("TTL k", ":50\r\n"),
            ("MSET k z", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("PSETEX k 5000 y", "+OK\r\n"),
            ("TTL k", ":5\r\n"),
            ("GETSET k q", "$1\r\ny\r\n"),
            ("TTL k", ":-1\r\n"),
            (
                "SETEX k 0 v",
                "-ERR invalid expire time in 'setex' command\r\n",
            ),
            (
                "SETEX k abc v",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "PSETEX k -1 v",
                "-ERR invalid expire time in 'psetex' command\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn keys_expire_in_real_time() {
    let s = store();
    script(
        &s,
        &[
            ("SET a 1 PX 80", "+OK\r\n"),
            ("PSETEX b 80 2", "+OK\r\n"),
            ("SET c 3", "+OK\r\n"),
            ("PEXPIRE c 80", ":1\r\n"),
            ("SET d 4", "+OK\r\n"),
            ("GETEX d PX 80", "$1\r\n4\r\n"),
            ("SET e 5 PX 80", "+OK\r\n"),
            ("PERSIST e", ":1\r\n"),
            ("EXISTS a b c d e", ":5\r\n"),
        ],
    )
    .await;
    let pttl = run(&s, "PTTL a").await;
    let ms: i64 = std::str::from_utf8(&pttl[1..pttl.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=80).contains(&ms), "PTTL {ms}");
    sleep_ms(150).await;
    script(
        &s,
        &[
            ("GET a", "$-1\r\n"),
            ("GET b", "$-1\r\n"),
            ("MGET c d e", "*3\r\n$-1\r\n$-1\r\n$1\r\n5\r\n"),
            ("EXISTS a b c d e", ":1\r\n"),
            ("TTL a", ":-2\r\n"),
            ("PTTL e", ":-1\r\n"),
            ("DEL a b", ":0\r\n"),
            ("INCR a", ":1\r\n"),
            ("TTL a", ":-1\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn moka_evicts_entries_at_their_deadline() {
    let s = store();
    script(
        &s,
        &[
            ("SET a 1 PX 50", "+OK\r\n"),
            ("SET b 2", "+OK\r\n"),
            ("PEXPIRE b 50", ":1\r\n"),
            ("SET c 3", "+OK\r\n"),
            ("DBSIZE", ":3\r\n"),
        ],
    )
    .await;
    // moka's timer wheel ticks about once a second: poll until it has evicted both.
    for _ in 0..40 {
        s.cache.run_pending_tasks().await;
        if s.entry_count() == 1 {
            break;
        }
        sleep_ms(100).await;
    }
    script(&s, &[("DBSIZE", ":1\r\n")]).await;
}

#[tokio::test]
async fn ttl_reports_missing_persistent_and_rounded_seconds() {
    let s = store();
    script(
        &s,
        &[
            ("TTL nokey", ":-2\r\n"),
            ("PTTL nokey", ":-2\r\n"),
            ("EXPIRETIME nokey", ":-2\r\n"),
            ("SET k v", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("PEXPIRETIME k", ":-1\r\n"),
            ("PEXPIRE k 1600", ":1\r\n"),
            ("TTL k", ":2\r\n"),
            ("PEXPIREAT k 4102444800000", ":1\r\n"),
            ("PEXPIRETIME k", ":4102444800000\r\n"),
            ("EXPIRETIME k", ":4102444800\r\n"),
            ("PERSIST k", ":1\r\n"),
            ("PERSIST k", ":0\r\n"),
            ("PERSIST nokey", ":0\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn expire_options_follow_redis_7() {
    let s = store();
    script(
        &s,
        &[
            ("SET f v", "+OK\r\n"),
            ("EXPIRE f 100 GT", ":0\r\n"),
            ("EXPIRE f 100 XX", ":0\r\n"),
            ("EXPIRE f 100 LT", ":1\r\n"),
            ("EXPIRE f 200 GT", ":1\r\n"),
            ("TTL f", ":200\r\n"),
            ("EXPIRE f 50 GT", ":0\r\n"),
            ("EXPIRE f 200 LT", ":0\r\n"),
            ("EXPIRE f 50 lt", ":1\r\n"),
            ("EXPIRE f 60 NX", ":0\r\n"),
            ("EXPIRE f 60 XX", ":1\r\n"),
            ("EXPIRE f 70 xx gt", ":1\r\n"),
            ("TTL f", ":70\r\n"),
            ("PERSIST f", ":1\r\n"),
            ("EXPIRE f 50 XX", ":0\r\n"),
            ("EXPIRE f 50 NX", ":1\r\n"),
            ("EXPIRE nokey 10", ":0\r\n"),
            ("EXPIRE f -1", ":1\r\n"),
            ("EXISTS f", ":0\r\n"),
            ("SET g v", "+OK\r\n"),
            ("EXPIREAT g 1", ":1\r\n"),
            ("GET g", "$-1\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn expire_errors_match_redis_texts_and_order() {
    let s = store();
    script(
        &s,
        &[
            ("SET k v", "+OK\r\n"),
            (
                "EXPIRE k 10 NX XX",
                "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
            ),
            (
                "EXPIRE k 10 GT LT",
                "-ERR GT and LT options at the same time are not compatible\r\n",
            ),
            ("EXPIRE k abc foo", "-ERR Unsupported option foo\r\n"),
            (
                "EXPIRE k abc",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "EXPIRE nokey abc",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "EXPIRE k 9223372036854775",
                "-ERR invalid expire time in 'expire' command\r\n",
            ),
            (
                "PEXPIRE k 9223372036854775807",
                "-ERR invalid expire time in 'pexpire' command\r\n",
            ),
            (
                "EXPIREAT k 9223372036854775807",
                "-ERR invalid expire time in 'expireat' command\r\n",
            ),
            ("EXPIRE k 9223372036854", ":1\r\n"),
            ("PEXPIREAT k 9223372036854775807", ":1\r\n"),
            ("EXPIRETIME k", ":9223372036854776\r\n"),
            ("PEXPIRETIME k", ":9223372036854775807\r\n"),
        ],
    )
    .await;
    let ttl = String::from_utf8(run(&s, "TTL k").await).unwrap();
    let want = (i64::MAX - now_ms() + 500) / 1000;
    assert!(
        ttl == format!(":{want}\r\n") || ttl == format!(":{}\r\n", want + 1),
        "{ttl}"
    );
}

#[tokio::test]
async fn incr_family_checks_integers_and_overflow() {
    let s = store();
    script(
        &s,
        &[
            ("INCR n", ":1\r\n"),
            ("INCRBY n 10", ":11\r\n"),
            ("DECR n", ":10\r\n"),
            ("DECRBY n 20", ":-10\r\n"),
            ("EXPIRE n 100", ":1\r\n"),
            ("INCR n", ":-9\r\n"),
            ("TTL n", ":100\r\n"),
            (
                "INCRBY n abc",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "INCRBY n 9223372036854775808",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "DECRBY n -9223372036854775808",
                "-ERR decrement would overflow\r\n",
            ),
            ("SET n 9223372036854775806", "+OK\r\n"),
            ("INCR n", ":9223372036854775807\r\n"),
            ("INCR n", "-ERR increment or decrement would overflow\r\n"),
            ("SET n -9223372036854775808", "+OK\r\n"),
            ("DECR n", "-ERR increment or decrement would overflow\r\n"),
            ("INCR n", ":-9223372036854775807\r\n"),
            ("GET n", "$20\r\n-9223372036854775807\r\n"),
        ],
    )
    .await;
    for bad in [
        "01",
        "+1",
        "-0",
        "1.5",
        " 1",
        "1 ",
        "",
        "abc",
        "99999999999999999999",
    ] {
        run_in(&s, Proto::Resp2, &[b"SET", b"x", bad.as_bytes()]).await;
        assert_eq!(
            run(&s, "INCR x").await,
            b"-ERR value is not an integer or out of range\r\n",
            "{bad:?}"
        );
    }
    script(&s, &[("SET x 0", "+OK\r\n"), ("DECR x", ":-1\r\n")]).await;
}

#[tokio::test]
async fn incrbyfloat_formats_like_redis_long_doubles() {
    let s = store();
    script(
        &s,
        &[
            ("SET f 10.50", "+OK\r\n"),
            ("EXPIRE f 100", ":1\r\n"),
            ("INCRBYFLOAT f 0.1", "$4\r\n10.6\r\n"),
            ("TTL f", ":100\r\n"),
            ("INCRBYFLOAT f -5.0e3", "$23\r\n-4989.39999999999999991\r\n"),
            ("SET f 5.0e3", "+OK\r\n"),
            ("INCRBYFLOAT f 2.0e2", "$4\r\n5200\r\n"),
            ("INCRBYFLOAT g 0.1", "$3\r\n0.1\r\n"),
            ("INCRBYFLOAT g 0.2", "$3\r\n0.3\r\n"),
            ("INCRBYFLOAT g 1e20", "$21\r\n100000000000000000000\r\n"),
            ("INCRBYFLOAT h -0.0000000000000000001", "$1\r\n0\r\n"),
            ("INCRBYFLOAT h 1e-17", "$19\r\n0.00000000000000001\r\n"),
            ("INCRBYFLOAT i 3", "$1\r\n3\r\n"),
            ("INCRBYFLOAT i 0x10", "$2\r\n19\r\n"),
            ("INCRBYFLOAT i abc", "-ERR value is not a valid float\r\n"),
            ("INCRBYFLOAT i nan", "-ERR value is not a valid float\r\n"),
            ("INCRBYFLOAT i 1e", "-ERR value is not a valid float\r\n"),
            (
                "INCRBYFLOAT i inf",
                "-ERR increment would produce NaN or Infinity\r\n",
            ),
            (
                "INCRBYFLOAT i 1e5000",
                "-ERR value is not a valid float\r\n",
            ),
            ("GET i", "$2\r\n19\r\n"),
            ("SET s hello", "+OK\r\n"),
            ("INCRBYFLOAT s 1", "-ERR value is not a valid float\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn append_strlen_getdel_and_getex() {
    let s = store();
    script(
        &s,
        &[
            ("APPEND s hello", ":5\r\n"),
            ("EXPIRE s 100", ":1\r\n"),
            ("APPEND s world", ":10\r\n"),
            ("TTL s", ":100\r\n"),
            ("GET s", "$10\r\nhelloworld\r\n"),
            ("GETEX s", "$10\r\nhelloworld\r\n"),
            ("TTL s", ":100\r\n"),
            ("GETEX s PERSIST", "$10\r\nhelloworld\r\n"),
            ("TTL s", ":-1\r\n"),
            ("GETEX s EX 30", "$10\r\nhelloworld\r\n"),
            ("TTL s", ":30\r\n"),
            (
                "GETEX s EX abc",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "GETEX s EX 0",
                "-ERR invalid expire time in 'getex' command\r\n",
            ),
            ("GETEX s PERSIST EX 10", "-ERR syntax error\r\n"),
            ("GETEX s KEEPTTL", "-ERR syntax error\r\n"),
            ("GETEX s GET", "-ERR syntax error\r\n"),
            ("GETEX nokey EX abc", "$-1\r\n"),
            ("GETEX nokey foo", "-ERR syntax error\r\n"),
            ("GETEX s EXAT 1", "$10\r\nhelloworld\r\n"),
            ("EXISTS s", ":0\r\n"),
            ("SET d v", "+OK\r\n"),
            ("GETDEL d", "$1\r\nv\r\n"),
            ("GETDEL d", "$-1\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn multi_key_commands_count_like_redis() {
    let s = store();
    script(
        &s,
        &[
            ("MGET a b", "*2\r\n$-1\r\n$-1\r\n"),
            ("MSET a 1 b 2 a 3", "+OK\r\n"),
            ("MGET a b c", "*3\r\n$1\r\n3\r\n$1\r\n2\r\n$-1\r\n"),
            ("EXISTS a a b nokey", ":3\r\n"),
            ("DEL a a nokey", ":1\r\n"),
            ("UNLINK b b", ":1\r\n"),
            ("EXISTS a b", ":0\r\n"),
            (
                "MSET a",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn wrong_arity_names_the_command_in_lowercase() {
    let s = store();
    let cases = [
        ("GET", "get"),
        ("Get a b", "get"),
        ("SET k", "set"),
        ("SETEX k 1", "setex"),
        ("PSETEX k 1", "psetex"),
        ("SETNX", "setnx"),
        ("GETSET k", "getset"),
        ("MGET", "mget"),
        ("DEL", "del"),
        ("UNLINK", "unlink"),
        ("EXISTS", "exists"),
        ("EXPIRE k", "expire"),
        ("PEXPIREAT k", "pexpireat"),
        ("TTL a b", "ttl"),
        ("PTTL", "pttl"),
        ("PERSIST", "persist"),
        ("INCR", "incr"),
        ("DECRBY k", "decrby"),
        ("INCRBYFLOAT k", "incrbyfloat"),
        ("APPEND k", "append"),
        ("STRLEN", "strlen"),
        ("GETDEL", "getdel"),
        ("GETEX", "getex"),
        ("DBSIZE x", "dbsize"),
    ];
    for (line, name) in cases {
        let want = format!("-ERR wrong number of arguments for '{name}' command\r\n");
        assert_eq!(
            String::from_utf8_lossy(&run(&s, line).await),
            want,
            "{line}"
        );
    }
}

#[tokio::test]
async fn dbsize_flush_and_info() {
    let s = store();
    script(
        &s,
        &[
            ("INFO keyspace", "$12\r\n# Keyspace\r\n\r\n"),
            ("MSET a 1 b 2 c 3", "+OK\r\n"),
            ("EXPIRE a 100", ":1\r\n"),
            ("DBSIZE", ":3\r\n"),
            (
                "INFO keyspace",
                "$44\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\n\r\n",
            ),
            ("INFO foo", "$0\r\n\r\n"),
            ("FLUSHDB a b", "-ERR syntax error\r\n"),
            ("FLUSHDB foo", "-ERR syntax error\r\n"),
            ("FLUSHDB", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
            ("SET a 1", "+OK\r\n"),
            ("FLUSHALL ASYNC", "+OK\r\n"),
            ("GET a", "$-1\r\n"),
            ("FLUSHALL sync", "+OK\r\n"),
        ],
    )
    .await;
    run(&s, "SET k v").await;
    let info = String::from_utf8(run(&s, "INFO").await).unwrap();
    assert!(info.contains("# cacheside\r\nmode:standalone\r\nused_memory:"));
    assert!(info.contains("\r\nkeys:1\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0"));
    let v3 = run_in(&s, Proto::Resp3, &[b"INFO", b"keyspace"]).await;
    assert_eq!(
        v3,
        b"=48\r\ntxt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n"
    );
}

#[tokio::test]
async fn memory_stays_within_the_byte_bound() {
    for policy in [Policy::TinyLfu, Policy::Lru] {
        let max = 64 * 1024;
        let s = Store::new(max, policy);
        let value = vec![b'x'; 200];
        for i in 0..(10 * max / 300) {
            let key = format!("key:{i}");
            run_in(&s, Proto::Resp2, &[b"SET", key.as_bytes(), &value]).await;
        }
        s.cache.run_pending_tasks().await;
        assert!(
            s.weighted_size() <= max,
            "{policy:?}: {}",
            s.weighted_size()
        );
        assert!(s.entry_count() > 0, "{policy:?} kept nothing");
        assert!(s.entry_count() <= max / 264, "{policy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_key_are_atomic() {
    let s = store();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    run(&s, "INCR n").await;
                    run(&s, &format!("APPEND log {i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    script(
        &s,
        &[("GET n", "$4\r\n1600\r\n"), ("STRLEN log", ":1600\r\n")],
    )
    .await;
}

#[test]
fn execute_futures_can_be_spawned() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let s = store();
    let fut = async move {
        let req = Request::from_args(&["INCR", "n"]);
        s.execute(&req, Proto::Resp2).await
    };
    assert_send(&fut);
}

#[test]
fn supports_knows_its_commands_in_any_case() {
    assert!(Store::supports(b"get"));
    assert!(Store::supports(b"IncrByFloat"));
    assert!(Store::supports(b"FLUSHALL"));
    assert!(!Store::supports(b"hget"));
    assert!(!Store::supports(b""));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "EX",
                "PX",
                "EXAT",
                "PXAT",
                "NX",
                "XX",
                "GT",
                "LT",
                "GET",
                "KEEPTTL",
                "PERSIST",
                "0",
                "-1",
                "1",
                "10",
                "1.5",
                "9223372036854775807",
                "-9223372036854775808",
                "1e4932",
                "0x1p-16445",
                "inf",
                "k",
                "",
            ])
            .prop_map(|w| w.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let name = prop::sample::select(COMMANDS.to_vec()).prop_map(|(n, _)| n.as_bytes().to_vec());
        let key = prop::option::weighted(0.9, prop::sample::select(vec!["k", "k2"]));
        (name, key, prop::collection::vec(word(), 0..6)).prop_map(|(name, key, rest)| {
            let mut all = vec![name];
            all.extend(key.map(|k| k.as_bytes().to_vec()));
            all.extend(rest);
            all
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn arbitrary_command_sequences_never_panic_and_reply_one_frame(
            cmds in prop::collection::vec(command(), 1..6),
            resp3 in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let s = Store::new(4096, Policy::Lru);
            let proto = if resp3 { Proto::Resp3 } else { Proto::Resp2 };
            for args in cmds {
                let reply = rt.block_on(s.execute(&Request::from_args(&args), proto));
                let framed = reply::frame(&reply, proto).ok().flatten().map(|f| f.len);
                prop_assert_eq!(framed, Some(reply.len()), "{:?}", reply);
            }
        }
    }
}
