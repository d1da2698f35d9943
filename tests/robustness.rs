//! Nothing a client or the upstream sends takes cacheside down or hangs a client: replies nested
//! deeper than any stack, requests read while a session waits, and arbitrary upstream bytes
//! through a fake upstream. Any panic in cacheside's code fails these tests (see `support`).

mod support;

use cacheside::protocol::{scan, Proto};
use proptest::prelude::*;
use std::time::Duration;
use support::fake::{Answer, FakeUpstream};
use support::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads `n` complete replies, or until the connection closes; `None` if neither happens in time.
async fn replies(s: &mut TcpStream, n: usize, within: Duration) -> Option<(Vec<u8>, usize)> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let (mut pos, mut got) = (0, 0);
            while got < n {
                match scan::frame(&buf[pos..], Proto::Resp3) {
                    Ok(Some(f)) => {
                        pos += f.len;
                        got += 1;
                    }
                    _ => break,
                }
            }
            if got == n {
                return got;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    };
    let got = tokio::time::timeout(within, read).await.ok()?;
    Some((buf, got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_reply_nested_thousands_deep_is_relayed_as_redis_sends_it() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    // From Redis's own suite ("Script return recursive object").
    let script = "local a = {}; local b = {a}; a[1] = b; return a";
    let eval = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
        script.len()
    );
    let eval = eval.as_bytes();
    let mut direct = TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap();
    direct.write_all(eval).await.unwrap();
    let (want, n) = replies(&mut direct, 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let depth = want.windows(4).filter(|w| w == b"*1\r\n").count();
    assert!(depth > 1000, "the reply is deeply nested ({depth} levels)");

    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(eval).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    let (got, n) = replies(&mut c, 2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(n, 2, "both replies arrive");
    assert_eq!(
        &got[..want.len()],
        &want[..],
        "the reply is Redis's, byte for byte"
    );
    assert_eq!(&got[want.len()..], b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_read_while_a_transaction_drains_is_answered() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    // A slow script inside a transaction, then a shared write: the session waits for the
    // pinned connection to drain before sending SET, and reads the GET during that wait.
    let slow = "local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; \
                repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 200000; return 1";
    let mut first = b"MULTI\r\n".to_vec();
    first.extend_from_slice(
        format!(
            "*3\r\n$4\r\nEVAL\r\n${}\r\n{slow}\r\n$1\r\n0\r\n",
            slow.len()
        )
        .as_bytes(),
    );
    first.extend_from_slice(b"EXEC\r\nSET k a\r\n");
    c.write_all(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(b"GET k\r\n").await.unwrap();
    let (got, n) = replies(&mut c, 5, Duration::from_secs(10))
        .await
        .expect("every reply arrives: the GET read during the wait is not left unparsed");
    assert_eq!(n, 5);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n+OK\r\n$1\r\na\r\n"
    );
}

/// How many GETs Redis has run, once that count has stopped moving.
async fn get_calls_settled(redis: &RedisServer) -> u64 {
    let mut last = u64::MAX;
    loop {
        let calls = redis.calls("get").await;
        if calls == last {
            return calls;
        }
        last = calls;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A raw client with 4 KiB socket buffers (so the kernel holds little of what is in flight),
/// under WATCH when `pinned` (its requests then go to a pinned connection).
async fn small_buffered_client(proxy: &Proxy, pinned: bool) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let mut c = socket.connect(proxy.addr).await.unwrap();
    if pinned {
        c.write_all(b"WATCH w\r\n").await.unwrap();
        let mut ok = [0u8; 5];
        c.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
    c
}

/// A client that pipelines without reading its replies has no more of it forwarded once
/// `server.max_pending_replies` of them are outstanding, on a shared connection and on a pinned
/// one (under WATCH) alike. Redis reads a pipeline however far behind its reader is; without
/// the bound cacheside would forward all of it and keep its books on every request, for as
/// long as the client sends. Then the client reads, and every reply arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_replies_has_no_more_of_its_pipeline_forwarded() {
    const SENT: usize = 20_000;
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| c.server.max_pending_replies = 64).await;
    let value = "x".repeat(1024);
    let _: () = support::query(&mut redis.direct().await, &["SET", "big", &value]).await;
    let one = "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
    let reply = format!("$1024\r\n{value}\r\n");
    let mut before = 0;
    for pinned in [false, true] {
        let c = small_buffered_client(&proxy, pinned).await;
        let (mut rd, mut wr) = c.into_split();
        let pipeline = one.repeat(SENT);
        let writing = tokio::spawn(async move {
            wr.write_all(pipeline.as_bytes()).await.unwrap();
            wr
        });
        let ran = get_calls_settled(&redis).await - before;
        assert!(
            ran < SENT as u64 / 2,
            "pinned: {pinned}: {ran} of {SENT} GETs ran while the client read nothing"
        );
        let mut got = vec![0u8; reply.len() * SENT];
        tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut got))
            .await
            .expect("every reply arrives once the client reads")
            .unwrap();
        assert!(got.chunks(reply.len()).all(|r| r == reply.as_bytes()));
        let _wr = writing.await.unwrap();
        before = get_calls_settled(&redis).await;
        assert_eq!(
            before,
            SENT as u64 * if pinned { 2 } else { 1 },
            "every GET ran once"
        );
        eprintln!("pinned: {pinned}: {ran} of {SENT} GETs ran before the client read");
    }
    support::assert_no_panics();
}

/// A client that writes its whole pipeline before it reads a reply (redis-py's
/// `pipeline.execute()`, `redis-cli --pipe`) gets every reply, on a shared connection and on a
/// pinned one, although the pipeline and its replies are far larger than the sockets' buffers
/// and than `server.max_pending_replies`: Redis buffers any amount of output, so a proxy that
/// stopped reading while replies wait would leave both sides waiting for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_pipeline_before_reading_gets_every_reply() {
    const SENT: usize = 400_000;
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let value = "v".repeat(32);
    let _: () = support::query(&mut redis.direct().await, &["SET", "k", &value]).await;
    let reply = format!("$32\r\n{value}\r\n");
    let pipeline = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(SENT);
    for pinned in [false, true] {
        let mut c = small_buffered_client(&proxy, pinned).await;
        let mut got = vec![0u8; reply.len() * SENT];
        tokio::time::timeout(Duration::from_secs(60), async {
            c.write_all(pipeline.as_bytes()).await.unwrap();
            c.read_exact(&mut got).await.unwrap();
        })
        .await
        .unwrap_or_else(|_| panic!("pinned: {pinned}: the pipeline was not answered in 60 s"));
        assert!(got.chunks(reply.len()).all(|r| r == reply.as_bytes()));
    }
    support::assert_no_panics();
}

/// Reply bytes a broken upstream or middlebox might send, pub/sub frames that answer nothing
/// included: a reply that never comes is a timeout, on pinned connections too.
fn upstream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"+OK\r\n".to_vec()),
        Just(b"$-1\r\n".to_vec()),
        Just(b"$1\r\nv\r\n".to_vec()),
        Just(b":1\r\n".to_vec()),
        Just(b":-2\r\n".to_vec()),
        Just(b"-ERR boom\r\n".to_vec()),
        Just(b"*2\r\n$1\r\na\r\n$-1\r\n".to_vec()),
        Just(b"*1\r\n+x\r\n".to_vec()),
        Just(b"*2\r\n+f\r\n:1\r\n".to_vec()),
        Just(b"*\r\n".to_vec()),
        Just(b"%1\r\n+a\r\n+b\r\n".to_vec()),
        Just(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n".to_vec()),
        Just(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n".to_vec()),
        Just(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n".to_vec()),
        (1usize..300).prop_map(|d| {
            let mut b = b"*1\r\n".repeat(d);
            b.extend_from_slice(b":1\r\n");
            b
        }),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

#[test]
fn arbitrary_upstream_replies_never_panic_or_hang_a_client() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let commands: &[&[u8]] = &[
        b"GET p:1\r\n",
        b"SET p:1 v\r\n",
        b"MGET p:1 p:2 x\r\n",
        b"HGETALL p:3\r\n",
        b"EXISTS p:1\r\n",
        b"INFO\r\n",
        b"MULTI\r\nSET p:2 x\r\nEXEC\r\n",
        b"GET p:1\r\n",
    ];
    proptest!(config, |(answers in prop::collection::vec(upstream_bytes(), 1..12), coherence in prop::sample::select(vec!["tracking", "broadcast", "ttl"]))| {
        rt.block_on(async {
            let script = answers.clone();
            let fake = FakeUpstream::start(move |n, _args| {
                Answer::Bytes(script[n % script.len()].clone())
            })
            .await;
            let proxy = Proxy::start_with(&fake.url(), |c| {
                c.upstream.command_timeout = cacheside::config::units::Human::millis(300);
                c.upstream.connect_timeout = cacheside::config::units::Human::millis(300);
                c.hot.coherence = coherence.into();
                c.cache = vec![cacheside::config::CacheRule {
                    keys: "p:*".into(),
                    ttl: cacheside::config::units::Human::secs(30),
                    max_value_size: cacheside::config::units::Size::mib(1),
                    enabled: true,
                }];
            })
            .await;
            let mut c = TcpStream::connect(proxy.addr).await.unwrap();
            for cmd in commands {
                let _ = c.write_all(cmd).await;
            }
            // Replies (right or wrong: the upstream lies) or a close, never a hang.
            let done = replies(&mut c, 10, Duration::from_secs(15)).await;
            prop_assert!(done.is_some(), "a client hung on upstream replies {:?}",
                answers.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>());
            support::assert_no_panics();
            Ok(())
        })?;
    });
}
