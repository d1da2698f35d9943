//! The one reply reader: frames RESP2/RESP3 replies with a loop and a counter (no recursion, no
//! allocation, however deep the nesting), and reads framed replies through typed views.
//!
//! Framing counts the items still owed instead of descending into aggregates: an array of n
//! adds n, a map 2n, an attribute 2n plus the value it annotates. A Lua script can make Redis
//! send an array nested thousands deep ("Script return recursive object" in Redis's suite), and
//! a worker's stack is 2 MiB, so depth costs nothing here. Streamed RESP3 aggregates and strings
//! (`*?`, `$?`) are refused: Redis never sends them.

use super::reply::{Proto, ReplyError, ReplyFrame, ReplyKind};

/// Reads a `\r\n`-terminated line starting at `at`: (line end, index after CRLF).
fn line(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, ReplyError> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    match memchr::memchr(b'\n', rest) {
        None => Ok(None),
        Some(i) if i == 0 || rest[i - 1] != b'\r' => Err(bad("line not ended by CRLF")),
        Some(i) => Ok(Some((at + i - 1, at + i + 1))),
    }
}

fn bad(what: &str) -> ReplyError {
    ReplyError(what.to_string())
}

/// A decimal length or integer as Redis writes them.
pub(crate) fn int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

/// Frames the reply at the front of `buf`; `Ok(None)` when it is not complete yet.
pub fn frame(buf: &[u8], proto: Proto) -> Result<Option<ReplyFrame>, ReplyError> {
    let Some(len) = span(buf, proto)? else {
        return Ok(None);
    };
    // The kind is that of the value, after any attributes that annotate it.
    let mut at = 0;
    while buf[at] == b'|' {
        let (end, next) = line(buf, at + 1)?.ok_or_else(|| bad("attribute"))?;
        let n = int(&buf[at + 1..end]).ok_or_else(|| bad("attribute length"))?;
        at = next;
        for _ in 0..n.saturating_mul(2) {
            at += span(&buf[at..len], proto)?.ok_or_else(|| bad("attribute"))?;
        }
    }
    let (end, next) = line(buf, at + 1)?.ok_or_else(|| bad("frame"))?;
    let (kind, text) = match buf[at] {
        b'-' => (ReplyKind::Error, Some((at + 1, end))),
        b'!' => (ReplyKind::Error, Some((next, len - 2))),
        b'>' => (ReplyKind::Push, None),
        _ => (ReplyKind::Value, None),
    };
    Ok(Some(ReplyFrame { len, kind, text }))
}

/// The length of the frame at the front of `buf`, counting the items still owed instead of
/// descending into aggregates.
fn span(buf: &[u8], proto: Proto) -> Result<Option<usize>, ReplyError> {
    let resp3 = proto == Proto::Resp3;
    let mut pos = 0usize;
    let mut owed: u64 = 1;
    while owed > 0 {
        owed -= 1;
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let known = match t {
            b'+' | b'-' | b':' | b'$' | b'*' => true,
            b'_' | b',' | b'#' | b'(' | b'!' | b'=' | b'~' | b'>' | b'%' | b'|' => resp3,
            _ => false,
        };
        if !known {
            return Err(bad("unexpected reply type byte"));
        }
        let Some((end, next)) = line(buf, pos + 1)? else {
            return Ok(None);
        };
        let text = &buf[pos + 1..end];
        let add: u64 = match t {
            b'+' | b'-' | b':' => 0,
            b'_' | b',' | b'#' | b'(' => 0,
            b'$' | b'!' | b'=' => {
                let len = int(text).ok_or_else(|| bad("invalid bulk length"))?;
                if len == -1 && t == b'$' {
                    pos = next;
                    continue;
                }
                let len = usize::try_from(len).map_err(|_| bad("invalid bulk length"))?;
                let data_end = next.checked_add(len).ok_or_else(|| bad("bulk too long"))?;
                let Some(crlf) = buf.get(data_end..data_end.saturating_add(2)) else {
                    return Ok(None);
                };
                if crlf != b"\r\n" {
                    return Err(bad("bulk string not ended by CRLF"));
                }
                pos = data_end + 2;
                continue;
            }
            _ => {
                let n = int(text).ok_or_else(|| bad("invalid aggregate length"))?;
                if n == -1 && t == b'*' {
                    0
                } else {
                    let n = u64::try_from(n).map_err(|_| bad("invalid aggregate length"))?;
                    match t {
                        b'%' => n.checked_mul(2),
                        // An attribute annotates the value that follows it: that value is the
                        // item, so it is owed as well.
                        b'|' => n.checked_mul(2).and_then(|m| m.checked_add(1)),
                        _ => Some(n),
                    }
                    .ok_or_else(|| bad("aggregate too long"))?
                }
            }
        };
        owed = owed
            .checked_add(add)
            .ok_or_else(|| bad("aggregate too long"))?;
        pos = next;
    }
    Ok(Some(pos))
}

/// A view of one complete reply frame (attributes before it skipped): typed accessors for the
/// readers of cacheside's own commands (loader, coherence, handshakes). Every accessor answers
/// `None` for a frame of another type; none panics on any input.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    buf: &'a [u8],
    proto: Proto,
}

impl<'a> Value<'a> {
    /// The first frame of `buf` and the bytes it spans; `None` if it is incomplete or invalid.
    pub fn parse(buf: &'a [u8], proto: Proto) -> Option<(Value<'a>, usize)> {
        let f = frame(buf, proto).ok()??;
        let mut v = Value {
            buf: &buf[..f.len],
            proto,
        };
        // Skip attributes: `|n` then 2n frames, then the value.
        while v.buf.first() == Some(&b'|') {
            let items = v.items()?;
            let after = items.end_of_all()?;
            v.buf = v.buf.get(after..)?;
        }
        Some((v, f.len))
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    fn type_byte(&self) -> u8 {
        self.buf.first().copied().unwrap_or(0)
    }

    /// The text after the type byte up to the first CRLF.
    fn head(&self) -> &'a [u8] {
        let end = memchr::memchr(b'\r', self.buf).unwrap_or(self.buf.len());
        self.buf.get(1..end).unwrap_or_default()
    }

    /// Whether this is a null: `$-1`, `*-1` or RESP3 `_`.
    pub fn is_null(&self) -> bool {
        (matches!(self.type_byte(), b'$' | b'*') && self.head() == b"-1")
            || self.type_byte() == b'_'
    }

    /// Whether this is an error reply; its text.
    pub fn error(&self) -> Option<&'a [u8]> {
        match self.type_byte() {
            b'-' => Some(self.head()),
            b'!' => self.blob(),
            _ => None,
        }
    }

    /// An integer reply's value.
    pub fn integer(&self) -> Option<i64> {
        match self.type_byte() {
            b':' => int(self.head()),
            _ => None,
        }
    }

    /// A simple status such as `OK`.
    pub fn status(&self) -> Option<&'a [u8]> {
        (self.type_byte() == b'+').then(|| self.head())
    }

    fn blob(&self) -> Option<&'a [u8]> {
        let len = usize::try_from(int(self.head())?).ok()?;
        let start = self.head().len() + 3;
        self.buf.get(start..start.checked_add(len)?)
    }

    /// A string's bytes: bulk, simple or verbatim (with its `txt:` prefix, as Redis sends it).
    pub fn string(&self) -> Option<&'a [u8]> {
        match self.type_byte() {
            b'+' => Some(self.head()),
            b'$' | b'=' if !self.is_null() => self.blob(),
            _ => None,
        }
    }

    /// The elements of an array, set or push (for a map: keys and values alternating).
    pub fn items(&self) -> Option<Items<'a>> {
        let n = int(self.head())?;
        let per = match self.type_byte() {
            b'*' | b'~' | b'>' => 1,
            b'%' | b'|' => 2,
            _ => return None,
        };
        let n = usize::try_from(n).ok()?.checked_mul(per)?;
        Some(Items {
            buf: self.buf,
            pos: self.head().len() + 3,
            left: n,
            proto: self.proto,
        })
    }
}

/// The strings of an array reply (SRANDMEMBER, HGETALL) in RESP2, sharing its buffer; empty
/// for anything else.
pub fn strings(reply: &bytes::Bytes) -> Vec<bytes::Bytes> {
    let Some((v, _)) = Value::parse(reply, Proto::Resp2) else {
        return Vec::new();
    };
    let Some(items) = v.items() else {
        return Vec::new();
    };
    items
        .filter_map(|i| i.string().map(|s| reply.slice_ref(s)))
        .collect()
}

/// The value of an integer reply in RESP2 (`None` for a reply of any other type).
pub fn integer(reply: &[u8]) -> Option<i64> {
    Value::parse(reply, Proto::Resp2)?.0.integer()
}

/// An array reply without its last element (cacheside's own command queued at the end of a
/// transaction); `None` if `frame` is not a non-empty array.
pub fn without_last(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.first() != Some(&b'*') {
        return None;
    }
    let (v, _) = Value::parse(frame, Proto::Resp3)?;
    let mut items = v.items()?;
    let n = items.len();
    let mut last = None;
    while let Some(r) = items.next_range() {
        last = Some(r.start);
    }
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    let cut = last?;
    let mut out = format!("*{}\r\n", n - 1).into_bytes();
    out.extend_from_slice(frame.get(header_end..cut)?);
    Some(out)
}

/// The elements of an aggregate, each read with [`Value`].
#[derive(Debug, Clone)]
pub struct Items<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
    proto: Proto,
}

impl<'a> Items<'a> {
    /// How many elements are left.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Where the aggregate ends (after its last element), relative to its frame.
    fn end_of_all(mut self) -> Option<usize> {
        while self.left > 0 {
            self.next_range()?;
        }
        Some(self.pos)
    }

    /// The byte range of the next element within the aggregate's frame.
    pub fn next_range(&mut self) -> Option<std::ops::Range<usize>> {
        if self.left == 0 {
            return None;
        }
        let f = frame(self.buf.get(self.pos..)?, self.proto).ok()??;
        let r = self.pos..self.pos + f.len;
        self.pos = r.end;
        self.left -= 1;
        Some(r)
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        let r = self.next_range()?;
        Value::parse(&self.buf[r], self.proto).map(|(v, _)| v)
    }
}

#[cfg(test)]
mod tests;
