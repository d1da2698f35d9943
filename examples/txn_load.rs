//! Transaction load for `scripts/bench-txn.sh`: `--clients` connections, each running
//! `MULTI / INCR key / EXPIRE key 3600 / EXEC` on keys drawn at random from `--keyspace`, one
//! transaction at a time per connection (the client waits for EXEC's reply, as an app does),
//! for `--seconds`. With `--reconnect` every transaction opens its own connection (a
//! connection-per-request app). Prints `transactions <n> seconds <s> errors <e>` and the
//! latency percentiles of whole transactions.
//!
//! ```text
//! cargo run --release --example txn_load -- --addr 127.0.0.1:6380 --clients 20 --seconds 10
//! ```

#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Where to send the transactions (cacheside's listener), host:port.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 20)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// A new connection for every transaction.
    #[arg(long)]
    reconnect: bool,
}

/// Replies a transaction gets: +OK, +QUEUED twice, then EXEC's array of two integers.
fn complete(buf: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(buf).ok()?;
    let errors = text.lines().any(|l| l.starts_with('-'));
    if errors && text.ends_with("\r\n") {
        return Some(false);
    }
    let lines: Vec<&str> = text.split("\r\n").collect();
    // "+OK", "+QUEUED", "+QUEUED", "*2", ":n", ":1", "" once whole.
    (lines.len() >= 7 && lines[3] == "*2" && lines[6].is_empty()).then_some(true)
}

struct Outcome {
    done: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

async fn client(args: &Args, seed: u64, until: Instant) -> Result<Outcome, String> {
    let mut out = Outcome {
        done: 0,
        errors: 0,
        latencies: Vec::new(),
    };
    let mut conn: Option<TcpStream> = None;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = format!("txn:{}", rng % args.keyspace);
        let req = format!(
            "*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n*3\r\n$6\r\nEXPIRE\r\n${}\r\n{key}\r\n$4\r\n3600\r\n*1\r\n$4\r\nEXEC\r\n",
            key.len(),
            key.len()
        );
        let started = Instant::now();
        if conn.is_none() {
            conn = Some(
                TcpStream::connect(&args.addr)
                    .await
                    .map_err(|e| format!("connect {}: {e}", args.addr))?,
            );
        }
        let s = conn.as_mut().ok_or("no connection")?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let ok = loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(ok) = complete(&got) {
                break ok;
            }
        };
        out.latencies.push(started.elapsed());
        if ok {
            out.done += 1;
        } else {
            out.errors += 1;
        }
        if args.reconnect {
            conn = None;
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("txn_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let started = Instant::now();
        let until = started + Duration::from_secs(args.seconds);
        let args = std::sync::Arc::new(args);
        let mut tasks = Vec::new();
        for i in 0..args.clients {
            let args = args.clone();
            tasks.push(tokio::spawn(async move {
                client(&args, i as u64 + 1, until).await
            }));
        }
        let (mut done, mut errors, mut lat) = (0u64, 0u64, Vec::new());
        for t in tasks {
            match t.await {
                Ok(Ok(o)) => {
                    done += o.done;
                    errors += o.errors;
                    lat.extend(o.latencies);
                }
                Ok(Err(e)) => {
                    eprintln!("txn_load: {e}");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("txn_load: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!("transactions {done} seconds {secs:.2} errors {errors}");
        println!("p50_ms {:.3} p99_ms {:.3}", pct(0.50), pct(0.99));
        ExitCode::SUCCESS
    })
}
