//! Stand-in for a fleet's invalidation connections: `--count` connections that SUBSCRIBE to
//! `--channel` (repeatable: each connection subscribes to every one) on `--redis` and read (and
//! discard) every message, as sidecars in broadcast mode do. Used by `scripts/bench-fanout.sh` to measure what broadcast coherence costs Redis.
//!
//! ```text
//! cargo run --release --example fanout_subscribers -- \
//!     --redis 127.0.0.1:6379 --channel cacheside:invalidate --count 1000
//! ```
//!
//! Prints `subscribed <count>` once every connection's SUBSCRIBE is confirmed; on SIGTERM or
//! SIGINT prints the bytes read in total and exits.

#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Redis address, host:port.
    #[arg(long)]
    redis: String,
    /// Channels each connection subscribes to.
    #[arg(long = "channel", default_value = "cacheside:invalidate")]
    channels: Vec<String>,
    /// Subscriber connections to open.
    #[arg(long)]
    count: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout_subscribers: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let read = Arc::new(AtomicU64::new(0));
    let mut subscribe = format!("*{}\r\n$9\r\nSUBSCRIBE\r\n", args.channels.len() + 1);
    for c in &args.channels {
        subscribe.push_str(&format!("${}\r\n{c}\r\n", c.len()));
    }
    // The last confirmation counts every channel.
    let confirmed = format!(":{}\r", args.channels.len());
    let mut ready = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let mut s = match TcpStream::connect(&args.redis).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fanout_subscribers: connect {}: {e}", args.redis);
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = s.write_all(subscribe.as_bytes()).await {
            eprintln!("fanout_subscribers: subscribe: {e}");
            return ExitCode::FAILURE;
        }
        ready.push(s);
    }
    // Every confirmation is read before the count is reported, so a run starts with all
    // subscribers counted by Redis.
    let mut conns = Vec::with_capacity(ready.len());
    for mut s in ready {
        let mut buf = vec![0u8; 256];
        let mut got = Vec::new();
        while !got
            .windows(confirmed.len())
            .any(|w| w == confirmed.as_bytes())
        {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    eprintln!(
                        "fanout_subscribers: connection closed before SUBSCRIBE was confirmed"
                    );
                    return ExitCode::FAILURE;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        conns.push(s);
    }
    println!("subscribed {}", conns.len());
    for mut s in conns {
        let read = read.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fanout_subscribers: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("read {} bytes", read.load(Ordering::Relaxed));
    ExitCode::SUCCESS
}
