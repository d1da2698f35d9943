//! Replies: framing what the upstream sends (through the one iterative reader in `scan`) and
//! building the replies cacheside answers itself, in the client's protocol.

use super::request::put_decimal;
use bytes::{BufMut, Bytes, BytesMut};

/// The RESP version a client connection speaks (HELLO switches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// What kind of frame a reply is, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A RESP3 out-of-band push (`>`): not the answer to any request.
    Push,
    /// An error reply (`-` or `!`).
    Error,
    /// Anything else.
    Value,
}

/// A complete reply frame at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    pub len: usize,
    pub kind: ReplyKind,
    /// For errors: where the error text is (without the `-`).
    pub text: Option<(usize, usize)>,
}

/// A reply that is not valid RESP: the upstream connection cannot be trusted any more.
#[derive(Debug, thiserror::Error)]
#[error("invalid reply from upstream: {0}")]
pub struct ReplyError(pub(crate) String);

/// Frames the reply at the front of `buf` in the connection's protocol; `Ok(None)` when it is
/// not complete yet. Iterative: see [`super::scan`].
pub fn frame(buf: &[u8], proto: Proto) -> Result<Option<ReplyFrame>, ReplyError> {
    super::scan::frame(buf, proto)
}

/// Splits the first `count` reply frames off `replies` (zero-copy slices, with their kinds);
/// `None` if fewer are there or one is not valid.
pub fn split(replies: &Bytes, count: usize, proto: Proto) -> Option<Vec<(Bytes, ReplyKind)>> {
    let mut out = Vec::with_capacity(count);
    let mut pos = 0;
    for _ in 0..count {
        let f = frame(&replies[pos..], proto).ok()??;
        out.push((replies.slice(pos..pos + f.len), f.kind));
        pos += f.len;
    }
    Some(out)
}

/// Frames a reply of either protocol (for connections that switch with HELLO): RESP2's
/// encodings mean the same in RESP3, so RESP2 is tried first and RESP3 only when it fails.
pub fn frame_any(buf: &[u8]) -> Result<Option<ReplyFrame>, ReplyError> {
    match frame(buf, Proto::Resp2) {
        Err(_) => frame(buf, Proto::Resp3),
        ok => ok,
    }
}

/// The text of an error frame (without the leading `-`).
pub fn error_text<'a>(buf: &'a [u8], f: &ReplyFrame) -> Option<&'a [u8]> {
    f.text.and_then(|(s, e)| buf.get(s..e))
}

/// Pub/sub subscription kinds: each has its own set of subscriptions upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// How many reply frames one request produces, for connections where that is not always one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this many (0 while CLIENT REPLY is OFF or skipping; one per channel for SUBSCRIBE).
    Frames(u32),
    /// UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE without arguments: one frame per subscription of
    /// that kind at the time it runs, or one if there is none.
    UnsubscribeAll(SubKind),
    /// One frame answering a command of cacheside's own: consumed, never relayed.
    Hidden,
}

/// A pub/sub frame (array or push) by its first element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSub {
    /// `message`/`pmessage`/`smessage`, or a tracking `invalidate`: not the reply to any request.
    Message,
    /// A (un)subscribe confirmation: the reply (or one of the replies) to a request.
    Confirm {
        kind: SubKind,
        subscribe: bool,
        name: Option<Bytes>,
    },
}

/// A (un)subscribe confirmation as Redis writes it: `head` (`subscribe`, `sunsubscribe`, ...),
/// the channel (null for an unsubscribe from nothing) and the client's count after it; an
/// array in RESP2, a push in RESP3.
pub fn subscription(
    out: &mut BytesMut,
    proto: Proto,
    head: &[u8],
    channel: Option<&[u8]>,
    count: usize,
) {
    out.extend_from_slice(match proto {
        Proto::Resp2 => b"*3\r\n",
        Proto::Resp3 => b">3\r\n",
    });
    bulk(out, head);
    match channel {
        Some(c) => bulk(out, c),
        None => null(out, proto),
    }
    integer(out, count as i64);
}

/// Classifies a complete frame (exactly `buf`) as pub/sub traffic, if it is.
pub fn pubsub(buf: &[u8]) -> Option<PubSub> {
    // Only aggregates can be pub/sub frames; cheap check before reading.
    let proto = match buf.first() {
        Some(b'*') => Proto::Resp2,
        Some(b'>') => Proto::Resp3,
        _ => return None,
    };
    let (v, _) = super::scan::Value::parse(buf, proto)?;
    let mut items = v.items()?;
    let head = items.next()?.string()?.to_ascii_lowercase();
    let name = items
        .next()
        .and_then(|v| v.string())
        .map(Bytes::copy_from_slice);
    let confirm = |kind, subscribe| {
        Some(PubSub::Confirm {
            kind,
            subscribe,
            name: name.clone(),
        })
    };
    match head.as_slice() {
        b"message" | b"pmessage" | b"smessage" | b"invalidate" => Some(PubSub::Message),
        b"subscribe" => confirm(SubKind::Channel, true),
        b"unsubscribe" => confirm(SubKind::Channel, false),
        b"psubscribe" => confirm(SubKind::Pattern, true),
        b"punsubscribe" => confirm(SubKind::Pattern, false),
        b"ssubscribe" => confirm(SubKind::Shard, true),
        b"sunsubscribe" => confirm(SubKind::Shard, false),
        _ => None,
    }
}

pub const OK: &[u8] = b"+OK\r\n";
pub const PONG: &[u8] = b"+PONG\r\n";
pub const RESET: &[u8] = b"+RESET\r\n";

/// `+<text>\r\n`
pub fn simple(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'+');
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// `-<text>\r\n`; `text` starts with the error code (`ERR`, `NOAUTH`, ...). CR and LF in the
/// text are replaced so the reply stays one frame.
pub fn error(out: &mut BytesMut, text: &str) {
    out.put_u8(b'-');
    for b in text.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// An error reply as its own `Bytes`.
pub fn error_bytes(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    error(&mut out, text);
    out.freeze()
}

/// `:<n>\r\n`
pub fn integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    if n < 0 {
        out.put_u8(b'-');
    }
    put_decimal(out, n.unsigned_abs() as usize);
    out.put_slice(b"\r\n");
}

/// `$<len>\r\n<data>\r\n`
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    super::request::encode_bulk(out, data);
}

/// The null reply in the client's protocol: `$-1` in RESP2, `_` in RESP3.
pub fn null(out: &mut BytesMut, proto: Proto) {
    out.put_slice(match proto {
        Proto::Resp2 => b"$-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// The null array in the client's protocol (EXEC of a transaction whose watch failed):
/// `*-1` in RESP2, `_` in RESP3.
pub fn null_array(proto: Proto) -> bytes::Bytes {
    bytes::Bytes::from_static(match proto {
        Proto::Resp2 => b"*-1\r\n",
        Proto::Resp3 => b"_\r\n",
    })
}

/// The header of an array (RESP2) or map (RESP3) of `pairs` key/value pairs.
pub fn map_header(out: &mut BytesMut, pairs: usize, proto: Proto) {
    match proto {
        Proto::Resp2 => {
            out.put_u8(b'*');
            put_decimal(out, pairs * 2);
        }
        Proto::Resp3 => {
            out.put_u8(b'%');
            put_decimal(out, pairs);
        }
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_resp2_and_resp3_replies() {
        use Proto::{Resp2, Resp3};
        for p in [Resp2, Resp3] {
            let f = frame(b"$3\r\nabc\r\n+OK", p).unwrap().unwrap();
            assert_eq!((f.len, f.kind), (9, ReplyKind::Value));
            let e = frame(b"-ERR x\r\n", p).unwrap().unwrap();
            assert_eq!(e.kind, ReplyKind::Error);
            assert_eq!(error_text(b"-ERR x\r\n", &e), Some(&b"ERR x"[..]));
            assert!(frame(b"$3\r\nab", p).unwrap().is_none());
            assert!(frame(b"?", p).is_err());
        }
        assert_eq!(frame(b"$-1\r\n", Resp2).unwrap().unwrap().len, 5);
        assert_eq!(frame(b"*-1\r\n", Resp2).unwrap().unwrap().len, 5);
        assert_eq!(frame(b"_\r\n", Resp3).unwrap().unwrap().len, 3);
        let push = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n";
        assert_eq!(frame(push, Resp3).unwrap().unwrap().kind, ReplyKind::Push);
        assert_eq!(frame_any(push).unwrap().unwrap().kind, ReplyKind::Push);
        assert_eq!(frame_any(b"$-1\r\n").unwrap().unwrap().len, 5);
        assert_eq!(frame_any(b"%1\r\n+a\r\n_\r\n").unwrap().unwrap().len, 11);
        assert!(frame_any(b"*2\r\n%1\r\n").unwrap().is_none());
    }

    #[test]
    fn pubsub_frames_are_told_apart_from_replies() {
        assert_eq!(
            pubsub(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"),
            Some(PubSub::Message)
        );
        assert_eq!(
            pubsub(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some(PubSub::Confirm {
                kind: SubKind::Channel,
                subscribe: false,
                name: None
            })
        );
        assert_eq!(
            pubsub(b"*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:1\r\n"),
            Some(PubSub::Confirm {
                kind: SubKind::Pattern,
                subscribe: true,
                name: Some(Bytes::from_static(b"p*"))
            })
        );
        assert_eq!(pubsub(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), None);
        assert_eq!(pubsub(b"$7\r\nmessage\r\n"), None);
    }

    #[test]
    fn split_takes_exactly_the_frames_asked_for() {
        let b = Bytes::from_static(b"+OK\r\n-ERR x\r\n:1\r\n");
        let two = split(&b, 2, Proto::Resp2).unwrap();
        assert_eq!(
            (&two[0].0[..], two[1].1),
            (&b"+OK\r\n"[..], ReplyKind::Error)
        );
        assert!(split(&b, 4, Proto::Resp2).is_none());
    }

    #[test]
    fn errors_stay_one_line() {
        let mut out = BytesMut::new();
        error(&mut out, "ERR a\r\nb");
        assert_eq!(&out[..], b"-ERR a  b\r\n");
    }

    #[test]
    fn integers_keep_their_sign() {
        let mut out = BytesMut::new();
        integer(&mut out, -42);
        integer(&mut out, 0);
        assert_eq!(&out[..], b":-42\r\n:0\r\n");
    }
}
