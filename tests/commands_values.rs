//! Large and binary values through cacheside: a 5 MB value, binary-safe keys and values.

mod support;

use redis::RedisResult;
use support::commands::{q, resp, start, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_value_round_trips_intact() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let ok: String = within(
        "SET 5 MB",
        redis::cmd("SET").arg("big:v").arg(&big).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(ok, "OK");
    let back: Vec<u8> = within(
        "GET 5 MB",
        redis::cmd("GET").arg("big:v").query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "5 MB value came back different");
    assert_eq!(
        q::<i64, _>(&mut c, &["STRLEN", "big:v"]).await,
        big.len() as i64
    );

    let mut d = redis.direct().await;
    let direct: Vec<u8> = within(
        "GET direct",
        redis::cmd("GET").arg("big:v").query_async(&mut d),
    )
    .await
    .unwrap();
    assert!(direct == big, "redis-server holds a different value");

    // Several big values in one pipeline, and a plain reply right after them.
    let (a, b, n): (Vec<u8>, Vec<u8>, i64) = within(
        "pipelined big GETs",
        redis::pipe()
            .cmd("SET")
            .arg("big:w")
            .arg(&big[..3 * 1024 * 1024])
            .ignore()
            .cmd("GET")
            .arg("big:v")
            .cmd("GET")
            .arg("big:w")
            .cmd("INCR")
            .arg("big:n")
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert!(a == big);
    assert!(b[..] == big[..3 * 1024 * 1024]);
    assert_eq!(n, 1);

    // The same through raw bytes: one write, reply read back exactly.
    let mut raw = proxy.raw().await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nbig:v\r\n").await;
    let header = format!("${}\r\n", big.len());
    let got = raw.read_exact_len(header.len() + big.len() + 2).await;
    assert_eq!(&got[..header.len()], header.as_bytes());
    assert!(got[header.len()..header.len() + big.len()] == big[..]);
    assert_eq!(&got[header.len() + big.len()..], b"\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_are_binary_safe() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut d = redis.direct().await;

    let all: Vec<u8> = (0..=255u8).collect();
    let mut key = b"bin:".to_vec();
    key.extend_from_slice(&all);
    let value: Vec<u8> = all
        .iter()
        .rev()
        .copied()
        .chain(all.iter().copied())
        .collect();

    let ok: String = within(
        "SET binary",
        redis::cmd("SET").arg(&key).arg(&value).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(ok, "OK");
    let back: Vec<u8> = within(
        "GET binary",
        redis::cmd("GET").arg(&key).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(back, value);
    let direct: Vec<u8> = within(
        "GET direct",
        redis::cmd("GET").arg(&key).query_async(&mut d),
    )
    .await
    .unwrap();
    assert_eq!(direct, value);

    // Every single byte as its own key and value, including \r, \n and \0.
    let mut p = redis::pipe();
    for b in 0..=255u8 {
        p.cmd("SET")
            .arg(&[b'b', b'1', b':', b][..])
            .arg(&[b, b'\r', b'\n', b, b'\0'][..])
            .ignore();
    }
    within("SET 256", p.query_async::<()>(&mut c))
        .await
        .unwrap();
    let mut mget = redis::cmd("MGET");
    for b in 0..=255u8 {
        mget.arg(&[b'b', b'1', b':', b][..]);
    }
    let vals: Vec<Vec<u8>> = within("MGET 256", mget.query_async(&mut c)).await.unwrap();
    assert_eq!(vals.len(), 256);
    for (b, v) in vals.iter().enumerate() {
        let b = b as u8;
        assert_eq!(v, &[b, b'\r', b'\n', b, b'\0'], "value for byte {b}");
    }

    // Binary hash fields and list elements.
    let n: RedisResult<i64> = within(
        "HSET binary",
        redis::cmd("HSET")
            .arg(&key)
            .arg(&b"f\r\n\0"[..])
            .arg(&all)
            .query_async(&mut c),
    )
    .await;
    assert!(
        n.is_err(),
        "HSET on a string key must fail with WRONGTYPE, got {n:?}"
    );
    let n: i64 = within(
        "HSET binary",
        redis::cmd("HSET")
            .arg(&b"bin:h\r\n"[..])
            .arg(&b"f\r\n\0"[..])
            .arg(&all)
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let f: Vec<u8> = within(
        "HGET binary",
        redis::cmd("HGET")
            .arg(&b"bin:h\r\n"[..])
            .arg(&b"f\r\n\0"[..])
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(f, all);

    // Raw bytes: a bulk string that contains a complete RESP frame is still just data.
    let mut raw = proxy.raw().await;
    let tricky: &[u8] = b"*1\r\n$4\r\nPING\r\n\0+OK\r\n";
    raw.send(&resp(&[b"SET", b"bin:tricky", tricky])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&[b"GET", b"bin:tricky"])).await;
    let mut expected = format!("${}\r\n", tricky.len()).into_bytes();
    expected.extend_from_slice(tricky);
    expected.extend_from_slice(b"\r\n");
    raw.expect(&expected).await;
    raw.send(&resp(&[b"ECHO", tricky])).await;
    raw.expect(&expected).await;
}
