//! Latency-injecting TCP relay for the end-to-end benchmark: every chunk waits `--delay` each way.
//!
//! Each accepted connection is forwarded to `--target`; whatever is read from either side is
//! held for `--delay` before it is written to the other.
//!
//! ```text
//! cargo run --release --example latency_relay -- \
//!     --listen 127.0.0.1:7000 --target 127.0.0.1:6379 --delay 250us
//! ```
//!
//! A round trip through the relay gains at least 2 × `--delay`. `scripts/bench.sh --delay D`
//! (or `BENCH_DELAY=D`) puts it between Redis and everything that talks to Redis.
//!
//! Why a delay-line thread rather than `tokio::time::sleep` per chunk: tokio's timer works in
//! whole milliseconds, so a 250 µs sleep would last 1–2 ms. Instead each connection has, per
//! direction, a reader task that stamps every chunk with `deliver_at = read time + delay` and
//! queues it on one FIFO shared by all connections, and a writer task that writes whatever the
//! FIFO has released. One OS thread drains the FIFO, sleeping with `std::thread::sleep`
//! (nanosecond timer, tens of µs of slack) until the head is due. With one delay for every
//! chunk, `deliver_at` grows along the FIFO, so a head that is not due means nothing behind it
//! is; and a connection's chunks are released in the order they were read. A chunk is never
//! written early; it is late by the timer's slack and the wake-up of its writer task. On
//! SIGTERM or SIGINT the relay prints how late, past `deliver_at`, its writer tasks picked
//! chunks up (mean and max), and exits.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Largest single read; one queued chunk is at most this long.
const CHUNK: usize = 64 * 1024;
/// Bytes one direction of one connection may hold in the delay line. When it is full the
/// reader stops reading, and TCP's own flow control slows the sender.
const IN_FLIGHT: usize = 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "latency_relay",
    about = "TCP relay that delays every chunk by a fixed time in each direction"
)]
struct Args {
    /// Address to accept connections on, e.g. 127.0.0.1:7000.
    #[arg(long)]
    listen: SocketAddr,
    /// Address every accepted connection is forwarded to, e.g. 127.0.0.1:6379.
    #[arg(long)]
    target: String,
    /// Time each chunk is held, in each direction ("250us", "1ms", "0s").
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Duration,
}

/// A chunk and the time it is due; `None` is the end of the stream (passed on as a half-close
/// once everything read before it has been written).
type Timed = (Instant, Option<Bytes>);

/// A chunk waiting in the delay line, with the writer task it goes to.
struct Due {
    chunk: Timed,
    to: mpsc::UnboundedSender<Timed>,
}

/// How late writer tasks picked chunks up, past their `deliver_at`.
#[derive(Default)]
struct Lateness {
    chunks: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Lateness {
    fn record(&self, late: Duration) {
        let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// The delay-line thread: releases each chunk to its writer task once it is due.
fn run_line(line: std_mpsc::Receiver<Due>) {
    while let Ok(due) = line.recv() {
        let now = Instant::now();
        if due.chunk.0 > now {
            std::thread::sleep(due.chunk.0 - now);
        }
        // A closed receiver means its connection is gone; the chunk goes with it.
        let _ = due.to.send(due.chunk);
    }
}

/// Reads `from` and queues each chunk on the delay line for `to`'s writer task. Ends at EOF or
/// a read error (both passed on as the end of the stream) or when the writer task is gone.
async fn carry(
    mut from: OwnedReadHalf,
    delay: Duration,
    line: std_mpsc::Sender<Due>,
    to: mpsc::UnboundedSender<Timed>,
    budget: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // A closed budget means the writer task has stopped.
        let Ok(permit) = budget.acquire_many(CHUNK as u32).await else {
            return;
        };
        permit.forget();
        let n = from.read(&mut buf).await.unwrap_or(0);
        let deliver_at = Instant::now() + delay;
        budget.add_permits(CHUNK - n);
        let chunk = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
        let end = chunk.is_none();
        let due = Due {
            chunk: (deliver_at, chunk),
            to: to.clone(),
        };
        if line.send(due).is_err() || end {
            return;
        }
    }
}

/// Writes released chunks to `to`, all chunks already released in one write. Gives the bytes
/// it wrote back to `budget`; closes `budget` when it stops so the reader stops too.
async fn deliver(
    mut released: mpsc::UnboundedReceiver<Timed>,
    mut to: OwnedWriteHalf,
    budget: Arc<Semaphore>,
    lateness: Arc<Lateness>,
) {
    let mut batch = BytesMut::new();
    let mut end = false;
    while !end {
        let Some(first) = released.recv().await else {
            break;
        };
        let now = Instant::now();
        let mut next = Some(first);
        while let Some((deliver_at, chunk)) = next {
            lateness.record(now.saturating_duration_since(deliver_at));
            match chunk {
                Some(bytes) => batch.extend_from_slice(&bytes),
                None => {
                    end = true;
                    break;
                }
            }
            next = released.try_recv().ok();
        }
        if !batch.is_empty() {
            if to.write_all(&batch).await.is_err() {
                break;
            }
            budget.add_permits(batch.len());
            batch.clear();
        }
    }
    if end {
        let _ = to.shutdown().await;
    }
    budget.close();
}

/// Connects to the target and starts the four tasks of one relayed connection.
async fn relay(
    client: TcpStream,
    target: Arc<str>,
    delay: Duration,
    line: std_mpsc::Sender<Due>,
    lateness: Arc<Lateness>,
) {
    let server = match TcpStream::connect(&*target).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency_relay: cannot connect to {target}: {e}");
            return;
        }
    };
    // The relay adds only the configured delay; Nagle would add its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    for (from, to) in [(client_r, server_w), (server_r, client_w)] {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(carry(from, delay, line.clone(), tx, budget.clone()));
        tokio::spawn(deliver(rx, to, budget, lateness.clone()));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latency_relay: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let lateness = Arc::new(Lateness::default());
    let (line, line_rx) = std_mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("delay-line".into())
        .spawn(move || run_line(line_rx));
    if let Err(e) = spawned {
        eprintln!("latency_relay: cannot start the delay-line thread: {e}");
        return ExitCode::FAILURE;
    }
    let target: Arc<str> = args.target.into();
    eprintln!(
        "latency_relay: {} -> {target}, each chunk held {} in each direction",
        args.listen,
        humantime::format_duration(args.delay)
    );

    let shutdown = cacheside::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let lateness = lateness.clone();
                    tokio::spawn(relay(client, target.clone(), args.delay, line.clone(), lateness));
                }
                // E.g. out of file descriptors: keep serving the connections there are.
                Err(e) => {
                    eprintln!("latency_relay: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    let chunks = lateness.chunks.load(Ordering::Relaxed);
    let sum_ns = lateness.sum_ns.load(Ordering::Relaxed);
    let max_ns = lateness.max_ns.load(Ordering::Relaxed);
    let mean_us = if chunks > 0 {
        sum_ns as f64 / chunks as f64 / 1e3
    } else {
        0.0
    };
    // scripts/bench.sh reads this line; keep its shape.
    println!(
        "latency_relay: delay {} each way; {chunks} chunks written, picked up {mean_us:.1} us after due on average, {:.1} us at most",
        humantime::format_duration(args.delay),
        max_ns as f64 / 1e3
    );
    ExitCode::SUCCESS
}
