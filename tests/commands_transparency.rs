//! Transparency: cacheside's replies (errors included) are redis-server's replies, byte for byte.

mod support;

use redis::Value;
use support::commands::{direct_raw, hello3, q, read_line, read_until_suffix, resp, start, try_q};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_return_the_upstreams_exact_error_bytes() {
    let (redis, proxy) = start().await;
    let mut via_proxy = proxy.raw().await;
    let mut direct = TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis-server");

    let requests: Vec<Vec<u8>> = vec![
        resp(&[b"NOSUCHCMD42", b"arg", b"more"]),
        resp(&[b"nosuchcmd"]),
        resp(&[b"FLUBBER", b"a\r\nb"]),
        // Known commands with bad arguments: redis-server's errors too.
        resp(&[b"GET"]),
        resp(&[b"SET", b"k"]),
        resp(&[b"CONFIG", b"NOPE"]),
        resp(&[b"OBJECT", b"NOPE", b"k"]),
        // An inline unknown command.
        b"NOSUCHINLINE a b\r\n".to_vec(),
    ];
    for req in &requests {
        direct.write_all(req).await.unwrap();
        let want = read_line(&mut direct).await;
        assert!(
            want.starts_with(b"-"),
            "{:?}",
            String::from_utf8_lossy(&want)
        );
        via_proxy.send(req).await;
        let got = read_line(&mut via_proxy.0).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "for request {:?}",
            String::from_utf8_lossy(req)
        );
    }
    // The connection is still fine afterwards.
    via_proxy.send(b"*1\r\n$4\r\nPING\r\n").await;
    via_proxy.expect(b"+PONG\r\n").await;

    // And the redis crate sees the same error.
    let mut c = proxy.client().await;
    let err = try_q::<Value, _>(&mut c, &["NOSUCHCMD42", "x"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown command 'NOSUCHCMD42'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_shared_connections_are_byte_identical_to_redis_in_resp2_and_resp3() {
    let (redis, proxy) = start().await;
    let mut d = redis.direct().await;
    q::<i64, _>(&mut d, &["HSET", "same:h", "a", "1", "b", "2"]).await;
    q::<i64, _>(&mut d, &["ZADD", "same:z", "1.5", "x", "2", "y"]).await;
    q::<i64, _>(&mut d, &["SADD", "same:s", "m"]).await;
    q::<String, _>(&mut d, &["XADD", "same:x", "1-1", "f", "v"]).await;
    let mut reqs = Vec::new();
    for args in [
        &["HGETALL", "same:h"][..],
        &["ZSCORE", "same:z", "x"],
        &["ZRANGE", "same:z", "0", "-1", "WITHSCORES"],
        &["SMEMBERS", "same:s"],
        &["GET", "same:none"],
        &["HGET", "same:h", "zz"],
        &["MGET", "same:none", "same:h"],
        &["XRANGE", "same:x", "-", "+"],
        &["XINFO", "STREAM", "same:x"],
        &["CONFIG", "GET", "maxmemory"],
        &["EXISTS", "same:h"],
        &["GEOPOS", "same:none", "a"],
        &["LPOS", "same:none", "a"],
        &["ZRANK", "same:z", "nope"],
        &["OBJECT", "FREQ", "same:h"],
        &["GET", "same:h"],
        &[
            "EVAL",
            "return {1, 'two', {3.5}, redis.status_reply('OK')}",
            "0",
        ],
        &["ECHO", "END"],
    ] {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        reqs.extend(resp(&a));
    }
    for resp3 in [false, true] {
        let mut direct = direct_raw(&redis).await;
        let mut via = proxy.raw().await;
        if resp3 {
            hello3(&mut direct).await;
            hello3(&mut via.0).await;
        }
        direct.write_all(&reqs).await.unwrap();
        let want = read_until_suffix(&mut direct, b"$3\r\nEND\r\n").await;
        via.send(&reqs).await;
        let got = read_until_suffix(&mut via.0, b"$3\r\nEND\r\n").await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "resp3: {resp3}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_mixing_shared_pinned_and_local_commands_replies_in_order() {
    let (_redis, proxy) = start().await;
    let mut raw = proxy.raw().await;
    let mut req = Vec::new();
    req.extend(resp(&[b"SET", b"mx:k", b"1"]));
    req.extend(resp(&[b"BLPOP", b"mx:none", b"0.1"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"MULTI"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"EXEC"]));
    req.extend(resp(&[b"PING"]));
    req.extend(resp(&[b"GET", b"mx:k"]));
    req.extend(resp(&[b"SELECT", b"3"]));
    req.extend(resp(&[b"GET", b"mx:k"]));
    req.extend(resp(&[b"SELECT", b"0"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"ECHO", b"done"]));
    raw.send(&req).await;
    raw.expect(
        b"+OK\r\n*-1\r\n:2\r\n+OK\r\n+QUEUED\r\n*1\r\n:3\r\n+PONG\r\n$1\r\n3\r\n\
          +OK\r\n$-1\r\n+OK\r\n:4\r\n$4\r\ndone\r\n",
    )
    .await;
}
