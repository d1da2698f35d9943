//! `CACHESIDE ...`: the operator's commands on the data port (`redis-cli -p 6380 cacheside stats`).
//! Allowed to clients on loopback, or to any client once it has authenticated with
//! `server.requirepass` (a remote client of a sidecar without a password gets `-NOPERM`).

use super::{ClientState, Decision, Router};
use crate::metrics::InvalidationSource;
use crate::protocol::{reply, Request};
use bytes::BytesMut;
use std::fmt::Write;

const HELP: &[&str] = &[
    "CACHESIDE <subcommand> [<arg> ...]. Subcommands are:",
    "STATS",
    "    Hit ratios, hot-tier size and coherence, read-through counters per mapping.",
    "MAPPINGS",
    "    The read-through mappings: name, key pattern, shape, TTLs.",
    "EVICT <key> [<key> ...]",
    "    Drop keys from this sidecar's hot tier (Redis keeps them). Returns how many were held.",
    "FLUSH HOT",
    "    Empty this sidecar's hot tier.",
    "HELP",
    "    Print this help.",
];

pub(super) async fn run(router: &Router, st: &ClientState, req: &Request) -> Decision {
    if router.auth.is_none() && !st.loopback {
        return fail("NOPERM CACHESIDE commands are allowed from loopback, or after AUTH when server.requirepass is set");
    }
    let sub = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
    match (sub.as_str(), req.argc()) {
        ("STATS", 2) => bulk(stats(router).as_bytes()),
        ("MAPPINGS", 2) => mappings(router),
        ("EVICT", n) if n >= 3 => {
            let Some(hot) = router.hot() else {
                return int(0);
            };
            let mut held = 0;
            for i in 2..n {
                if hot.holds(req.arg(i)) {
                    held += 1;
                }
                hot.invalidate(req.arg(i), InvalidationSource::Operator)
                    .await;
            }
            int(held)
        }
        ("FLUSH", 3) if req.arg_is(2, "HOT") => {
            if let Some(hot) = router.hot() {
                hot.invalidate_all(InvalidationSource::Operator).await;
            }
            Decision::Reply(bytes::Bytes::from_static(reply::OK))
        }
        ("HELP", 2) => {
            let mut out = BytesMut::new();
            out.extend_from_slice(format!("*{}\r\n", HELP.len()).as_bytes());
            for line in HELP {
                reply::simple(&mut out, line.as_bytes());
            }
            Decision::Reply(out.freeze())
        }
        ("STATS" | "MAPPINGS" | "EVICT" | "FLUSH" | "HELP", _) => fail(&format!(
            "ERR wrong number of arguments for 'cacheside|{}' command",
            sub.to_ascii_lowercase()
        )),
        _ => fail(&format!(
            "ERR unknown subcommand '{}'. Try CACHESIDE HELP.",
            String::from_utf8_lossy(req.arg(1))
        )),
    }
}

/// INFO-style lines: what an operator looks at first.
fn stats(router: &Router) -> String {
    let mut s = String::from("# cacheside\r\n");
    let _ = write!(
        s,
        "version:{}\r\nupstream:{}\r\nconnected_clients:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        if router.has_upstream {
            "configured"
        } else {
            "none (standalone)"
        },
        router.clients.count(),
    );
    match router.hot() {
        Some(hot) => {
            let (hits, misses) = hot.hit_counts();
            let ratio = if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            };
            // The tier's own section: state, size, hits, fills, evictions.
            s.push_str(hot.info_section().trim_start_matches("# cacheside\r\n"));
            let _ = write!(s, "hot_hit_ratio:{ratio:.4}\r\n");
        }
        None => s.push_str("hot_state:off\r\n"),
    }
    if let Some(loader) = router.loader() {
        for m in loader.mappings().iter() {
            let o = &m.metrics;
            let _ = write!(
                s,
                "mapping_{}:queries={},rows={},negative_hits={},coalesced={},fills={},lease_waits={},degraded={}\r\n",
                m.name,
                o.queries.get(),
                o.rows.get(),
                o.negative_hits.get(),
                o.coalesced.get(),
                o.fills.get(),
                o.lease_waits.get(),
                o.degraded.get(),
            );
        }
    }
    s
}

fn mappings(router: &Router) -> Decision {
    let Some(loader) = router.loader() else {
        return Decision::Reply(bytes::Bytes::from_static(b"*0\r\n"));
    };
    let all = loader.mappings();
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{}\r\n", all.len()).as_bytes());
    for m in all.iter() {
        let line = format!(
            "name={} key={} shape={:?} ttl={:?} negative_ttl={:?}",
            m.name, m.pattern, m.shape, m.ttl, m.negative_ttl
        );
        reply::bulk(&mut out, line.as_bytes());
    }
    Decision::Reply(out.freeze())
}

fn bulk(data: &[u8]) -> Decision {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    reply::bulk(&mut out, data);
    Decision::Reply(out.freeze())
}

fn int(n: i64) -> Decision {
    let mut out = BytesMut::with_capacity(8);
    reply::integer(&mut out, n);
    Decision::Reply(out.freeze())
}

fn fail(text: &str) -> Decision {
    Decision::Reply(reply::error_bytes(text))
}
