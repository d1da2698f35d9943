//! Micro-benchmarks of cacheside's I/O-free protocol layer (request parsing, command lookup, reply framing, key extraction); they do not measure sockets, the tokio runtime, routing, the upstream or end-to-end latency (see scripts/bench.sh for that).
//!
//! Run with `cargo bench --bench protocol` (add `-- --quick` for a fast smoke run).

use std::hint::black_box;
use std::time::Duration;

use cacheside::protocol::command::lookup;
use cacheside::protocol::reply::{frame, Proto};
use cacheside::protocol::request::{encode_command, parse, Limits, Request, Step};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Parses every request in `buf` the way the client session does; returns how many it found.
fn parse_all(buf: &[u8], limits: &Limits) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos < buf.len() {
        match parse(&buf[pos..], pos, limits) {
            Ok(Step::Request(p)) => {
                pos = p.span.end;
                n += 1;
            }
            Ok(Step::Skip(k)) => pos += k,
            Ok(Step::Incomplete { .. }) => break,
            Err(e) => panic!("benchmark input does not parse: {e}"),
        }
    }
    n
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();

    let mut get16 = Vec::new();
    for i in 0..16 {
        get16.extend_from_slice(&encode_command(&["GET", &format!("key:{i:06}")]));
    }
    assert_eq!(parse_all(&get16, &limits), 16);

    let value = [b'x'; 100];
    let set100: Vec<u8> = encode_command(&[&b"SET"[..], &b"key:000001"[..], &value[..]]).to_vec();
    assert_eq!(parse_all(&set100, &limits), 1);

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(16));
    g.bench_function("get_x16_pipelined", |b| {
        b.iter(|| parse_all(black_box(&get16), &limits))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_100b_value", |b| {
        b.iter(|| parse_all(black_box(&set100), &limits))
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    assert_eq!(lookup(b"get").name, "GET");
    assert_eq!(lookup(b"GeT").name, "GET");
    assert_eq!(lookup(b"nosuchcommand").name, "");

    let mut g = c.benchmark_group("lookup");
    g.bench_function("get_lowercase", |b| b.iter(|| lookup(black_box(b"get"))));
    g.bench_function("get_mixed_case", |b| b.iter(|| lookup(black_box(b"GeT"))));
    g.bench_function("zrangebyscore_mixed_case", |b| {
        b.iter(|| lookup(black_box(b"zRangeByScore")))
    });
    g.bench_function("unknown", |b| {
        b.iter(|| lookup(black_box(b"nosuchcommand")))
    });
    g.finish();
}

fn bench_frame(c: &mut Criterion) {
    let mut bulk = Vec::new();
    bulk.extend_from_slice(b"$100\r\n");
    bulk.extend_from_slice(&[b'v'; 100]);
    bulk.extend_from_slice(b"\r\n");

    let mut array16 = Vec::new();
    array16.extend_from_slice(b"*16\r\n");
    for i in 0..16 {
        let item = format!("value:{i:06}");
        array16.extend_from_slice(format!("${}\r\n{item}\r\n", item.len()).as_bytes());
    }

    for buf in [&bulk, &array16] {
        let f = frame(buf, Proto::Resp2)
            .expect("valid reply")
            .expect("complete reply");
        assert_eq!(f.len, buf.len());
    }

    let mut g = c.benchmark_group("frame_resp2");
    g.bench_function("bulk_100b", |b| {
        b.iter(|| frame(black_box(&bulk), Proto::Resp2).unwrap())
    });
    g.bench_function("array_16_bulks", |b| {
        b.iter(|| frame(black_box(&array16), Proto::Resp2).unwrap())
    });
    g.finish();
}

fn bench_keys(c: &mut Criterion) {
    let mut args: Vec<String> = vec!["MSET".into()];
    for i in 0..10 {
        args.push(format!("key:{i:06}"));
        args.push(format!("value:{i:06}"));
    }
    let req = Request::from_args(&args);
    let info = lookup(req.arg(0));
    assert_eq!(
        info.key_indices(&req).as_slice(),
        &[1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    );

    c.bench_function("key_indices/mset_10_pairs", |b| {
        b.iter(|| lookup(black_box(req.arg(0))).key_indices(black_box(&req)))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_parse, bench_lookup, bench_frame, bench_keys
}
criterion_main!(benches);
