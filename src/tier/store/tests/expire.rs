//! Expiry: deadlines passing in real time, moka's eviction, TTL, PERSIST, EXPIRE's options.

use super::*;

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
