//! Connection-local commands that cacheside answers itself, because the connection state they
//! touch lives in the proxy, not on the shared upstream connections: PING, ECHO, AUTH, HELLO,
//! SELECT of the default db, CLIENT SETNAME/GETNAME/ID/SETINFO.

use super::{ClientState, Decision};
use crate::config::validate::ClientAuth;
use crate::error::ProxyError;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::{encode_command, Request};
use bytes::{Bytes, BytesMut};

fn wrong_args(name: &str) -> Decision {
    Decision::Fail(ProxyError::Command(format!(
        "ERR wrong number of arguments for '{name}' command"
    )))
}

fn bulk(data: &[u8]) -> Decision {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    reply::bulk(&mut out, data);
    Decision::Reply(out.freeze())
}

fn ok() -> Decision {
    Decision::Reply(Bytes::from_static(reply::OK))
}

pub(super) fn ping(st: &ClientState, req: &Request) -> Decision {
    let _ = st;
    match req.argc() {
        1 => Decision::Reply(Bytes::from_static(reply::PONG)),
        2 => bulk(req.arg(1)),
        _ => wrong_args("ping"),
    }
}

pub(super) fn echo(req: &Request) -> Decision {
    match req.argc() {
        2 => bulk(req.arg(1)),
        _ => wrong_args("echo"),
    }
}

/// Compares secrets without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_credentials(auth: Option<&ClientAuth>, user: Option<&[u8]>, pass: &[u8]) -> bool {
    match auth {
        // No password on the listener: the upstream credentials are cacheside's own, so an app
        // that still sends the AUTH it used against Redis keeps working.
        None => true,
        Some(a) => {
            user.is_none_or(|u| u == a.username.as_bytes())
                & same_secret(pass, a.password.as_bytes())
        }
    }
}

pub(super) fn auth(auth: Option<&ClientAuth>, st: &mut ClientState, req: &Request) -> Decision {
    let (user, pass) = match req.argc() {
        2 => (None, req.arg(1)),
        3 => (Some(req.arg(1)), req.arg(2)),
        _ => return Decision::Fail(ProxyError::Command("ERR syntax error".into())),
    };
    if check_credentials(auth, user, pass) {
        st.authenticated = true;
        ok()
    } else {
        Decision::Fail(ProxyError::WrongPass)
    }
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
pub(super) fn hello(
    auth: Option<&ClientAuth>,
    st: &mut ClientState,
    req: &Request,
    pinned: bool,
) -> Decision {
    let mut proto = st.proto;
    let mut i = 1;
    if req.argc() > 1 {
        proto = match req.arg(1) {
            b"2" => Proto::Resp2,
            b"3" => Proto::Resp3,
            v if std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some() =>
            {
                return Decision::Fail(ProxyError::Command(
                    "NOPROTO unsupported protocol version".into(),
                ))
            }
            _ => {
                return Decision::Fail(ProxyError::Command(
                    "ERR Protocol version is not an integer or out of range".into(),
                ))
            }
        };
        i = 2;
    }
    let mut creds = None;
    let mut name = None;
    while i < req.argc() {
        if req.arg_is(i, "AUTH") && i + 2 < req.argc() {
            creds = Some((req.arg(i + 1), req.arg(i + 2)));
            i += 3;
        } else if req.arg_is(i, "SETNAME") && i + 1 < req.argc() {
            name = Some(req.arg_bytes(i + 1));
            i += 2;
        } else {
            return Decision::Fail(ProxyError::Command(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(req.arg(i))
            )));
        }
    }
    if let Some((user, pass)) = creds {
        if !check_credentials(auth, Some(user), pass) {
            return Decision::Fail(ProxyError::WrongPass);
        }
        st.authenticated = true;
    }
    if !st.authenticated {
        return Decision::Fail(ProxyError::Command(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
        ));
    }
    if let Some(n) = &name {
        if !valid_client_name(n) {
            return Decision::Fail(ProxyError::Command(
                "ERR Client names cannot contain spaces, newlines or special characters.".into(),
            ));
        }
        st.name = Some(n.clone()).filter(|n| !n.is_empty());
    }
    st.proto = proto;
    if pinned {
        // The pinned connection must switch protocol too; its own HELLO reply goes to the client.
        let ver = if proto == Proto::Resp3 { "3" } else { "2" };
        let rewritten = match &name {
            Some(n) => encode_command(&[&b"HELLO"[..], ver.as_bytes(), b"SETNAME", n]),
            None => encode_command(&["HELLO", ver]),
        };
        return Decision::PinnedRewrite(rewritten);
    }
    Decision::Reply(hello_reply(st))
}

fn hello_reply(st: &ClientState) -> Bytes {
    let p = st.proto;
    let mut out = BytesMut::with_capacity(256);
    reply::map_header(&mut out, 7, p);
    reply::bulk(&mut out, b"server");
    reply::bulk(&mut out, b"redis");
    reply::bulk(&mut out, b"version");
    reply::bulk(&mut out, env!("CARGO_PKG_VERSION").as_bytes());
    reply::bulk(&mut out, b"proto");
    reply::integer(&mut out, p.number());
    reply::bulk(&mut out, b"id");
    reply::integer(&mut out, st.id as i64);
    reply::bulk(&mut out, b"mode");
    reply::bulk(&mut out, b"standalone");
    reply::bulk(&mut out, b"role");
    reply::bulk(&mut out, b"master");
    reply::bulk(&mut out, b"modules");
    out.extend_from_slice(b"*0\r\n");
    out.freeze()
}

/// SELECT of the shared connections' db is answered here; any other db needs a pinned
/// connection (`None`).
pub(super) fn select(st: &mut ClientState, req: &Request) -> Option<Decision> {
    if req.argc() != 2 {
        return Some(wrong_args("select"));
    }
    let Some(db) = std::str::from_utf8(req.arg(1))
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return Some(Decision::Fail(ProxyError::Command(
            "ERR value is not an integer or out of range".into(),
        )));
    };
    if db == i64::from(st.default_db) {
        st.db = st.default_db;
        return Some(ok());
    }
    None
}

/// UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE from a client that is not subscribed: one confirmation
/// per channel named (or one with a null channel), each with a count of 0, as Redis sends them.
pub(super) fn unsubscribe(st: &ClientState, name: &str, req: &Request) -> Decision {
    let head = name.to_ascii_lowercase();
    let mut out = BytesMut::new();
    let one = |out: &mut BytesMut, channel: Option<&[u8]>| {
        reply::subscription(out, st.proto, head.as_bytes(), channel, 0);
    };
    if req.argc() == 1 {
        one(&mut out, None);
    }
    for i in 1..req.argc() {
        one(&mut out, Some(req.arg(i)));
    }
    Decision::Reply(out.freeze())
}

/// CLIENT subcommands about the client's own identity; `None` for the rest.
pub(super) fn client(st: &mut ClientState, req: &Request) -> Option<Decision> {
    let sub = req.arg(1);
    if sub.eq_ignore_ascii_case(b"SETNAME") {
        if req.argc() != 3 {
            return Some(wrong_args("client|setname"));
        }
        let name = req.arg_bytes(2);
        if !valid_client_name(&name) {
            return Some(Decision::Fail(ProxyError::Command(
                "ERR Client names cannot contain spaces, newlines or special characters.".into(),
            )));
        }
        st.name = Some(name).filter(|n| !n.is_empty());
        Some(ok())
    } else if sub.eq_ignore_ascii_case(b"GETNAME") {
        Some(match &st.name {
            Some(n) => bulk(n),
            None => {
                let mut out = BytesMut::new();
                reply::null(&mut out, st.proto);
                Decision::Reply(out.freeze())
            }
        })
    } else if sub.eq_ignore_ascii_case(b"ID") {
        let mut out = BytesMut::new();
        reply::integer(&mut out, st.id as i64);
        Some(Decision::Reply(out.freeze()))
    } else if sub.eq_ignore_ascii_case(b"SETINFO") {
        // Library name/version are per connection; shared upstream connections cannot carry them.
        Some(if req.argc() == 4 {
            ok()
        } else {
            wrong_args("client|setinfo")
        })
    } else {
        None
    }
}
