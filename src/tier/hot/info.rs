//! Appending cacheside's section to the upstream's INFO reply, in either protocol.

use bytes::{BufMut, Bytes, BytesMut};

/// Returns `reply` (a bulk string, or a RESP3 verbatim string) with `section` appended to its
/// text; any other reply (an error) is returned as it is.
pub fn append_section(reply: &Bytes, section: &str) -> Bytes {
    let kind = match reply.first() {
        Some(&k @ (b'$' | b'=')) => k,
        _ => return reply.clone(),
    };
    let Some(nl) = memchr::memchr(b'\n', reply) else {
        return reply.clone();
    };
    let Some(len) = std::str::from_utf8(&reply[1..nl.saturating_sub(1)])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return reply.clone();
    };
    let body = &reply[nl + 1..];
    if body.len() < len + 2 {
        return reply.clone();
    }
    let text = &body[..len];
    let sep: &[u8] = if text.is_empty() || text.ends_with(b"\r\n") {
        b"\r\n"
    } else {
        b"\r\n\r\n"
    };
    let new_len = len + sep.len() + section.len();
    let mut out = BytesMut::with_capacity(new_len + 24);
    out.put_u8(kind);
    out.put_slice(new_len.to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(text);
    out.put_slice(sep);
    out.put_slice(section.as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_to_bulk_and_verbatim_strings() {
        let got = append_section(
            &Bytes::from_static(b"$10\r\n# Server\r\n\r\n"),
            "# c\r\nx:1\r\n",
        );
        assert_eq!(&got[..], b"$22\r\n# Server\r\n\r\n# c\r\nx:1\r\n\r\n");
        let got = append_section(&Bytes::from_static(b"=7\r\ntxt:a:1\r\n"), "# c\r\n");
        assert_eq!(&got[..], b"=16\r\ntxt:a:1\r\n\r\n# c\r\n\r\n");
        let err = Bytes::from_static(b"-ERR x\r\n");
        assert_eq!(append_section(&err, "# c"), err);
    }
}
