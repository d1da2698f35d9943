//! Load through cacheside: 500 concurrent clients and pipelines of 10,000 commands, each reply
//! going to its own client in request order.

mod support;

use redis::Value;
use std::time::Duration;
use support::commands::{q, resp, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_clients_each_read_only_their_own_values() {
    const CLIENTS: usize = 500;
    const ROUNDS: usize = 5;
    let (redis, proxy) = start().await;
    let url = proxy.url();

    // Connect everyone first, then let them all go at once.
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = within(
            "connect",
            redis::Client::open(url.clone())
                .unwrap()
                .get_multiplexed_async_connection(),
        )
        .await
        .expect("connect through cacheside");
        conns.push(c);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let key = format!("many:{i}");
                for round in 0..ROUNDS {
                    let v = format!("client-{i}-round-{round}-{}", "x".repeat(i % 50));
                    let ok: String = q(&mut c, &["SET", &key, &v]).await;
                    assert_eq!(ok, "OK");
                    let got: String = q(&mut c, &["GET", &key]).await;
                    assert_eq!(got, v, "client {i} round {round} read someone else's value");
                    let n: i64 = q(&mut c, &["INCR", &format!("many:n:{i}")]).await;
                    assert_eq!(n, round as i64 + 1, "client {i} counter");
                    // A pipelined pair, too: replies must stay in order and stay ours.
                    let (a, b): (String, i64) = redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("STRLEN")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    assert_eq!((a.as_str(), b), (v.as_str(), v.len() as i64));
                }
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("500 clients finish within 60 s");
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} clients failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let mut d = redis.direct().await;
    for i in [0, 1, 249, 499] {
        let v: String = q(&mut d, &["GET", &format!("many:{i}")]).await;
        assert!(
            v.starts_with(&format!("client-{i}-round-{}-", ROUNDS - 1)),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_raw_connections_pipelining_at_once_get_their_own_replies() {
    const CLIENTS: usize = 500;
    let (_redis, proxy) = start().await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let key = format!("rawmany:{i}");
                let val = format!("{i}:{}", "v".repeat(i % 37));
                let mut req = Vec::new();
                let mut expected = Vec::new();
                for _ in 0..3 {
                    req.extend_from_slice(&resp(&[b"SET", key.as_bytes(), val.as_bytes()]));
                    req.extend_from_slice(&resp(&[b"GET", key.as_bytes()]));
                    expected.extend_from_slice(b"+OK\r\n");
                    expected.extend_from_slice(format!("${}\r\n{val}\r\n", val.len()).as_bytes());
                }
                s.write_all(&req).await.expect("write");
                let mut got = vec![0u8; expected.len()];
                tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got))
                    .await
                    .expect("replies in time")
                    .expect("read");
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&expected),
                    "client {i}"
                );
            })
        })
        .collect();
    for (i, r) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_ten_thousand_incrs_replies_in_order() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut p = redis::pipe();
    for _ in 0..10_000 {
        p.cmd("INCR").arg("pipe:ctr");
    }
    let replies: Vec<i64> = within("10,000 INCRs", p.query_async(&mut c)).await.unwrap();
    assert_eq!(replies.len(), 10_000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(*r, i as i64 + 1, "reply {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_ten_thousand_sets_and_gets_replies_in_order() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut p = redis::pipe();
    for i in 0..5_000 {
        p.cmd("SET")
            .arg(format!("pipe:k:{i}"))
            .arg(format!("value-{i}"));
        p.cmd("GET").arg(format!("pipe:k:{i}"));
    }
    let replies: Vec<Value> = within("10,000 SET/GETs", p.query_async(&mut c))
        .await
        .unwrap();
    assert_eq!(replies.len(), 10_000);
    for i in 0..5_000 {
        assert_eq!(replies[2 * i], Value::Okay, "SET reply {i}");
        assert_eq!(
            replies[2 * i + 1],
            Value::BulkString(format!("value-{i}").into_bytes()),
            "GET reply {i}"
        );
    }
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["DBSIZE"]).await, 5_000);

    // The same depth as raw bytes in one write, mixing local (PING/ECHO) and forwarded commands.
    let mut raw = proxy.raw().await;
    let mut req = Vec::new();
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let n = i.to_string();
        match i % 4 {
            0 => {
                req.extend_from_slice(&resp(&[b"GET", format!("pipe:k:{}", i / 2).as_bytes()]));
                let v = format!("value-{}", i / 2);
                expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
            }
            1 => {
                req.extend_from_slice(&resp(&[b"ECHO", n.as_bytes()]));
                expected.extend_from_slice(format!("${}\r\n{n}\r\n", n.len()).as_bytes());
            }
            2 => {
                req.extend_from_slice(&resp(&[b"INCR", b"pipe:raw"]));
                expected.extend_from_slice(format!(":{}\r\n", i / 4 + 1).as_bytes());
            }
            _ => {
                req.extend_from_slice(&resp(&[b"PING"]));
                expected.extend_from_slice(b"+PONG\r\n");
            }
        }
    }
    raw.send(&req).await;
    let got = raw.read_exact_len(expected.len()).await;
    if got != expected {
        let at = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "raw pipeline differs at byte {at}: got {:?}, expected {:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())]),
            String::from_utf8_lossy(
                &expected[at.saturating_sub(40)..(at + 40).min(expected.len())]
            )
        );
    }
}
