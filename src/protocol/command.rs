//! The command table: each command's family, read/write flags, key positions and how it is routed.
//!
//! Classified once, by table, never by ad-hoc string matching in the router. Unknown commands are
//! forwarded unchanged (cacheside is transparent); the upstream's error goes back byte for byte.

use super::request::Request;
use smallvec::SmallVec;

/// Command families: the closed label set of `cacheside_commands_total{family}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    String,
    Bitmap,
    Hash,
    List,
    Set,
    SortedSet,
    HyperLogLog,
    Geo,
    Stream,
    Generic,
    Scripting,
    PubSub,
    Transaction,
    Connection,
    Server,
    Cluster,
    Other,
}

impl Family {
    pub const ALL: [Family; 17] = [
        Family::String,
        Family::Bitmap,
        Family::Hash,
        Family::List,
        Family::Set,
        Family::SortedSet,
        Family::HyperLogLog,
        Family::Geo,
        Family::Stream,
        Family::Generic,
        Family::Scripting,
        Family::PubSub,
        Family::Transaction,
        Family::Connection,
        Family::Server,
        Family::Cluster,
        Family::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::String => "string",
            Family::Bitmap => "bitmap",
            Family::Hash => "hash",
            Family::List => "list",
            Family::Set => "set",
            Family::SortedSet => "sorted_set",
            Family::HyperLogLog => "hyperloglog",
            Family::Geo => "geo",
            Family::Stream => "stream",
            Family::Generic => "generic",
            Family::Scripting => "scripting",
            Family::PubSub => "pubsub",
            Family::Transaction => "transaction",
            Family::Connection => "connection",
            Family::Server => "server",
            Family::Cluster => "cluster",
            Family::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a command's keys are, as argument indices (0 is the command name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    /// `first..=last` every `step`; a negative `last` counts from the end (-1 is the last argument).
    Range {
        first: u8,
        last: i8,
        step: u8,
    },
    /// A count of keys at `at`, the keys right after it; `dest` adds argument 1 (ZUNIONSTORE).
    NumKeys {
        at: u8,
        dest: bool,
    },
    /// XREAD/XREADGROUP: the first half of the arguments after `STREAMS`.
    Streams,
    /// The key at 1 plus the argument after `STORE`/`STOREDIST` (SORT, GEORADIUS).
    WithStore,
    /// MIGRATE: the key at 3, or the arguments after `KEYS`.
    Migrate,
}

/// How a command is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Sent on a shared, multiplexed upstream connection.
    Forward,
    /// Answered by cacheside itself (connection state lives in the proxy).
    Local(Local),
    /// Needs an upstream connection of this client's own while its state lasts.
    Pin(Pin),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Ping,
    Echo,
    Quit,
    Auth,
    Hello,
    Select,
    Client,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// MULTI: pinned until EXEC/DISCARD.
    Multi,
    /// WATCH: pinned until EXEC/DISCARD/UNWATCH.
    Watch,
    /// SUBSCRIBE family: the connection stays pinned for the rest of its life.
    Subscribe,
    /// MONITOR: pinned for the rest of its life.
    Monitor,
    /// Blocks until its reply; pinned until then, so other clients are never held up.
    Blocking,
    /// XREAD/XREADGROUP: blocking only with a `BLOCK` option.
    MaybeBlocking,
}

pub const WRITE: u8 = 1;
pub const READ: u8 = 2;
/// Empties whole databases (FLUSHDB, FLUSHALL, SWAPDB).
pub const CLEARS_ALL: u8 = 4;

#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    pub name: &'static str,
    pub family: Family,
    pub flags: u8,
    pub keys: Keys,
    pub route: Route,
}

impl CommandInfo {
    pub fn is_write(&self) -> bool {
        self.flags & WRITE != 0
    }

    pub fn is_read(&self) -> bool {
        self.flags & READ != 0
    }

    pub fn clears_all(&self) -> bool {
        self.flags & CLEARS_ALL != 0
    }

    /// Indices of the key arguments of `req`.
    pub fn key_indices(&self, req: &Request) -> SmallVec<[usize; 4]> {
        let argc = req.argc();
        let mut out = SmallVec::new();
        match self.keys {
            Keys::None => {}
            Keys::Range { first, last, step } => {
                let first = first as usize;
                let last = if last < 0 {
                    argc as isize + last as isize
                } else {
                    last as isize
                };
                let mut i = first;
                while (i as isize) <= last && i < argc {
                    out.push(i);
                    i += step as usize;
                }
            }
            Keys::NumKeys { at, dest } => {
                if dest && argc > 1 {
                    out.push(1);
                }
                let at = at as usize;
                // The count is the client's: a huge one must not overflow.
                if let Some(n) = parse_count(req.arg(at)) {
                    out.extend(at + 1..(at + 1).saturating_add(n).min(argc));
                }
            }
            Keys::Streams => {
                if let Some(pos) = (1..argc).find(|&i| req.arg_is(i, "STREAMS")) {
                    let rest = argc - pos - 1;
                    out.extend(pos + 1..pos + 1 + rest / 2);
                }
            }
            Keys::WithStore => {
                if argc > 1 {
                    out.push(1);
                }
                for i in 2..argc.saturating_sub(1) {
                    if req.arg_is(i, "STORE") || req.arg_is(i, "STOREDIST") {
                        out.push(i + 1);
                    }
                }
            }
            Keys::Migrate => {
                if let Some(pos) = (6..argc).find(|&i| req.arg_is(i, "KEYS")) {
                    out.extend(pos + 1..argc);
                } else if argc > 3 && !req.arg(3).is_empty() {
                    out.push(3);
                }
            }
        }
        out
    }
}

fn parse_count(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// What cacheside knows of a command not in its table: forward it, keys unknown.
pub const UNKNOWN: CommandInfo = CommandInfo {
    name: "",
    family: Family::Other,
    flags: 0,
    keys: Keys::None,
    route: Route::Forward,
};

/// Looks a command up by name, ignoring ASCII case, without allocating.
pub fn lookup(name: &[u8]) -> &'static CommandInfo {
    let mut upper = [0u8; 24];
    if name.len() > upper.len() {
        return &UNKNOWN;
    }
    for (d, s) in upper.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    let key = &upper[..name.len()];
    match TABLE.binary_search_by(|c| c.name.as_bytes().cmp(key)) {
        Ok(i) => &TABLE[i],
        Err(_) => &UNKNOWN,
    }
}

use Family as F;
use Keys::{NumKeys, Streams, WithStore};
use Route::{Forward as FW, Local as L, Pin as P};

const NONE: Keys = Keys::None;
const K1: Keys = Keys::Range {
    first: 1,
    last: 1,
    step: 1,
};
const K2: Keys = Keys::Range {
    first: 2,
    last: 2,
    step: 1,
};
const K12: Keys = Keys::Range {
    first: 1,
    last: 2,
    step: 1,
};
const KALL: Keys = Keys::Range {
    first: 1,
    last: -1,
    step: 1,
};
const KPAIRS: Keys = Keys::Range {
    first: 1,
    last: -1,
    step: 2,
};
/// Every argument but the trailing timeout (BLPOP, BZPOPMIN, WATCH-like lists).
const KBLOCK: Keys = Keys::Range {
    first: 1,
    last: -2,
    step: 1,
};
const KDEST: Keys = Keys::Range {
    first: 2,
    last: -1,
    step: 1,
};
const W: u8 = WRITE;
const R: u8 = READ;

const fn c(name: &'static str, family: Family, flags: u8, keys: Keys, route: Route) -> CommandInfo {
    CommandInfo {
        name,
        family,
        flags,
        keys,
        route,
    }
}

/// Sorted by name (a unit test checks), searched by `lookup`.
static TABLE: &[CommandInfo] = &[
    c("ACL", F::Server, 0, NONE, FW),
    c("APPEND", F::String, W, K1, FW),
    c("ASKING", F::Cluster, 0, NONE, FW),
    c("AUTH", F::Connection, 0, NONE, L(Local::Auth)),
    c("BGREWRITEAOF", F::Server, 0, NONE, FW),
    c("BGSAVE", F::Server, 0, NONE, FW),
    c("BITCOUNT", F::Bitmap, R, K1, FW),
    c("BITFIELD", F::Bitmap, W, K1, FW),
    c("BITFIELD_RO", F::Bitmap, R, K1, FW),
    c("BITOP", F::Bitmap, W, KDEST, FW),
    c("BITPOS", F::Bitmap, R, K1, FW),
    c("BLMOVE", F::List, W, K12, P(Pin::Blocking)),
    c(
        "BLMPOP",
        F::List,
        W,
        NumKeys { at: 2, dest: false },
        P(Pin::Blocking),
    ),
    c("BLPOP", F::List, W, KBLOCK, P(Pin::Blocking)),
    c("BRPOP", F::List, W, KBLOCK, P(Pin::Blocking)),
    c("BRPOPLPUSH", F::List, W, K12, P(Pin::Blocking)),
    c(
        "BZMPOP",
        F::SortedSet,
        W,
        NumKeys { at: 2, dest: false },
        P(Pin::Blocking),
    ),
    c("BZPOPMAX", F::SortedSet, W, KBLOCK, P(Pin::Blocking)),
    c("BZPOPMIN", F::SortedSet, W, KBLOCK, P(Pin::Blocking)),
    c("CLIENT", F::Connection, 0, NONE, L(Local::Client)),
    c("CLUSTER", F::Cluster, 0, NONE, FW),
    c("COMMAND", F::Server, 0, NONE, FW),
    c("CONFIG", F::Server, 0, NONE, FW),
    c("COPY", F::Generic, W, K12, FW),
    c("DBSIZE", F::Server, 0, NONE, FW),
    c("DEBUG", F::Server, 0, NONE, FW),
    c("DECR", F::String, W, K1, FW),
    c("DECRBY", F::String, W, K1, FW),
    c("DEL", F::Generic, W, KALL, FW),
    c("DISCARD", F::Transaction, 0, NONE, FW),
    c("DUMP", F::Generic, R, K1, FW),
    c("ECHO", F::Connection, 0, NONE, L(Local::Echo)),
    c("EVAL", F::Scripting, W, NumKeys { at: 2, dest: false }, FW),
    c(
        "EVALSHA",
        F::Scripting,
        W,
        NumKeys { at: 2, dest: false },
        FW,
    ),
    c(
        "EVALSHA_RO",
        F::Scripting,
        R,
        NumKeys { at: 2, dest: false },
        FW,
    ),
    c(
        "EVAL_RO",
        F::Scripting,
        R,
        NumKeys { at: 2, dest: false },
        FW,
    ),
    c("EXEC", F::Transaction, 0, NONE, FW),
    c("EXISTS", F::Generic, R, KALL, FW),
    c("EXPIRE", F::Generic, W, K1, FW),
    c("EXPIREAT", F::Generic, W, K1, FW),
    c("EXPIRETIME", F::Generic, R, K1, FW),
    c("FAILOVER", F::Server, 0, NONE, FW),
    c("FCALL", F::Scripting, W, NumKeys { at: 2, dest: false }, FW),
    c(
        "FCALL_RO",
        F::Scripting,
        R,
        NumKeys { at: 2, dest: false },
        FW,
    ),
    c("FLUSHALL", F::Server, W | CLEARS_ALL, NONE, FW),
    c("FLUSHDB", F::Server, W | CLEARS_ALL, NONE, FW),
    c("FUNCTION", F::Scripting, 0, NONE, FW),
    c("GEOADD", F::Geo, W, K1, FW),
    c("GEODIST", F::Geo, R, K1, FW),
    c("GEOHASH", F::Geo, R, K1, FW),
    c("GEOPOS", F::Geo, R, K1, FW),
    c("GEORADIUS", F::Geo, W, WithStore, FW),
    c("GEORADIUSBYMEMBER", F::Geo, W, WithStore, FW),
    c("GEORADIUSBYMEMBER_RO", F::Geo, R, K1, FW),
    c("GEORADIUS_RO", F::Geo, R, K1, FW),
    c("GEOSEARCH", F::Geo, R, K1, FW),
    c("GEOSEARCHSTORE", F::Geo, W, K12, FW),
    c("GET", F::String, R, K1, FW),
    c("GETBIT", F::Bitmap, R, K1, FW),
    c("GETDEL", F::String, W, K1, FW),
    c("GETEX", F::String, W, K1, FW),
    c("GETRANGE", F::String, R, K1, FW),
    c("GETSET", F::String, W, K1, FW),
    c("HDEL", F::Hash, W, K1, FW),
    c("HELLO", F::Connection, 0, NONE, L(Local::Hello)),
    c("HEXISTS", F::Hash, R, K1, FW),
    c("HEXPIRE", F::Hash, W, K1, FW),
    c("HEXPIREAT", F::Hash, W, K1, FW),
    c("HEXPIRETIME", F::Hash, R, K1, FW),
    c("HGET", F::Hash, R, K1, FW),
    c("HGETALL", F::Hash, R, K1, FW),
    c("HGETDEL", F::Hash, W, K1, FW),
    c("HGETEX", F::Hash, W, K1, FW),
    c("HINCRBY", F::Hash, W, K1, FW),
    c("HINCRBYFLOAT", F::Hash, W, K1, FW),
    c("HKEYS", F::Hash, R, K1, FW),
    c("HLEN", F::Hash, R, K1, FW),
    c("HMGET", F::Hash, R, K1, FW),
    c("HMSET", F::Hash, W, K1, FW),
    c("HPERSIST", F::Hash, W, K1, FW),
    c("HPEXPIRE", F::Hash, W, K1, FW),
    c("HPEXPIREAT", F::Hash, W, K1, FW),
    c("HPEXPIRETIME", F::Hash, R, K1, FW),
    c("HPTTL", F::Hash, R, K1, FW),
    c("HRANDFIELD", F::Hash, R, K1, FW),
    c("HSCAN", F::Hash, R, K1, FW),
    c("HSET", F::Hash, W, K1, FW),
    c("HSETEX", F::Hash, W, K1, FW),
    c("HSETNX", F::Hash, W, K1, FW),
    c("HSTRLEN", F::Hash, R, K1, FW),
    c("HTTL", F::Hash, R, K1, FW),
    c("HVALS", F::Hash, R, K1, FW),
    c("INCR", F::String, W, K1, FW),
    c("INCRBY", F::String, W, K1, FW),
    c("INCRBYFLOAT", F::String, W, K1, FW),
    c("INFO", F::Server, 0, NONE, FW),
    c("KEYS", F::Generic, R, NONE, FW),
    c("LASTSAVE", F::Server, 0, NONE, FW),
    c("LATENCY", F::Server, 0, NONE, FW),
    c("LCS", F::String, R, K12, FW),
    c("LINDEX", F::List, R, K1, FW),
    c("LINSERT", F::List, W, K1, FW),
    c("LLEN", F::List, R, K1, FW),
    c("LMOVE", F::List, W, K12, FW),
    c("LMPOP", F::List, W, NumKeys { at: 1, dest: false }, FW),
    c("LOLWUT", F::Server, 0, NONE, FW),
    c("LPOP", F::List, W, K1, FW),
    c("LPOS", F::List, R, K1, FW),
    c("LPUSH", F::List, W, K1, FW),
    c("LPUSHX", F::List, W, K1, FW),
    c("LRANGE", F::List, R, K1, FW),
    c("LREM", F::List, W, K1, FW),
    c("LSET", F::List, W, K1, FW),
    c("LTRIM", F::List, W, K1, FW),
    c("MEMORY", F::Server, 0, K2, FW),
    c("MGET", F::String, R, KALL, FW),
    c("MIGRATE", F::Generic, W, Keys::Migrate, FW),
    c("MODULE", F::Server, 0, NONE, FW),
    c("MONITOR", F::Server, 0, NONE, P(Pin::Monitor)),
    c("MOVE", F::Generic, W, K1, FW),
    c("MSET", F::String, W, KPAIRS, FW),
    c("MSETNX", F::String, W, KPAIRS, FW),
    c("MULTI", F::Transaction, 0, NONE, P(Pin::Multi)),
    c("OBJECT", F::Generic, R, K2, FW),
    c("PERSIST", F::Generic, W, K1, FW),
    c("PEXPIRE", F::Generic, W, K1, FW),
    c("PEXPIREAT", F::Generic, W, K1, FW),
    c("PEXPIRETIME", F::Generic, R, K1, FW),
    c("PFADD", F::HyperLogLog, W, K1, FW),
    c("PFCOUNT", F::HyperLogLog, R, KALL, FW),
    c("PFDEBUG", F::HyperLogLog, W, K2, FW),
    c("PFMERGE", F::HyperLogLog, W, KALL, FW),
    c("PFSELFTEST", F::HyperLogLog, 0, NONE, FW),
    c("PING", F::Connection, 0, NONE, L(Local::Ping)),
    c("PSETEX", F::String, W, K1, FW),
    c("PSUBSCRIBE", F::PubSub, 0, NONE, P(Pin::Subscribe)),
    c("PSYNC", F::Server, 0, NONE, FW),
    c("PTTL", F::Generic, R, K1, FW),
    c("PUBLISH", F::PubSub, 0, NONE, FW),
    c("PUBSUB", F::PubSub, 0, NONE, FW),
    c("PUNSUBSCRIBE", F::PubSub, 0, NONE, FW),
    c("QUIT", F::Connection, 0, NONE, L(Local::Quit)),
    c("RANDOMKEY", F::Generic, R, NONE, FW),
    c("READONLY", F::Cluster, 0, NONE, FW),
    c("READWRITE", F::Cluster, 0, NONE, FW),
    c("RENAME", F::Generic, W, K12, FW),
    c("RENAMENX", F::Generic, W, K12, FW),
    c("REPLCONF", F::Server, 0, NONE, FW),
    c("REPLICAOF", F::Server, 0, NONE, FW),
    c("RESET", F::Connection, 0, NONE, L(Local::Reset)),
    c("RESTORE", F::Generic, W, K1, FW),
    c("ROLE", F::Server, 0, NONE, FW),
    c("RPOP", F::List, W, K1, FW),
    c("RPOPLPUSH", F::List, W, K12, FW),
    c("RPUSH", F::List, W, K1, FW),
    c("RPUSHX", F::List, W, K1, FW),
    c("SADD", F::Set, W, K1, FW),
    c("SAVE", F::Server, 0, NONE, FW),
    c("SCAN", F::Generic, R, NONE, FW),
    c("SCARD", F::Set, R, K1, FW),
    c("SCRIPT", F::Scripting, 0, NONE, FW),
    c("SDIFF", F::Set, R, KALL, FW),
    c("SDIFFSTORE", F::Set, W, KALL, FW),
    c("SELECT", F::Connection, 0, NONE, L(Local::Select)),
    c("SET", F::String, W, K1, FW),
    c("SETBIT", F::Bitmap, W, K1, FW),
    c("SETEX", F::String, W, K1, FW),
    c("SETNX", F::String, W, K1, FW),
    c("SETRANGE", F::String, W, K1, FW),
    c("SHUTDOWN", F::Server, 0, NONE, FW),
    c("SINTER", F::Set, R, KALL, FW),
    c("SINTERCARD", F::Set, R, NumKeys { at: 1, dest: false }, FW),
    c("SINTERSTORE", F::Set, W, KALL, FW),
    c("SISMEMBER", F::Set, R, K1, FW),
    c("SLAVEOF", F::Server, 0, NONE, FW),
    c("SLOWLOG", F::Server, 0, NONE, FW),
    c("SMEMBERS", F::Set, R, K1, FW),
    c("SMISMEMBER", F::Set, R, K1, FW),
    c("SMOVE", F::Set, W, K12, FW),
    c("SORT", F::Generic, W, WithStore, FW),
    c("SORT_RO", F::Generic, R, K1, FW),
    c("SPOP", F::Set, W, K1, FW),
    c("SPUBLISH", F::PubSub, 0, NONE, FW),
    c("SRANDMEMBER", F::Set, R, K1, FW),
    c("SREM", F::Set, W, K1, FW),
    c("SSCAN", F::Set, R, K1, FW),
    c("SSUBSCRIBE", F::PubSub, 0, NONE, P(Pin::Subscribe)),
    c("STRLEN", F::String, R, K1, FW),
    c("SUBSCRIBE", F::PubSub, 0, NONE, P(Pin::Subscribe)),
    c("SUBSTR", F::String, R, K1, FW),
    c("SUNION", F::Set, R, KALL, FW),
    c("SUNIONSTORE", F::Set, W, KALL, FW),
    c("SUNSUBSCRIBE", F::PubSub, 0, NONE, FW),
    c("SWAPDB", F::Server, W | CLEARS_ALL, NONE, FW),
    c("SYNC", F::Server, 0, NONE, FW),
    c("TIME", F::Server, 0, NONE, FW),
    c("TOUCH", F::Generic, R, KALL, FW),
    c("TTL", F::Generic, R, K1, FW),
    c("TYPE", F::Generic, R, K1, FW),
    c("UNLINK", F::Generic, W, KALL, FW),
    c("UNSUBSCRIBE", F::PubSub, 0, NONE, FW),
    c("UNWATCH", F::Transaction, 0, NONE, FW),
    c("WAIT", F::Generic, 0, NONE, P(Pin::Blocking)),
    c("WAITAOF", F::Generic, 0, NONE, P(Pin::Blocking)),
    c("WATCH", F::Transaction, 0, KALL, P(Pin::Watch)),
    c("XACK", F::Stream, W, K1, FW),
    c("XADD", F::Stream, W, K1, FW),
    c("XAUTOCLAIM", F::Stream, W, K1, FW),
    c("XCLAIM", F::Stream, W, K1, FW),
    c("XDEL", F::Stream, W, K1, FW),
    c("XGROUP", F::Stream, W, K2, FW),
    c("XINFO", F::Stream, R, K2, FW),
    c("XLEN", F::Stream, R, K1, FW),
    c("XPENDING", F::Stream, R, K1, FW),
    c("XRANGE", F::Stream, R, K1, FW),
    c("XREAD", F::Stream, R, Streams, P(Pin::MaybeBlocking)),
    c("XREADGROUP", F::Stream, W, Streams, P(Pin::MaybeBlocking)),
    c("XREVRANGE", F::Stream, R, K1, FW),
    c("XSETID", F::Stream, W, K1, FW),
    c("XTRIM", F::Stream, W, K1, FW),
    c("ZADD", F::SortedSet, W, K1, FW),
    c("ZCARD", F::SortedSet, R, K1, FW),
    c("ZCOUNT", F::SortedSet, R, K1, FW),
    c("ZDIFF", F::SortedSet, R, NumKeys { at: 1, dest: false }, FW),
    c(
        "ZDIFFSTORE",
        F::SortedSet,
        W,
        NumKeys { at: 2, dest: true },
        FW,
    ),
    c("ZINCRBY", F::SortedSet, W, K1, FW),
    c(
        "ZINTER",
        F::SortedSet,
        R,
        NumKeys { at: 1, dest: false },
        FW,
    ),
    c(
        "ZINTERCARD",
        F::SortedSet,
        R,
        NumKeys { at: 1, dest: false },
        FW,
    ),
    c(
        "ZINTERSTORE",
        F::SortedSet,
        W,
        NumKeys { at: 2, dest: true },
        FW,
    ),
    c("ZLEXCOUNT", F::SortedSet, R, K1, FW),
    c("ZMPOP", F::SortedSet, W, NumKeys { at: 1, dest: false }, FW),
    c("ZMSCORE", F::SortedSet, R, K1, FW),
    c("ZPOPMAX", F::SortedSet, W, K1, FW),
    c("ZPOPMIN", F::SortedSet, W, K1, FW),
    c("ZRANDMEMBER", F::SortedSet, R, K1, FW),
    c("ZRANGE", F::SortedSet, R, K1, FW),
    c("ZRANGEBYLEX", F::SortedSet, R, K1, FW),
    c("ZRANGEBYSCORE", F::SortedSet, R, K1, FW),
    c("ZRANGESTORE", F::SortedSet, W, K12, FW),
    c("ZRANK", F::SortedSet, R, K1, FW),
    c("ZREM", F::SortedSet, W, K1, FW),
    c("ZREMRANGEBYLEX", F::SortedSet, W, K1, FW),
    c("ZREMRANGEBYRANK", F::SortedSet, W, K1, FW),
    c("ZREMRANGEBYSCORE", F::SortedSet, W, K1, FW),
    c("ZREVRANGE", F::SortedSet, R, K1, FW),
    c("ZREVRANGEBYLEX", F::SortedSet, R, K1, FW),
    c("ZREVRANGEBYSCORE", F::SortedSet, R, K1, FW),
    c("ZREVRANK", F::SortedSet, R, K1, FW),
    c("ZSCAN", F::SortedSet, R, K1, FW),
    c("ZSCORE", F::SortedSet, R, K1, FW),
    c(
        "ZUNION",
        F::SortedSet,
        R,
        NumKeys { at: 1, dest: false },
        FW,
    ),
    c(
        "ZUNIONSTORE",
        F::SortedSet,
        W,
        NumKeys { at: 2, dest: true },
        FW,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(args: &[&str]) -> Vec<String> {
        let req = Request::from_args(args);
        lookup(req.arg(0))
            .key_indices(&req)
            .into_iter()
            .map(|i| String::from_utf8_lossy(req.arg(i)).into_owned())
            .collect()
    }

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        for w in TABLE.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn lookup_ignores_case_and_unknown_commands_forward() {
        assert_eq!(lookup(b"get").name, "GET");
        assert_eq!(lookup(b"GeT").name, "GET");
        assert_eq!(lookup(b"NOSUCHCOMMAND").route, Route::Forward);
        assert_eq!(lookup(&[b'x'; 100]).route, Route::Forward);
    }

    #[test]
    fn key_positions_follow_the_redis_command_table() {
        assert_eq!(keys(&["GET", "a"]), ["a"]);
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys(&["BLPOP", "a", "b", "0"]), ["a", "b"]);
        assert_eq!(keys(&["EVAL", "s", "2", "a", "b", "x"]), ["a", "b"]);
        assert_eq!(
            keys(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
            ["d", "a", "b"]
        );
        assert_eq!(
            keys(&["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"]),
            ["s1", "s2"]
        );
        assert_eq!(keys(&["SORT", "l", "BY", "w", "STORE", "d"]), ["l", "d"]);
        assert_eq!(keys(&["OBJECT", "ENCODING", "k"]), ["k"]);
        assert_eq!(keys(&["BITOP", "AND", "d", "a", "b"]), ["d", "a", "b"]);
        assert_eq!(
            keys(&["MIGRATE", "h", "1", "", "0", "5", "KEYS", "a", "b"]),
            ["a", "b"]
        );
        assert_eq!(keys(&["EVAL", "s", "x"]), Vec::<String>::new());
    }

    #[test]
    fn a_huge_key_count_takes_the_keys_there_are() {
        let max = usize::MAX.to_string();
        assert_eq!(keys(&["EVAL", "s", &max, "a", "b"]), ["a", "b"]);
        assert_eq!(keys(&["ZDIFF", &max, "a"]), ["a"]);
    }
}
