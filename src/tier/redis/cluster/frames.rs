//! Reading a node's replies (redirections among them) and a client's batch, for the cluster
//! routing in `mod.rs`.

use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::{self, Limits, Step};
use crate::protocol::Request;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// What a node's error reply asks of the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// `-MOVED slot addr`: the slot lives there now.
    Moved(Arc<str>),
    /// `-ASK slot addr`: this once, there, after ASKING.
    Ask(Arc<str>),
    /// `-TRYAGAIN ...`: the keys are split between the two nodes of a migration.
    TryAgain,
}

/// What a redirection error names, before a port-only address is resolved.
enum Named<'a> {
    TryAgain,
    To { ask: bool, addr: &'a str },
}

fn named(frame: &[u8]) -> Option<Named<'_>> {
    if frame.starts_with(b"-TRYAGAIN") {
        return Some(Named::TryAgain);
    }
    let (ask, rest) = if let Some(r) = frame.strip_prefix(b"-MOVED ") {
        (false, r)
    } else {
        (true, frame.strip_prefix(b"-ASK ")?)
    };
    let line = rest.strip_suffix(b"\r\n")?;
    let addr = line.split(|&b| b == b' ').nth(1)?;
    let addr = std::str::from_utf8(addr).ok()?;
    if let Some(port) = addr.strip_prefix(':') {
        port.parse::<u16>().ok()?;
    }
    Some(Named::To { ask, addr })
}

/// The redirection `frame` asks for; `from` is the node that sent it (`host:port`), whose host
/// a redirection without an endpoint (`-MOVED 3999 :6380`) means. Without `from` such a one is
/// not followed.
pub(super) fn redirection(frame: &[u8], from: Option<&str>) -> Option<Redirect> {
    let (ask, addr) = match named(frame)? {
        Named::TryAgain => return Some(Redirect::TryAgain),
        Named::To { ask, addr } => (ask, addr),
    };
    let addr: Arc<str> = match addr.strip_prefix(':') {
        // A node that does not know the endpoint clients reach it by (behind a load balancer,
        // `cluster-preferred-endpoint-type unknown-endpoint`): same host, this port.
        Some(port) => {
            let (host, _) = from?.rsplit_once(':')?;
            format!("{host}:{port}").into()
        }
        None => addr.into(),
    };
    Some(if ask {
        Redirect::Ask(addr)
    } else {
        Redirect::Moved(addr)
    })
}

/// Whether `frame` is a redirection (with an endpoint or without).
pub(super) fn redirects(frame: &[u8]) -> bool {
    named(frame).is_some()
}

/// Whether `bytes` is exactly `count` valid replies, none of them a redirection to follow.
pub(super) fn plain(bytes: &[u8], count: usize, proto: Proto) -> bool {
    let mut pos = 0;
    for _ in 0..count {
        let Ok(Some(f)) = reply::frame(&bytes[pos..], proto) else {
            return false;
        };
        if f.kind == ReplyKind::Error && redirects(&bytes[pos..pos + f.len]) {
            return false;
        }
        pos += f.len;
    }
    pos == bytes.len()
}

pub(super) fn repeat(frame: &Bytes, count: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() * count as usize);
    for _ in 0..count {
        out.extend_from_slice(frame);
    }
    out.freeze()
}

/// The `count` requests of a batch (bytes the session already parsed and checked).
pub(super) fn parse_batch(bytes: &Bytes, count: u32) -> Option<Vec<Request>> {
    // Far above any configured limit (the session applied those), and within i64.
    let limits = Limits {
        max_bulk_len: 1 << 40,
        max_multibulk_len: 1 << 40,
        max_inline_len: 1 << 40,
    };
    let mut reqs = Vec::with_capacity(count as usize);
    let mut pos = 0;
    while reqs.len() < count as usize {
        match request::parse(&bytes[pos..], pos, &limits).ok()? {
            Step::Request(p) => {
                pos = p.span.end;
                reqs.push(Request::from_parsed(bytes, p));
            }
            Step::Skip(n) => pos += n,
            Step::Incomplete { .. } => return None,
        }
    }
    Some(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_pass_as_they_are_unless_one_must_be_followed() {
        let p = Proto::Resp2;
        assert!(plain(b"$1\r\na\r\n+OK\r\n-ERR no\r\n", 3, p));
        assert!(!plain(b"$1\r\na\r\n-MOVED 1 127.0.0.1:7001\r\n", 2, p));
        assert!(!plain(b"-ASK 1 127.0.0.1:7001\r\n", 1, p));
        assert!(!plain(b"-TRYAGAIN later\r\n", 1, p));
        // Too few, too many, or not RESP: the general path answers.
        assert!(!plain(b"+OK\r\n", 2, p));
        assert!(!plain(b"+OK\r\n+OK\r\n", 1, p));
        assert!(!plain(b"?\r\n", 1, p));
        // A MOVED without an endpoint is followed too, to the host that answered.
        assert!(!plain(b"-MOVED 1 :7001\r\n", 1, p));
    }

    #[test]
    fn redirections_are_read_from_moved_and_ask_errors() {
        assert_eq!(
            redirection(b"-MOVED 3999 127.0.0.1:6381\r\n", None),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirection(b"-ASK 3999 10.0.0.1:7000\r\n", Some("10.0.0.2:7001")),
            Some(Redirect::Ask("10.0.0.1:7000".into()))
        );
        assert_eq!(
            redirection(
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                None
            ),
            Some(Redirect::TryAgain)
        );
        assert_eq!(redirection(b"-ERR MOVED\r\n", None), None);
        assert_eq!(redirection(b"-MOVED\r\n", None), None);
        assert_eq!(redirection(b"+OK\r\n", None), None);
        // Without an endpoint: the host of the node that answered, the port given.
        let from = Some("cache.example:7000");
        assert_eq!(
            redirection(b"-MOVED 1 :7002\r\n", from),
            Some(Redirect::Moved("cache.example:7002".into()))
        );
        assert_eq!(
            redirection(b"-ASK 1 :7002\r\n", Some("[::1]:7000")),
            Some(Redirect::Ask("[::1]:7002".into()))
        );
        assert_eq!(redirection(b"-MOVED 1 :7002\r\n", None), None);
        assert_eq!(redirection(b"-MOVED 1 :x\r\n", from), None);
        assert!(redirects(b"-MOVED 1 :7002\r\n"));
        assert!(!redirects(b"-ERR MOVED\r\n"));
    }

    #[test]
    fn batches_are_split_back_into_their_requests() {
        let b = Bytes::from_static(b"*1\r\n$4\r\nPING\r\nGET k\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let reqs = parse_batch(&b, 3).unwrap();
        assert_eq!(reqs.len(), 3);
        assert!(reqs[2].arg_is(0, "GET"));
        assert!(parse_batch(&b, 4).is_none());
    }
}
