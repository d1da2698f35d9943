//! Arbitrary bytes into a live session never panic the proxy and never hang it: each input gets
//! replies or a close, and another client keeps being served throughout.

mod support;

use proptest::prelude::*;
use std::time::Duration;
use support::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fragments that make random input reach deeper states than uniform noise would.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()),
        Just(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n".to_vec()),
        Just(b"MULTI\r\n".to_vec()),
        Just(b"EXEC\r\n".to_vec()),
        Just(b"SUBSCRIBE c\r\n".to_vec()),
        Just(b"HELLO 3\r\n".to_vec()),
        Just(b"SELECT 1\r\n".to_vec()),
        Just(b"BLPOP nothing 0.01\r\n".to_vec()),
        Just(b"RESET\r\n".to_vec()),
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
        Just(b"*1\r\n$99999999999\r\n".to_vec()),
        (0u32..5000).prop_map(|n| format!("*1\r\n${n}\r\n").into_bytes()),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 1..12).prop_map(|v| v.concat())
}

#[test]
fn arbitrary_bytes_never_break_the_proxy() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Commands random input must never reach: renamed away on this server.
    let redis = RedisServer::start_with(&[
        "--rename-command",
        "SHUTDOWN",
        "",
        "--rename-command",
        "DEBUG",
        "",
        "--rename-command",
        "FLUSHALL",
        "",
        "--rename-command",
        "CONFIG",
        "",
        "--rename-command",
        "REPLICAOF",
        "",
        "--rename-command",
        "SLAVEOF",
        "",
    ]);
    let proxy = rt.block_on(Proxy::start_with(&redis.url(), |c| {
        c.server.max_query_buffer = cacheside::config::units::Size::kib(256);
    }));
    let addr = proxy.addr;
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(bytes in input())| {
        rt.block_on(async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            // Replies or a close, never a hang: reading ends when the proxy closes its side.
            let mut sink = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
            prop_assert!(r.is_ok(), "the proxy hung on input {:?}", String::from_utf8_lossy(&bytes));
            // And another client is still served.
            let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
            probe.write_all(b"PING\r\n").await.unwrap();
            let mut pong = [0u8; 7];
            tokio::time::timeout(Duration::from_secs(5), probe.read_exact(&mut pong)).await.unwrap().unwrap();
            prop_assert_eq!(&pong, b"+PONG\r\n");
            Ok(())
        })?;
    });
    drop(proxy);
}
