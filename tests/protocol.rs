//! Raw RESP through cacheside: malformed input, limits, inline commands, partial frames,
//! connection-local commands, client auth, and that one client's trouble never reaches another.

mod support;

use redis::AsyncCommands;
use support::{Proxy, RedisServer};
use tokio::io::AsyncWriteExt;

async fn proxy_with(
    redis: &RedisServer,
    tweak: impl FnOnce(&mut cacheside::config::Config),
) -> Proxy {
    Proxy::start_with(&redis.url(), tweak).await
}

/// Sends `input`, expects exactly `reply`, then the connection to close.
async fn expect_reply_and_close(proxy: &Proxy, input: &[u8], reply: &[u8]) {
    let mut raw = proxy.raw().await;
    raw.send(input).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply),
        "input {:?}",
        String::from_utf8_lossy(input)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_redis_error_and_a_close() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| {
        c.server.max_bulk_len = cacheside::config::units::Size(1024);
        c.server.max_multibulk_len = 16;
    })
    .await;
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*x\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n:1\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n",
            b"-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$abc\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        // Over max_bulk_len: refused on the header, before any data is sent.
        (
            b"*2\r\n$3\r\nSET\r\n$2000\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        // Over max_multibulk_len.
        (
            b"*17\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET k \"unbalanced\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // Requests before the bad one run and are answered first, as in Redis.
        (
            b"PING\r\n*1\r\n:x\r\n",
            b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n",
        ),
    ];
    for (input, reply) in cases {
        expect_reply_and_close(&proxy, input, reply).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_inline_lines_and_query_buffers_are_refused() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| {
        c.server.max_query_buffer = cacheside::config::units::Size::kib(64);
    })
    .await;
    let long_line = vec![b'a'; 70 * 1024];
    expect_reply_and_close(
        &proxy,
        &long_line,
        b"-ERR Protocol error: too big inline request\r\n",
    )
    .await;

    // A legal bulk length whose data overflows the query buffer limit.
    let mut raw = proxy.raw().await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000\r\n").await;
    let _ = raw.0.write_all(&vec![b'x'; 100 * 1024]).await;
    let got = String::from_utf8_lossy(&raw.read_to_close().await).into_owned();
    assert!(
        got.starts_with("-ERR Protocol error: query buffer of")
            && got.contains("server.max_query_buffer"),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_client_does_not_disturb_others() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut good = proxy.client().await;
    let _: () = good.set("steady", "value").await.unwrap();
    for _ in 0..20 {
        expect_reply_and_close(
            &proxy,
            b"*1\r\n:1\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        )
        .await;
        let v: String = good.get("steady").await.unwrap();
        assert_eq!(v, "value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_work_like_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    raw.send(b"SET greeting \"hello world\"\r\nGET greeting\r\n\r\nEXISTS greeting nothing\n")
        .await;
    raw.expect(b"+OK\r\n$11\r\nhello world\r\n:1\r\n").await;
    raw.send(b"PING\r\nECHO 'it''s'\r\n").await;
    raw.expect(b"+PONG\r\n-ERR Protocol error: unbalanced quotes in request\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_into_single_bytes_are_reassembled() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    let pipeline = b"*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$6\r\nvalue!\r\n*2\r\n$3\r\nGET\r\n$5\r\nsplit\r\nPING\r\n";
    for b in pipeline.iter() {
        raw.send(&[*b]).await;
        raw.0.flush().await.unwrap();
    }
    raw.expect(b"+OK\r\n$6\r\nvalue!\r\n+PONG\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_pass_through_byte_for_byte() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let requests: &[&[u8]] = &[
        b"*2\r\n$9\r\nNOSUCHCMD\r\n$1\r\nx\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\ns\r\n$1\r\nv\r\n*3\r\n$5\r\nLPUSH\r\n$1\r\ns\r\n$1\r\nx\r\n",
        b"*1\r\n$3\r\nGET\r\n",
    ];
    for req in requests {
        let mut direct = support::Raw(
            tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
                .await
                .unwrap(),
        );
        direct.send(req).await;
        let mut through = proxy.raw().await;
        through.send(req).await;
        let expected_first = direct.read_exact_len(1).await;
        let mut want = expected_first.clone();
        // Read whatever redis sent (it is small and arrives at once), then the same length via the proxy.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut rest = vec![0u8; 4096];
        let n = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(&mut direct.0, &mut rest),
        )
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
        want.extend_from_slice(&rest[..n]);
        through.expect(&want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_are_answered_locally() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    raw.send(b"PING\r\nPING hi\r\nECHO x\r\nCLIENT SETNAME app-1\r\nCLIENT GETNAME\r\nCLIENT SETNAME \"bad name\"\r\nSELECT 0\r\nSELECT x\r\nAUTH anything\r\n").await;
    raw.expect(
        b"+PONG\r\n$2\r\nhi\r\n$1\r\nx\r\n+OK\r\n$5\r\napp-1\r\n-ERR Client names cannot contain spaces, newlines or special characters.\r\n+OK\r\n-ERR value is not an integer or out of range\r\n+OK\r\n",
    )
    .await;
    raw.send(b"HELLO 4\r\nQUIT\r\n").await;
    let got = raw.read_to_close().await;
    assert_eq!(
        &got[..],
        b"-NOPROTO unsupported protocol version\r\n+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_the_client_to_resp3() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    raw.send(b"HELLO 3\r\n").await;
    let hello = raw.read_exact_len(4).await;
    assert_eq!(&hello, b"%7\r\n", "HELLO 3 answers with a RESP3 map");
    // Drain the rest of the map, then RESP3-only encodings come back from the upstream.
    let mut c = proxy.client_resp3().await;
    let _: () = redis::cmd("HSET")
        .arg("h3")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut raw = proxy.raw().await;
    raw.send(b"HELLO 3\r\n").await;
    let _ = raw.read_exact_len(4).await;
    let mut rest = Vec::new();
    while !rest.ends_with(b"modules\r\n*0\r\n") {
        rest.extend(raw.read_exact_len(1).await);
    }
    raw.send(b"HGETALL h3\r\nGET missing\r\n").await;
    raw.expect(b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_gates_every_command_until_auth() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| {
        c.server.requirepass = Some("s3cret".into());
        c.server.username = "app".into();
    })
    .await;
    let mut raw = proxy.raw().await;
    raw.send(b"GET k\r\nAUTH wrong\r\nAUTH other s3cret\r\nAUTH app s3cret\r\nPING\r\n")
        .await;
    raw.expect(
        b"-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n+PONG\r\n",
    )
    .await;
    let mut raw = proxy.raw().await;
    raw.send(b"HELLO 2 AUTH app s3cret\r\n").await;
    let got = raw.read_exact_len(3).await;
    assert_eq!(&got[..], &b"*14"[..]);

    let authed = redis::Client::open(format!("redis://app:s3cret@{}", proxy.addr)).unwrap();
    let mut c = authed.get_multiplexed_async_connection().await.unwrap();
    let _: () = c.set("authed", 1).await.unwrap();
    let unauthed = redis::Client::open(proxy.url()).unwrap();
    let mut c = unauthed.get_multiplexed_async_connection().await.unwrap();
    let err = c.get::<_, Option<String>>("authed").await.unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_next_connection_with_an_error() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| c.server.max_clients = 2).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    a.send(b"PING\r\n").await;
    a.expect(b"+PONG\r\n").await;
    b.send(b"PING\r\n").await;
    b.expect(b"+PONG\r\n").await;
    let mut c = proxy.raw().await;
    assert_eq!(
        &c.read_to_close().await[..],
        b"-ERR max number of clients reached\r\n"
    );
    drop(a);
    // The freed slot is reusable (the session notices the close asynchronously: retry briefly).
    let mut ok = false;
    for _ in 0..100 {
        let mut d = proxy.raw().await;
        d.send(b"PING\r\n").await;
        let got = d.read_exact_len(7).await;
        if &got == b"+PONG\r\n" {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot frees up when a client leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_pipeline_leaves_no_stray_reply() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| c.upstream.connections = 1).await;
    let mut setup = proxy.client().await;
    let big = "b".repeat(4096);
    let _: () = setup.set("big", &big).await.unwrap();
    let checker = {
        let url = proxy.url();
        tokio::spawn(async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for i in 0..2000 {
                let key = format!("own:{i}");
                let _: () = c.set(&key, i).await.unwrap();
                let v: i64 = c.get(&key).await.unwrap();
                assert_eq!(v, i, "a reply meant for another client arrived");
            }
        })
    };
    for _ in 0..20 {
        let mut rude = proxy.raw().await;
        let mut pipeline = Vec::new();
        for _ in 0..2000 {
            pipeline.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
        }
        rude.send(&pipeline).await;
        drop(rude);
    }
    checker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_drops_pinned_state_and_quit_closes() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut direct = redis.direct().await;
    let mut raw = proxy.raw().await;
    raw.send(b"SELECT 3\r\nSET in3 x\r\nMULTI\r\nRESET\r\nGET in3\r\nQUIT\r\n")
        .await;
    let got = raw.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+OK\r\n+OK\r\n+RESET\r\n$-1\r\n+OK\r\n",
        "after RESET the client is back on db 0, outside the transaction"
    );
    let in0: Option<String> = direct.get("in3").await.unwrap();
    assert_eq!(in0, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_across_separate_batches() {
    let redis = RedisServer::start();
    let proxy = proxy_with(&redis, |c| c.upstream.connections = 4).await;
    let mut raw = proxy.raw().await;
    let mut expected = Vec::new();
    for i in 0..300 {
        let v = i.to_string();
        // Two writes, not awaited in between: each may become its own upstream batch.
        raw.send(format!("*3\r\n$3\r\nSET\r\n$3\r\nryw\r\n${}\r\n{v}\r\n", v.len()).as_bytes())
            .await;
        raw.0.flush().await.unwrap();
        raw.send(b"*2\r\n$3\r\nGET\r\n$3\r\nryw\r\n").await;
        expected.extend_from_slice(format!("+OK\r\n${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    raw.expect(&expected).await;
}
