//! String commands: SET and its options, SETNX/GETSET, INCR and INCRBYFLOAT, APPEND, GETEX, nulls.

use super::*;

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
