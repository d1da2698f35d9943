//! The TCP socket under a TLS session. It notes where TLS records begin and end in the bytes
//! read from it, so a reader can tell whether the session holds part of a record that is still
//! arriving (see `Stream::holds_unread`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that tracks TLS record framing on its read side.
#[derive(Debug)]
pub struct Socket {
    tcp: TcpStream,
    records: Records,
}

impl Socket {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            records: Records::default(),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the bytes read so far end inside a TLS record (its header or its body).
    pub fn mid_record(&self) -> bool {
        self.records.mid_record()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        self.records.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Non-blocking reads for rustls's `read_tls`: `WouldBlock` when the kernel has nothing (which
/// also clears tokio's readiness, so `TcpStream::readable` waits for the next bytes).
impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.try_read(buf)?;
        self.records.feed(&buf[..n]);
        Ok(n)
    }
}

/// Non-blocking writes for rustls's `write_tls`.
impl io::Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// TLS record framing (TLS 1.2 and 1.3 alike): a 5-byte header whose last two bytes give the
/// length of the body that follows.
#[derive(Debug, Default)]
struct Records {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl Records {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
    }

    fn mid_record(&self) -> bool {
        self.header_len > 0 || self.body_left > 0
    }
}

#[cfg(test)]
mod tests {
    use super::Records;

    fn record(len: u16) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.extend(std::iter::repeat_n(0xAB, usize::from(len)));
        r
    }

    #[test]
    fn record_boundaries_are_found_however_the_bytes_are_split() {
        let stream: Vec<u8> = [record(10), record(0), record(300), record(1)].concat();
        let ends = [15, 20, 325, 331];
        for chunk in 1..=stream.len() {
            let mut r = Records::default();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                r.feed(piece);
                at += piece.len();
                assert_eq!(
                    r.mid_record(),
                    !ends.contains(&at),
                    "chunk size {chunk}, after {at} bytes"
                );
            }
        }
    }
}
