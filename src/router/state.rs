//! What cacheside knows about one client connection (auth, protocol, database, transaction and
//! pub/sub state), and how a request sent on its pinned connection changes it.

use super::client_sub_is_sticky;
use super::fill;
use crate::protocol::command::{CommandInfo, Local, Pin, Route};
use crate::protocol::reply::{Expect, SubKind};
use crate::protocol::{Proto, Request};
use bytes::Bytes;

/// What cacheside knows about one client connection.
#[derive(Debug, Clone)]
pub struct ClientState {
    pub id: u64,
    pub proto: Proto,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    /// The database the client has selected.
    pub db: u32,
    /// The upstream URL's database: the one shared connections use.
    pub default_db: u32,
    pub in_multi: bool,
    pub watching: bool,
    /// The slots of the keys watched, sorted, each once (cluster mode: where the watch lives).
    pub watched_slots: Vec<u16>,
    /// Pub/sub, MONITOR, CLIENT TRACKING/REPLY/NO-EVICT/NO-TOUCH: pinned for good.
    pub sticky: bool,
    /// Has subscribed (CLIENT LIST shows it as a pub/sub client).
    pub subscribed: bool,
    pub reply_mode: ReplyMode,
    /// Connected from a loopback address (may run CACHESIDE commands without a password).
    pub loopback: bool,
    /// The pending-invalidation check for the current read from the client.
    pub fence: fill::Fence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    Skip,
}

impl ClientState {
    pub fn new(id: u64, default_db: u32, needs_auth: bool) -> Self {
        Self {
            id,
            proto: Proto::Resp2,
            authenticated: !needs_auth,
            name: None,
            db: default_db,
            default_db,
            in_multi: false,
            watching: false,
            watched_slots: Vec::new(),
            sticky: false,
            subscribed: false,
            reply_mode: ReplyMode::On,
            loopback: false,
            fence: fill::Fence::default(),
        }
    }

    /// Whether nothing ties the client to its pinned connection any more.
    pub fn can_release(&self) -> bool {
        !self.in_multi && !self.watching && !self.sticky && self.db == self.default_db
    }

    /// Back to a fresh connection's state (RESET), keeping identity and authentication.
    pub fn reset(&mut self) {
        *self = Self {
            id: self.id,
            authenticated: self.authenticated,
            loopback: self.loopback,
            ..Self::new(self.id, self.default_db, false)
        };
    }

    /// Updates the pinned-connection state for a request sent on it, and returns the replies the
    /// upstream will send for it.
    pub fn note_pinned(&mut self, info: &CommandInfo, req: &Request) -> Expect {
        let silent = match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        };
        let mut replies = if silent {
            Expect::Frames(0)
        } else {
            pubsub_replies(info, req).unwrap_or(Expect::Frames(1))
        };
        match info.route {
            Route::Pin(Pin::Multi) => self.in_multi = true,
            Route::Pin(Pin::Watch) if !self.in_multi => {
                self.watching = true;
                let keys =
                    (1..req.argc()).map(|i| crate::tier::redis::cluster::slot::of(req.arg(i)));
                self.watched_slots.extend(keys);
                self.watched_slots.sort_unstable();
                self.watched_slots.dedup();
            }
            Route::Pin(Pin::Subscribe) => {
                self.sticky = true;
                self.subscribed = true;
            }
            Route::Pin(Pin::Monitor) => self.sticky = true,
            // Queued in a transaction, SELECT takes effect only if EXEC runs it: the client's db
            // is then known only to its pinned connection, which it keeps.
            Route::Local(Local::Select) if self.in_multi => self.sticky = true,
            Route::Local(Local::Select) => {
                if let Some(db) = parse_db(req.arg(1)) {
                    self.db = db;
                }
            }
            Route::Local(Local::Client) => {
                if req.arg_is(1, "REPLY") {
                    self.sticky = true;
                    if req.arg_is(2, "OFF") {
                        self.reply_mode = ReplyMode::Off;
                        replies = Expect::Frames(0);
                    } else if req.arg_is(2, "SKIP") {
                        if self.reply_mode == ReplyMode::On {
                            self.reply_mode = ReplyMode::Skip;
                        }
                        replies = Expect::Frames(0);
                    } else if req.arg_is(2, "ON") {
                        self.reply_mode = ReplyMode::On;
                        replies = Expect::Frames(1);
                    }
                } else if client_sub_is_sticky(req) {
                    self.sticky = true;
                } else if req.arg_is(1, "SETNAME") {
                    self.name = Some(req.arg_bytes(2)).filter(|n| !n.is_empty());
                }
            }
            _ => match info.name {
                "EXEC" | "DISCARD" => {
                    self.in_multi = false;
                    self.watching = false;
                    self.watched_slots.clear();
                }
                "UNWATCH" if !self.in_multi => {
                    self.watching = false;
                    self.watched_slots.clear();
                }
                _ => {}
            },
        }
        replies
    }
}

/// Replies to the pub/sub commands that answer once per channel.
fn pubsub_replies(info: &CommandInfo, req: &Request) -> Option<Expect> {
    let kind = match info.name {
        "SUBSCRIBE" | "UNSUBSCRIBE" => SubKind::Channel,
        "PSUBSCRIBE" | "PUNSUBSCRIBE" => SubKind::Pattern,
        "SSUBSCRIBE" | "SUNSUBSCRIBE" => SubKind::Shard,
        _ => return None,
    };
    let channels = req.argc().saturating_sub(1) as u32;
    Some(if channels == 0 && info.name.contains("UNSUB") {
        Expect::UnsubscribeAll(kind)
    } else {
        Expect::Frames(channels)
    })
}

pub(super) fn parse_db(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// CLIENT subcommands that change per-connection server state and so must not run on a shared
/// connection.
/// CLIENT subcommands that answer about, or act on, the server's clients: cacheside answers
/// them itself (a shared upstream connection must never be listed or killed for a client).
pub(super) fn introspection(req: &Request) -> bool {
    req.arg_is(1, "LIST")
        || (req.arg_is(1, "INFO") && req.argc() == 2)
        || (req.arg_is(1, "KILL") && req.argc() >= 3)
}
