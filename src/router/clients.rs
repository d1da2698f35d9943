//! cacheside's own clients, as `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL` see them:
//! cacheside is the server its clients talk to, so these answer about (and act on) its clients,
//! never on the upstream connections they share.

use super::{ClientState, Decision};
use crate::error::ProxyError;
use crate::protocol::reply;
use crate::protocol::Request;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// What a client looks like now, as its session last reported it (once per read).
#[derive(Debug, Clone)]
pub struct Shown {
    pub name: Option<Bytes>,
    pub db: u32,
    pub multi: bool,
    pub pubsub: bool,
    pub resp: i64,
    /// The last command's name, as the command table spells it ("" if unknown).
    pub cmd: &'static str,
    pub last: Instant,
}

/// One connected client.
#[derive(Debug)]
pub struct Client {
    pub id: u64,
    addr: SocketAddr,
    laddr: SocketAddr,
    fd: i32,
    created: Instant,
    shown: Mutex<Shown>,
    killed: Notify,
    /// Set by CLIENT KILL, for waits that begin after it.
    is_killed: std::sync::atomic::AtomicBool,
    /// The id upstream of the client's pinned connection (0: none), for CLIENT TRACKING's
    /// REDIRECT, which names a client by the id cacheside gave it.
    upstream_id: std::sync::atomic::AtomicI64,
}

impl Client {
    /// The client's pinned connection is now the upstream's client `id`.
    pub fn set_upstream_id(&self, id: Option<i64>) {
        self.upstream_id
            .store(id.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Records what the session now knows of the client.
    pub fn show(&self, f: impl FnOnce(&mut Shown)) {
        f(&mut self.shown.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Resolves once `CLIENT KILL` picked this client: every wait on it, however many the
    /// session holds (its read loop's, a wait for a blocking command's outcome), begun before
    /// the kill or after.
    pub async fn killed(&self) {
        let notified = self.killed.notified();
        if self.is_killed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await
    }

    fn kill(&self) {
        self.is_killed
            .store(true, std::sync::atomic::Ordering::Release);
        self.killed.notify_waiters();
    }

    /// The client's CLIENT LIST line; `running` is the command it is running now, if it is the
    /// client asking (Redis shows `client|list` for it, not its previous command).
    fn line(&self, out: &mut String, now: Instant, running: Option<&str>) {
        let s = self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let flags = match (s.pubsub, s.multi) {
            (true, _) => "P",
            (false, true) => "x",
            _ => "N",
        };
        let cmd = match running {
            Some(r) => r.to_string(),
            None if s.cmd.is_empty() => "NULL".to_string(),
            None => s.cmd.to_ascii_lowercase(),
        };
        let _ = writeln!(
            out,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={flags} db={} sub=0 psub=0 \
             ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
             omem=0 tot-mem=0 events=r cmd={cmd} user=default redir=-1 resp={} lib-name= lib-ver=",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            String::from_utf8_lossy(s.name.as_deref().unwrap_or_default()),
            now.duration_since(self.created).as_secs(),
            now.duration_since(s.last).as_secs(),
            s.db,
            if s.multi { 0 } else { -1 },
            s.resp,
        );
    }

    fn is_pubsub(&self) -> bool {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).pubsub
    }
}

/// Every connected client, by id.
#[derive(Debug, Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Client>>>,
}

/// A client's place in the registry; leaving it (the session ends) removes the client.
pub struct Registration {
    registry: Arc<Registry>,
    pub client: Arc<Client>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.client.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        id: u64,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i32,
        db: u32,
    ) -> Registration {
        let now = Instant::now();
        let client = Arc::new(Client {
            id,
            addr,
            laddr,
            fd,
            created: now,
            shown: Mutex::new(Shown {
                name: None,
                db,
                multi: false,
                pubsub: false,
                resp: 2,
                cmd: "",
                last: now,
            }),
            killed: Notify::new(),
            is_killed: Default::default(),
            upstream_id: std::sync::atomic::AtomicI64::new(0),
        });
        self.lock().insert(id, client.clone());
        Registration {
            registry: self.clone(),
            client,
        }
    }

    /// Clients connected now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn all(&self) -> Vec<Arc<Client>> {
        self.lock().values().cloned().collect()
    }

    /// `CLIENT TRACKING ON REDIRECT <id> ...`: the id names a client of cacheside's; the
    /// upstream must be told the id of that client's own connection to it.
    pub fn redirect(&self, req: &Request) -> Decision {
        let Some(at) = (2..req.argc().saturating_sub(1)).find(|&i| req.arg_is(i, "REDIRECT"))
        else {
            return Decision::Pinned;
        };
        let Some(id) = parse_u64(req.arg(at + 1)) else {
            // Not a number: the upstream answers it as Redis does.
            return Decision::Pinned;
        };
        let target = self
            .lock()
            .get(&id)
            .map(|c| c.upstream_id.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|&u| u > 0);
        let Some(upstream) = target else {
            return fail("ERR The client ID you want redirect to does not exist");
        };
        let upstream = upstream.to_string();
        let args: Vec<&[u8]> = (0..req.argc())
            .map(|i| {
                if i == at + 1 {
                    upstream.as_bytes()
                } else {
                    req.arg(i)
                }
            })
            .collect();
        Decision::PinnedRewrite(crate::protocol::request::encode_command(&args))
    }

    /// `CLIENT INFO`: this client's line.
    pub fn info(&self, st: &ClientState) -> Decision {
        let Some(c) = self.lock().get(&st.id).cloned() else {
            return fail("ERR no such client");
        };
        let mut text = String::new();
        c.line(&mut text, Instant::now(), Some("client|info"));
        bulk(text.as_bytes())
    }

    /// `CLIENT LIST [TYPE t] [ID id ...]`.
    pub fn list(&self, st: &ClientState, req: &Request) -> Decision {
        let mut kind = None;
        let mut ids: Option<Vec<u64>> = None;
        let mut i = 2;
        while i < req.argc() {
            if req.arg_is(i, "TYPE") && i + 1 < req.argc() {
                match client_type(req.arg(i + 1)) {
                    Some(t) => kind = Some(t),
                    None => {
                        return fail(&format!(
                            "ERR Unknown client type '{}'",
                            String::from_utf8_lossy(req.arg(i + 1))
                        ))
                    }
                }
                i += 2;
            } else if req.arg_is(i, "ID") && i + 1 < req.argc() {
                let mut v = Vec::new();
                i += 1;
                while i < req.argc() {
                    match parse_u64(req.arg(i)) {
                        Some(id) if id > 0 => v.push(id),
                        _ => return fail("ERR Invalid client ID"),
                    }
                    i += 1;
                }
                ids = Some(v);
            } else {
                return fail("ERR syntax error");
            }
        }
        let now = Instant::now();
        let mut text = String::new();
        for c in self.all() {
            if ids.as_ref().is_some_and(|v| !v.contains(&c.id)) {
                continue;
            }
            if kind.is_some_and(|k| !k.matches(&c)) {
                continue;
            }
            c.line(&mut text, now, (c.id == st.id).then_some("client|list"));
        }
        bulk(text.as_bytes())
    }

    /// `CLIENT KILL addr:port` or `CLIENT KILL <filter value> ...`.
    pub fn kill(&self, st: &ClientState, req: &Request) -> Decision {
        if req.argc() == 3 {
            // The old form: one address, +OK or an error.
            let addr = String::from_utf8_lossy(req.arg(2)).into_owned();
            let found = self.all().into_iter().find(|c| c.addr.to_string() == addr);
            return match found {
                Some(c) => {
                    c.kill();
                    Decision::Reply(Bytes::from_static(reply::OK))
                }
                None => fail("ERR No such client"),
            };
        }
        let mut f = Filter {
            skipme: true,
            ..Filter::default()
        };
        let mut i = 2;
        while i < req.argc() {
            if i + 1 >= req.argc() {
                return fail("ERR syntax error");
            }
            let (opt, val) = (req.arg(i), req.arg(i + 1));
            let text = String::from_utf8_lossy(val).into_owned();
            if opt.eq_ignore_ascii_case(b"ID") {
                match parse_u64(val) {
                    Some(id) if id > 0 => f.id = Some(id),
                    _ => return fail("ERR client-id should be greater than 0"),
                }
            } else if opt.eq_ignore_ascii_case(b"TYPE") {
                match client_type(val) {
                    Some(t) => f.kind = Some(t),
                    None => return fail(&format!("ERR Unknown client type '{text}'")),
                }
            } else if opt.eq_ignore_ascii_case(b"ADDR") {
                f.addr = Some(text);
            } else if opt.eq_ignore_ascii_case(b"LADDR") {
                f.laddr = Some(text);
            } else if opt.eq_ignore_ascii_case(b"USER") {
                f.user = Some(text);
            } else if opt.eq_ignore_ascii_case(b"SKIPME") {
                if val.eq_ignore_ascii_case(b"YES") {
                    f.skipme = true;
                } else if val.eq_ignore_ascii_case(b"NO") {
                    f.skipme = false;
                } else {
                    return fail("ERR syntax error");
                }
            } else if opt.eq_ignore_ascii_case(b"MAXAGE") {
                match parse_u64(val) {
                    Some(s) => f.maxage = Some(s),
                    None => return fail("ERR syntax error"),
                }
            } else {
                return fail("ERR syntax error");
            }
            i += 2;
        }
        let now = Instant::now();
        let mut killed = 0i64;
        for c in self.all() {
            if f.picks(&c, st.id, now) {
                c.kill();
                killed += 1;
            }
        }
        let mut out = BytesMut::new();
        reply::integer(&mut out, killed);
        Decision::Reply(out.freeze())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    PubSub,
    /// master / replica / slave: cacheside has none.
    Replication,
}

impl Kind {
    fn matches(self, c: &Client) -> bool {
        match self {
            Kind::Normal => !c.is_pubsub(),
            Kind::PubSub => c.is_pubsub(),
            Kind::Replication => false,
        }
    }
}

fn client_type(b: &[u8]) -> Option<Kind> {
    let t = b.to_ascii_lowercase();
    match t.as_slice() {
        b"normal" => Some(Kind::Normal),
        b"pubsub" => Some(Kind::PubSub),
        b"master" | b"replica" | b"slave" => Some(Kind::Replication),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Filter {
    id: Option<u64>,
    kind: Option<Kind>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    maxage: Option<u64>,
    skipme: bool,
}

impl Filter {
    fn picks(&self, c: &Client, me: u64, now: Instant) -> bool {
        !(self.skipme && c.id == me)
            && self.id.is_none_or(|id| id == c.id)
            && self.kind.is_none_or(|k| k.matches(c))
            && self.addr.as_ref().is_none_or(|a| *a == c.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == c.laddr.to_string())
            && self.user.as_ref().is_none_or(|u| u == "default")
            && self
                .maxage
                .is_none_or(|s| now.duration_since(c.created).as_secs() > s)
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn fail(text: &str) -> Decision {
    Decision::Fail(ProxyError::Command(text.into()))
}

fn bulk(data: &[u8]) -> Decision {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    reply::bulk(&mut out, data);
    Decision::Reply(out.freeze())
}
