//! Opening one upstream connection: TCP connect with a timeout, TLS for `rediss://`, then the
//! handshake (HELLO/AUTH, SELECT, CLIENT SETNAME) pipelined in one write. The password is read
//! from `upstream.password_file` on every connect, so a rotated Secret is used on reconnect.

use super::iam::{self, Token};
use super::Settings;
use crate::error::UpstreamError;
use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use crate::transport::Stream;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a new connection must be set up with (the db is the URL's).
pub struct Handshake<'a> {
    pub settings: &'a Settings,
    pub proto: Proto,
    pub client_name: Option<&'a [u8]>,
    /// A cluster replica's connection for reads: `READONLY` ends the handshake.
    pub readonly: bool,
}

/// Connects and runs the handshake, all within `timeout`.
pub async fn open(
    hs: &Handshake<'_>,
    addr: &Arc<str>,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    open_with_id(hs, addr, timeout, false).await.map(|(s, _)| s)
}

/// Like `open`; with `ask_id`, the handshake ends with `CLIENT ID`, and its answer (the
/// connection's id upstream) is returned too.
pub async fn open_with_id(
    hs: &Handshake<'_>,
    addr: &Arc<str>,
    timeout: Duration,
    ask_id: bool,
) -> Result<(Stream, Option<i64>), UpstreamError> {
    // Minted before the connect timeout starts: a first fetch of AWS credentials (STS, the Pod
    // Identity agent) has timeouts of its own.
    let token = iam::handshake_token(hs.settings.iam.as_ref(), addr).await?;
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
) -> Result<(Stream, Option<i64>), UpstreamError> {
    let settings = hs.settings;
    let io_err = |e: std::io::Error| io_failure(settings, addr, e);
    let tcp = TcpStream::connect(addr.as_ref()).await.map_err(io_err)?;
    tcp.set_nodelay(true).ok();
    let mut stream = match &settings.tls {
        None => Stream::Tcp(tcp),
        // Any failure here is the TLS handshake's, even one without a TLS alert (the server
        // closed the connection mid-handshake: a plaintext port, a TLS version it refuses).
        Some(tls) => tls.connect(tcp).await.map_err(|e| UpstreamError::Tls {
            addr: addr.clone(),
            detail: tls
                .describe(&e)
                .unwrap_or_else(|| format!("handshake failed: {e}"))
                .into(),
        })?,
    };
    let password = settings
        .password()
        .map_err(|detail| UpstreamError::Unavailable {
            addr: addr.clone(),
            detail: detail.into(),
        })?;
    // With credentials, the first command is the AUTH (or HELLO ... AUTH).
    let sends_auth = token.is_some() || password.is_some();
    let mut commands = handshake_commands(hs, password.as_deref(), token);
    if ask_id {
        commands.push(encode_command(&["CLIENT", "ID"]));
    }
    if commands.is_empty() && stream.is_tls() {
        // Under TLS 1.3 a server that refuses the client's certificate says so after the
        // handshake: one round trip here makes that a failure to connect, with its cause.
        commands.push(encode_command(&["PING"]));
    }
    if commands.is_empty() {
        return Ok((stream, None));
    }
    let mut out = BytesMut::new();
    for c in &commands {
        out.extend_from_slice(c);
    }
    stream.write_all(&out).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
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
                return Err(refusal(addr, text, sends_auth && answered == 0));
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

/// A handshake command's error reply: an authentication failure when the upstream says so
/// (WRONGPASS, NOAUTH, NOPERM: also answered to a SELECT or CLIENT SETNAME that the ACL user may
/// not run) or when it refused the command carrying the credentials (`-ERR invalid password`
/// from Redis 5); any other refusal (HELLO unknown, SELECT out of range) is a handshake failure.
fn refusal(addr: &Arc<str>, text: &[u8], to_credentials: bool) -> UpstreamError {
    let detail: Arc<str> = String::from_utf8_lossy(text).into_owned().into();
    let code = text.split(|b| *b == b' ').next().unwrap_or_default();
    let auth_code = matches!(code, b"WRONGPASS" | b"NOAUTH" | b"NOPERM");
    // HELLO 3 AUTH refused by a server without HELLO is not about the credentials.
    let unknown = text.starts_with(b"ERR unknown command");
    if auth_code || (to_credentials && !unknown) {
        UpstreamError::Auth {
            addr: addr.clone(),
            detail,
        }
    } else {
        UpstreamError::Handshake {
            addr: addr.clone(),
            detail,
        }
    }
}

/// An I/O failure while connecting: a TLS one says what went wrong with the certificate or the
/// handshake (unknown CA, hostname mismatch, client certificate required, ...).
pub(crate) fn io_failure(settings: &Settings, addr: &Arc<str>, e: std::io::Error) -> UpstreamError {
    match settings.tls.as_ref().and_then(|t| t.describe(&e)) {
        Some(cause) => UpstreamError::Tls {
            addr: addr.clone(),
            detail: cause.into(),
        },
        None => UpstreamError::Unavailable {
            addr: addr.clone(),
            detail: e.to_string().into(),
        },
    }
}

/// The handshake: HELLO/AUTH with an IAM token if there is one, else the configured password.
fn handshake_commands(
    hs: &Handshake<'_>,
    password: Option<&str>,
    token: Option<&Token>,
) -> Vec<Bytes> {
    let mut cmds = Vec::new();
    let url = &hs.settings.url;
    let (username, password) = match token {
        Some(t) => (Some(t.user()), Some(t.secret())),
        None => (url.username.as_deref(), password),
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
    if url.db != 0 {
        cmds.push(encode_command(&["SELECT", &url.db.to_string()]));
    }
    if let Some(name) = hs.client_name {
        cmds.push(encode_command(&[&b"CLIENT"[..], b"SETNAME", name]));
    }
    if hs.readonly {
        cmds.push(encode_command(&["READONLY"]));
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_credentials_are_auth_failures_and_the_rest_handshake_ones() {
        let addr: Arc<str> = "h:1".into();
        let kind = |text: &str, to_credentials| {
            refusal(&addr, text.as_bytes(), to_credentials)
                .failure()
                .as_str()
        };
        assert_eq!(
            kind("WRONGPASS invalid username-password pair", true),
            "auth"
        );
        assert_eq!(kind("NOAUTH Authentication required.", false), "auth");
        assert_eq!(
            kind("NOPERM this user has no permissions to run 'select'", false),
            "auth"
        );
        assert_eq!(kind("ERR invalid password", true), "auth");
        assert_eq!(kind("ERR unknown command 'HELLO'", true), "handshake");
        assert_eq!(kind("ERR DB index is out of range", false), "handshake");
    }
}
