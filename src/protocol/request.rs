//! Client request parsing: RESP multibulk and inline commands, with Redis's limits and error texts.
//!
//! Requests are parsed here instead of by redis-protocol's generic decoder because the request
//! grammar is narrower than the reply grammar (an array of bulk strings, or one inline line), the
//! limits must be enforced on *declared* lengths before the bytes arrive (a `$600000000` header is
//! rejected at once, as Redis does, instead of buffering), nested input must never recurse, and
//! Redis's exact error texts are part of being transparent. Parsing never allocates for multibulk
//! requests: arguments are byte ranges into the frozen read buffer.

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use std::ops::Range;

/// Limits on one client request, Redis's defaults unless configured.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk argument (Redis `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_multibulk_len: usize,
    /// Longest inline command line or length header (Redis `PROTO_INLINE_MAX_SIZE`, 64 KiB).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A malformed request. The text is what Redis itself replies (after `-ERR `); the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Where a parsed request lives and where its arguments are.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Bytes of the read buffer this request consumed.
    pub span: Range<usize>,
    /// For inline commands: the same request re-encoded as RESP (what is forwarded upstream);
    /// argument ranges then index into this instead of the read buffer.
    pub encoded: Option<Bytes>,
    /// Argument ranges, relative to the start of the span (or of `encoded`).
    pub args: SmallVec<[(u32, u32); 4]>,
}

/// Outcome of trying to parse one request at the front of a buffer.
#[derive(Debug)]
pub enum Step {
    /// One complete request.
    Request(Parsed),
    /// Bytes consumed that hold no command (an empty inline line or `*0`), as Redis ignores them.
    Skip(usize),
    /// Not enough bytes yet; `need` is a lower bound on the bytes the request occupies.
    Incomplete { need: usize },
}

/// Parses the request at the front of `buf` (offset `base` in the caller's buffer, used only to
/// report spans).
pub fn parse(buf: &[u8], base: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    match buf.first() {
        None => Ok(Step::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, base, limits),
        Some(_) => parse_inline(buf, base, limits),
    }
}

/// Reads a `\r\n`-terminated line starting at `at`; returns (line without CRLF, index after it).
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let nl = memchr::memchr(b'\n', &buf[at..])? + at;
    let end = if nl > at && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((&buf[at..end], nl + 1))
}

/// Parses a decimal length the way Redis's `string2ll` does for protocol headers (no `+`, no spaces).
fn parse_len(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

fn parse_multibulk(buf: &[u8], base: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    let Some((header, mut pos)) = line(buf, 1) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big mbulk count string"));
        }
        return Ok(Step::Incomplete {
            need: buf.len() + 1,
        });
    };
    if pos - 1 > limits.max_inline_len {
        return Err(ProtocolError::new("too big mbulk count string"));
    }
    let count = match parse_len(header) {
        Some(n) if n <= limits.max_multibulk_len as i64 => n,
        _ => return Err(ProtocolError::new("invalid multibulk length")),
    };
    if count <= 0 {
        return Ok(Step::Skip(pos));
    }
    let mut args = SmallVec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(Step::Incomplete { need: pos + 1 }),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(other)
                )))
            }
        }
        let Some((header, data_start)) = line(buf, pos + 1) else {
            if buf.len() - pos > limits.max_inline_len {
                return Err(ProtocolError::new("too big bulk count string"));
            }
            return Ok(Step::Incomplete {
                need: buf.len() + 1,
            });
        };
        let len = match parse_len(header) {
            Some(n) if n >= 0 && n as usize <= limits.max_bulk_len => n as usize,
            _ => return Err(ProtocolError::new("invalid bulk length")),
        };
        let end = data_start + len;
        // Like Redis, the two bytes after the data are skipped, not checked: framing must
        // match the upstream's byte for byte.
        if buf.len() < end + 2 {
            return Ok(Step::Incomplete { need: end + 2 });
        }
        args.push((data_start as u32, end as u32));
        pos = end + 2;
    }
    Ok(Step::Request(Parsed {
        span: base..base + pos,
        encoded: None,
        args,
    }))
}

fn parse_inline(buf: &[u8], base: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(Step::Incomplete {
            need: buf.len() + 1,
        });
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::new("too big inline request"));
    }
    let consumed = nl + 1;
    let text = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let words = split_args(text)?;
    if words.is_empty() {
        return Ok(Step::Skip(consumed));
    }
    let mut out = BytesMut::with_capacity(text.len() + 16 * words.len());
    encode_array_header(&mut out, words.len());
    let mut args = SmallVec::with_capacity(words.len());
    for w in &words {
        out.put_u8(b'$');
        put_decimal(&mut out, w.len());
        out.put_slice(b"\r\n");
        let start = out.len();
        out.put_slice(w);
        args.push((start as u32, out.len() as u32));
        out.put_slice(b"\r\n");
    }
    Ok(Step::Request(Parsed {
        span: base..base + consumed,
        encoded: Some(out.freeze()),
        args,
    }))
}

/// Writes `*<n>\r\n`.
pub fn encode_array_header(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

/// Writes a bulk string `$<len>\r\n<data>\r\n`.
pub fn encode_bulk(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'$');
    put_decimal(out, data.len());
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Encodes a command (a list of arguments) as a RESP request.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    encode_array_header(&mut out, args.len());
    for a in args {
        encode_bulk(&mut out, a.as_ref());
    }
    out.freeze()
}

pub(crate) fn put_decimal(out: &mut BytesMut, n: usize) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

fn hex(d: u8) -> Option<u8> {
    (d as char).to_digit(16).map(|v| v as u8)
}

/// Splits an inline command line into words with the quoting rules of Redis's `sdssplitargs`:
/// double quotes take `\n \r \t \b \a \\ \" \xHH` escapes, single quotes take `\'`, and a closing
/// quote must be followed by a space or the end of the line.
fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut word = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                let Some(&c) = line.get(i) else {
                    return Err(unbalanced());
                };
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        word.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    word.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    in_dq = false;
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else if in_sq {
                let Some(&c) = line.get(i) else {
                    return Err(unbalanced());
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    word.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    in_sq = false;
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => word.push(c),
                }
                i += 1;
            }
        }
        debug_assert!(!in_dq && !in_sq);
        words.push(word);
    }
    Ok(words)
}

/// One client request: its RESP bytes (forwarded upstream as they are) and its argument ranges.
#[derive(Debug, Clone)]
pub struct Request {
    frame: Bytes,
    args: SmallVec<[(u32, u32); 4]>,
}

impl Request {
    /// Builds the request for a parsed span of a frozen read buffer (`chunk`).
    pub fn from_parsed(chunk: &Bytes, p: Parsed) -> Self {
        match p.encoded {
            Some(frame) => Self {
                frame,
                args: p.args,
            },
            None => Self {
                frame: chunk.slice(p.span.clone()),
                args: p.args,
            },
        }
    }

    /// Builds a request from arguments (used for commands cacheside sends itself).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Self {
        let frame = encode_command(args);
        let mut out = SmallVec::new();
        let mut pos = 0;
        let b = &frame[..];
        // Re-derive ranges by parsing what was just encoded: one code path for argument offsets.
        if let Ok(Step::Request(p)) = parse(b, 0, &Limits::default()) {
            out = p.args;
            pos = p.span.end;
        }
        debug_assert_eq!(pos, frame.len());
        Self { frame, args: out }
    }

    /// The request's RESP encoding.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name); empty when out of range.
    pub fn arg(&self, i: usize) -> &[u8] {
        match self.args.get(i) {
            Some(&(s, e)) => &self.frame[s as usize..e as usize],
            None => &[],
        }
    }

    /// Argument `i` as a zero-copy `Bytes`.
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        match self.args.get(i) {
            Some(&(s, e)) => self.frame.slice(s as usize..e as usize),
            None => Bytes::new(),
        }
    }

    /// All arguments, the command name first.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.args.len()).map(move |i| self.arg(i))
    }

    /// Whether argument `i` equals `word`, ignoring ASCII case.
    pub fn arg_is(&self, i: usize, word: &str) -> bool {
        self.arg(i).eq_ignore_ascii_case(word.as_bytes())
    }
}
