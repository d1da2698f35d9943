//! Helpers for the end-to-end command tests: string-argument commands with a time limit, a
//! redis-server with cacheside in front of it, and raw RESP encoding and reading.

use super::{Proxy, RedisServer};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{FromRedisValue, RedisResult};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No single step of these tests should take anywhere near this long.
const STEP: Duration = Duration::from_secs(15);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Runs a command of string arguments; `Err` is the server's (or client's) error.
pub async fn try_q<T: FromRedisValue, C: ConnectionLike + Send>(
    con: &mut C,
    args: &[&str],
) -> RedisResult<T> {
    let c = cmd(args);
    within(&format!("{args:?}"), c.query_async(con)).await
}

/// Runs a command of string arguments that must succeed.
pub async fn q<T: FromRedisValue, C: ConnectionLike + Send>(con: &mut C, args: &[&str]) -> T {
    try_q(con, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// A redis-server and cacheside in front of it.
pub async fn start() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    (redis, proxy)
}

/// A direct client to one database of the redis-server, bypassing cacheside.
pub async fn direct_db(redis: &RedisServer, db: u32) -> MultiplexedConnection {
    redis::Client::open(format!("{}/{db}", redis.url()))
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server directly")
}

/// RESP encoding of one command (binary-safe).
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one line (through its CRLF) from a raw stream.
pub async fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        let n = within("read a reply line", s.read(&mut byte))
            .await
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    out
}

/// Reads from a raw stream until the bytes read end with `suffix`; returns everything read.
pub async fn read_until_suffix(s: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.ends_with(suffix) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {:?}; got so far: {:?}",
                    String::from_utf8_lossy(suffix),
                    String::from_utf8_lossy(&out)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "closed; got so far: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Reads until `n` bytes arrived, the peer closed, or `limit` passed; returns what arrived.
pub async fn read_up_to(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => out.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

/// Switches a raw connection to RESP3 and skips the HELLO reply (cacheside's or redis-server's).
pub async fn hello3(s: &mut TcpStream) {
    s.write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        .await
        .unwrap();
    read_until_suffix(s, b"$7\r\nmodules\r\n*0\r\n").await;
}

pub async fn direct_raw(redis: &RedisServer) -> TcpStream {
    TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis-server")
}
