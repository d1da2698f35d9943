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

mod expire;
mod strings;

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
