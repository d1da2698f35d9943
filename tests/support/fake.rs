//! A fake upstream: the one place a fake is right, since a real Redis cannot be made to send
//! what a broken server or a middlebox might. It parses each request with cacheside's own
//! parser and answers with whatever the test's function returns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the fake does with one request.
pub enum Answer {
    /// Write these bytes (any bytes: valid, partial, garbage, several frames).
    Bytes(Vec<u8>),
    /// Close the connection.
    Close,
}

/// (connection number, request number over all connections, arguments) -> answer.
type Script = dyn Fn(usize, usize, &[Vec<u8>]) -> Answer + Send + Sync;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Answers the n-th request it reads (counted over all connections) with `script(n, args)`.
    pub async fn start(
        script: impl Fn(usize, &[Vec<u8>]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::start_per_connection(move |_, n, args| script(n, args)).await
    }

    /// Like `start`, and the script also learns which connection (numbered from 0 in the
    /// order they were accepted) the request came on.
    pub async fn start_per_connection(
        script: impl Fn(usize, usize, &[Vec<u8>]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("fake upstream addr");
        let script: Arc<Script> = Arc::new(script);
        let seen = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            let mut conns = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let (script, seen) = (script.clone(), seen.clone());
                let conn = conns;
                conns += 1;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let limits = cacheside::protocol::Limits::default();
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        loop {
                            use cacheside::protocol::request::{parse, Step};
                            let (used, args) = match parse(&buf, 0, &limits) {
                                Ok(Step::Request(p)) => {
                                    let base = p.encoded.clone();
                                    let src: &[u8] = base.as_deref().unwrap_or(&buf);
                                    let args = p
                                        .args
                                        .iter()
                                        .map(|&(a, b)| src[a as usize..b as usize].to_vec())
                                        .collect::<Vec<_>>();
                                    (p.span.end, args)
                                }
                                Ok(Step::Skip(n)) => (n, Vec::new()),
                                Ok(Step::Incomplete { .. }) => break,
                                Err(_) => return,
                            };
                            buf.drain(..used);
                            if args.is_empty() {
                                continue;
                            }
                            let n = seen.fetch_add(1, Ordering::Relaxed);
                            match script(conn, n, &args) {
                                Answer::Bytes(b) => {
                                    if s.write_all(&b).await.is_err() {
                                        return;
                                    }
                                }
                                Answer::Close => return,
                            }
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
