//! What the hot tier's coherence relies on over TLS: bytes that left the kernel socket but were
//! not returned by a read yet (the first part of a record, or decrypted plaintext kept in the
//! session) count as unread, and a non-blocking read returns all the plaintext there is. The
//! server side is driven by hand (rustls over a blocking socket) to cut a record in two.

mod support;

use bytes::BytesMut;
use cacheside::transport::{Stream, UpstreamTls, UpstreamTlsOptions};
use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::certs::Certs;
use tokio::io::AsyncReadExt;

/// Two records' worth (a record carries at most 16 KiB).
const MESSAGE: usize = 30_000;
/// One record's worth.
const SMALL: usize = 10_000;

enum Step {
    /// Encrypt a message and send only its first `n` bytes on the wire.
    Partial(usize),
    /// Send the rest of it.
    Rest,
    /// Encrypt and send a whole message of `SMALL` bytes.
    Whole,
}

fn server_config(certs: &Certs) -> rustls::ServerConfig {
    let (cert, key) = certs.issue("server", "IP:127.0.0.1", "serverAuth");
    let chain = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap()
}

/// A TLS server on a thread, writing what `steps` asks for; each step is acknowledged on `done`.
fn serve(
    config: rustls::ServerConfig,
    listener: std::net::TcpListener,
    steps: mpsc::Receiver<Step>,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        let mut wire = Vec::new();
        for step in steps {
            let mut encrypt = |wire: &mut Vec<u8>, len: usize| {
                conn.writer().write_all(&vec![b'a'; len]).unwrap();
                while conn.wants_write() {
                    conn.write_tls(wire).unwrap();
                }
            };
            match step {
                Step::Partial(n) => {
                    encrypt(&mut wire, MESSAGE);
                    sock.write_all(&wire[..n]).unwrap();
                    wire.drain(..n);
                }
                Step::Rest => sock.write_all(&std::mem::take(&mut wire)).unwrap(),
                Step::Whole => {
                    encrypt(&mut wire, SMALL);
                    sock.write_all(&std::mem::take(&mut wire)).unwrap();
                }
            }
            done.send(()).unwrap();
        }
    });
}

/// Reads without waiting until the socket has nothing more (bounded in time).
fn read_available(stream: &mut Stream, buf: &mut BytesMut) {
    let start = Instant::now();
    loop {
        match stream.try_read_buf(buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("read: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

/// Waits for the socket and reads until `buf` holds `len` bytes.
async fn read_until(stream: &mut Stream, buf: &mut BytesMut, len: usize) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while buf.len() < len {
            stream.readable().await.unwrap();
            read_available(stream, buf);
        }
    })
    .await
    .expect("the message arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_held_inside_the_tls_session_count_as_unread() {
    let certs = Certs::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (steps, steps_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    serve(server_config(&certs), listener, steps_rx, done_tx);
    let ca = certs.ca();
    let tls = UpstreamTls::new(
        "127.0.0.1",
        UpstreamTlsOptions {
            ca_file: Some(&ca),
            ..Default::default()
        },
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tls.connect(tcp).await.unwrap();
    let mut buf = BytesMut::new();

    // Half of the first record arrives: taken off the socket, nothing to return, held.
    steps.send(Step::Partial(5 + 1000)).unwrap();
    done.recv().unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !stream.holds_unread() {
            stream.readable().await.unwrap();
            read_available(&mut stream, &mut buf);
        }
    })
    .await
    .expect("the partial record is taken into the session");
    assert!(buf.is_empty(), "no plaintext from half a record");
    assert!(stream.holds_unread(), "half a record is unread data");

    // The rest arrives: every byte of the message is returned, nothing is left inside.
    steps.send(Step::Rest).unwrap();
    done.recv().unwrap();
    read_until(&mut stream, &mut buf, MESSAGE).await;
    assert_eq!(buf.len(), MESSAGE);
    assert!(!stream.holds_unread(), "all of it was returned");

    // An ordinary read with a small buffer leaves the rest of a whole record's plaintext in
    // the session...
    buf.clear();
    steps.send(Step::Whole).unwrap();
    done.recv().unwrap();
    let mut small = [0u8; 100];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut small))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0 && n <= 100);
    assert!(
        stream.holds_unread(),
        "plaintext kept in the session is unread"
    );
    // ...which the next non-blocking read returns, all of it.
    read_until(&mut stream, &mut buf, SMALL - n).await;
    assert_eq!(buf.len(), SMALL - n);
    assert!(!stream.holds_unread());
    drop(steps);
}
