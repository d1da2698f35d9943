//! Replies: framing what the upstream sends (redis-protocol's RESP3 range decoder, which reads
//! RESP2 too) and building the replies cacheside answers itself, in the client's protocol.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp3::decode::complete::decode_range;
use redis_protocol::resp3::types::RangeFrame;

use super::request::put_decimal;

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
#[derive(Debug)]
pub struct ReplyFrame {
    pub len: usize,
    pub kind: ReplyKind,
    pub frame: RangeFrame,
}

/// A reply that is not valid RESP: the upstream connection cannot be trusted any more.
#[derive(Debug, thiserror::Error)]
#[error("invalid reply from upstream: {0}")]
pub struct ReplyError(String);

/// Frames the reply at the front of `buf`; `Ok(None)` when it is not complete yet.
pub fn frame(buf: &[u8]) -> Result<Option<ReplyFrame>, ReplyError> {
    match decode_range(buf) {
        Ok(Some((frame, len))) => {
            let kind = match &frame {
                RangeFrame::Push { .. } => ReplyKind::Push,
                RangeFrame::SimpleError { .. } | RangeFrame::BlobError { .. } => ReplyKind::Error,
                _ => ReplyKind::Value,
            };
            Ok(Some(ReplyFrame { len, kind, frame }))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(ReplyError(e.to_string())),
    }
}

/// Byte range of the `n`th element of an array or push frame, if it is a string.
pub fn element_str<'a>(buf: &'a [u8], frame: &RangeFrame, n: usize) -> Option<&'a [u8]> {
    let items = match frame {
        RangeFrame::Array { data, .. } | RangeFrame::Push { data, .. } => data,
        _ => return None,
    };
    match items.get(n)? {
        RangeFrame::BlobString { data, .. } | RangeFrame::SimpleString { data, .. } => {
            buf.get(data.0..data.1)
        }
        _ => None,
    }
}

/// The text of an error frame (without the leading `-`).
pub fn error_text<'a>(buf: &'a [u8], frame: &RangeFrame) -> Option<&'a [u8]> {
    match frame {
        RangeFrame::SimpleError { data, .. } | RangeFrame::BlobError { data, .. } => {
            buf.get(data.0..data.1)
        }
        _ => None,
    }
}

pub const OK: &[u8] = b"+OK\r\n";
pub const PONG: &[u8] = b"+PONG\r\n";
pub const QUEUED_RESET: &[u8] = b"+RESET\r\n";

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
        let f = frame(b"$3\r\nabc\r\n+OK").unwrap().unwrap();
        assert_eq!((f.len, f.kind), (9, ReplyKind::Value));
        assert_eq!(
            frame(b"-ERR x\r\n").unwrap().unwrap().kind,
            ReplyKind::Error
        );
        assert_eq!(frame(b"$-1\r\n").unwrap().unwrap().len, 5);
        assert_eq!(frame(b"*-1\r\n").unwrap().unwrap().len, 5);
        let push = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n";
        assert_eq!(frame(push).unwrap().unwrap().kind, ReplyKind::Push);
        assert!(frame(b"$3\r\nab").unwrap().is_none());
        assert!(frame(b"?").is_err());
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
