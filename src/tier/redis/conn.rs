//! Opening one upstream connection: TCP connect with a timeout, then the handshake
//! (HELLO/AUTH, SELECT, CLIENT SETNAME) pipelined in one write.

use super::iam::{self, IamAuth, Token};
use crate::config::UpstreamUrl;
use crate::error::UpstreamError;
use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a new connection must be set up with.
pub struct Handshake<'a> {
    pub url: &'a UpstreamUrl,
    pub proto: Proto,
    pub db: u32,
    pub client_name: Option<&'a [u8]>,
    /// ElastiCache IAM: a fresh token is the password (the URL then has none).
    pub iam: Option<&'a IamAuth>,
}

/// Connects and runs the handshake, all within `timeout`.
pub async fn open(
    hs: &Handshake<'_>,
    addr: &Arc<str>,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    open_with_id(hs, addr, timeout, false).await.map(|(s, _)| s)
}

/// Like `open`; with `ask_id`, the handshake ends with `CLIENT ID`, and its answer (the
/// connection's id upstream) is returned too.
pub async fn open_with_id(
    hs: &Handshake<'_>,
    addr: &Arc<str>,
    timeout: Duration,
    ask_id: bool,
) -> Result<(TcpStream, Option<i64>), UpstreamError> {
    // Minted before the connect timeout starts: a first fetch of AWS credentials (STS, the Pod
    // Identity agent) has timeouts of its own.
    let token = iam::handshake_token(hs.iam, addr).await?;
    match tokio::time::timeout(timeout, open_inner(hs, addr, ask_id, token.as_ref())).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Unavailable {
            addr: addr.clone(),
            detail: format!("connect and handshake took longer than {timeout:?}").into(),
        }),
    }
}

async fn open_inner(
    hs: &Handshake<'_>,
    addr: &Arc<str>,
    ask_id: bool,
    token: Option<&Token>,
) -> Result<(TcpStream, Option<i64>), UpstreamError> {
    let mut stream =
        TcpStream::connect(addr.as_ref())
            .await
            .map_err(|e| UpstreamError::Unavailable {
                addr: addr.clone(),
                detail: e.to_string().into(),
            })?;
    stream.set_nodelay(true).ok();
    let mut commands = handshake_commands(hs, token);
    if ask_id {
        commands.push(encode_command(&["CLIENT", "ID"]));
    }
    if commands.is_empty() {
        return Ok((stream, None));
    }
    let mut out = BytesMut::new();
    for c in &commands {
        out.extend_from_slice(c);
    }
    let io_err = |e: std::io::Error| UpstreamError::Unavailable {
        addr: addr.clone(),
        detail: e.to_string().into(),
    };
    stream.write_all(&out).await.map_err(io_err)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut answered = 0;
    let mut last = None;
    while answered < commands.len() {
        if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
            return Err(UpstreamError::Closed { addr: addr.clone() });
        }
        while let Some(f) = reply::frame(&buf, hs.proto).map_err(|e| UpstreamError::Protocol {
            addr: addr.clone(),
            detail: e.to_string().into(),
        })? {
            if f.kind == ReplyKind::Error {
                let text = reply::error_text(&buf, &f).unwrap_or(b"error");
                return Err(UpstreamError::Handshake {
                    addr: addr.clone(),
                    detail: String::from_utf8_lossy(text).into_owned().into(),
                });
            }
            let frame = buf.split_to(f.len);
            if f.kind != ReplyKind::Push {
                answered += 1;
                last = Value::parse(&frame, hs.proto).and_then(|(v, _)| v.integer());
            }
        }
    }
    Ok((stream, last.filter(|_| ask_id)))
}

fn handshake_commands(hs: &Handshake<'_>, token: Option<&Token>) -> Vec<Bytes> {
    let mut cmds = Vec::new();
    let url = hs.url;
    let (username, password) = match token {
        Some(t) => (Some(t.user()), Some(t.secret())),
        None => (url.username.as_deref(), url.password.as_deref()),
    };
    let user = username.unwrap_or("default");
    match (hs.proto, password) {
        (Proto::Resp3, Some(p)) => cmds.push(encode_command(&["HELLO", "3", "AUTH", user, p])),
        (Proto::Resp3, None) => cmds.push(encode_command(&["HELLO", "3"])),
        (Proto::Resp2, Some(p)) => match username {
            Some(u) => cmds.push(encode_command(&["AUTH", u, p])),
            None => cmds.push(encode_command(&["AUTH", p])),
        },
        (Proto::Resp2, None) => {}
    }
    if hs.db != 0 {
        cmds.push(encode_command(&["SELECT", &hs.db.to_string()]));
    }
    if let Some(name) = hs.client_name {
        cmds.push(encode_command(&[&b"CLIENT"[..], b"SETNAME", name]));
    }
    cmds
}
