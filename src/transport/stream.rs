//! One connection, plain TCP or TLS, and its read and write halves.
//!
//! Writes through TLS may stay buffered inside the session when the socket is full: every writer
//! flushes after `write_all` (a no-op on plain TCP).

use super::socket::Socket;
use bytes::BytesMut;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A connection to the upstream (TLS client side) or from a client (TLS server side).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    TlsClient(Box<client::TlsStream<Socket>>),
    TlsServer(Box<server::TlsStream<Socket>>),
}

/// The read half of a [`Stream`]. Plain TCP splits without a lock; TLS shares the session.
#[derive(Debug)]
pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The write half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::TlsClient(s) => s.get_ref().0.tcp(),
            Stream::TlsServer(s) => s.get_ref().0.tcp(),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// Waits until [`try_read_buf`](Self::try_read_buf) may find something: bytes in the
    /// socket, or plaintext the TLS session decrypted already.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.plaintext_buffered() {
            return Ok(());
        }
        self.tcp().readable().await
    }

    /// Reads what is there without waiting: `WouldBlock` when nothing could be read, `Ok(0)` at
    /// the end of the stream. Over TLS it takes every record the socket holds and returns all
    /// the plaintext the session has, so none is left decrypted and unseen; a record whose tail
    /// has not arrived yet stays in the session ([`holds_unread`](Self::holds_unread)).
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::TlsClient(s) => {
                let (sock, conn) = s.get_mut();
                try_read_tls(sock, conn, buf)
            }
            Stream::TlsServer(s) => {
                let (sock, conn) = s.get_mut();
                try_read_tls(sock, conn, buf)
            }
        }
    }

    /// Whether bytes that came off the socket are held inside the TLS session and not yet
    /// returned by a read: decrypted plaintext, or the beginning of a record still arriving.
    /// Always false on plain TCP, where everything unread is still in the kernel.
    pub fn holds_unread(&mut self) -> bool {
        let mid_record = match self {
            Stream::Tcp(_) => return false,
            Stream::TlsClient(s) => s.get_ref().0.mid_record(),
            Stream::TlsServer(s) => s.get_ref().0.mid_record(),
        };
        mid_record || self.plaintext_buffered()
    }

    /// Decrypted bytes waiting in the TLS session. A session in error answers true: the next
    /// read reports the error.
    fn plaintext_buffered(&mut self) -> bool {
        let state = match self {
            Stream::Tcp(_) => return false,
            Stream::TlsClient(s) => s.get_mut().1.process_new_packets(),
            Stream::TlsServer(s) => s.get_mut().1.process_new_packets(),
        };
        !matches!(state, Ok(s) if s.plaintext_bytes_to_read() == 0)
    }
}

/// The body of [`Stream::try_read_buf`] over a TLS session.
fn try_read_tls<D>(
    sock: &mut Socket,
    conn: &mut rustls::ConnectionCommon<D>,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    loop {
        let mut got = 0;
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Return what was read; the error comes again on the next read.
                Err(_) if got > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if got > 0 {
            return Ok(got);
        }
        match conn.read_tls(sock) {
            Ok(0) => return Ok(0),
            Ok(_) => {
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // An answer the session owes (a key update, an alert) goes out if it can;
                // these connections have no writer to carry it later.
                while conn.wants_write() {
                    match conn.write_tls(sock) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
