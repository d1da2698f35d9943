//! The command table: each command's family, read/write flags, key positions and how it is routed.
//!
//! Classified once, by table, never by ad-hoc string matching in the router. Unknown commands are
//! forwarded unchanged (cacheside is transparent); the upstream's error goes back byte for byte.

mod table;

use super::request::Request;
use smallvec::SmallVec;
use table::TABLE;

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
    /// `CACHESIDE ...`: the operator's commands.
    Cacheside,
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

/// Where the commands [`lookup`] finds without a search are in the table.
struct Fast {
    get: usize,
    set: usize,
    mget: usize,
}

static FAST: std::sync::LazyLock<Fast> = std::sync::LazyLock::new(|| {
    let at = |n: &str| {
        TABLE
            .binary_search_by(|c| c.name.cmp(n))
            .expect("the command table holds GET, SET and MGET")
    };
    Fast {
        get: at("GET"),
        set: at("SET"),
        mget: at("MGET"),
    }
});

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
    // Most requests are one of these: no search.
    match key {
        b"GET" => return &TABLE[FAST.get],
        b"SET" => return &TABLE[FAST.set],
        b"MGET" => return &TABLE[FAST.mget],
        _ => {}
    }
    match TABLE.binary_search_by(|c| c.name.as_bytes().cmp(key)) {
        Ok(i) => &TABLE[i],
        Err(_) => &UNKNOWN,
    }
}

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
        assert_eq!(lookup(b"set").name, "SET");
        assert_eq!(lookup(b"mGet").name, "MGET");
        assert_eq!(lookup(b"GETSET").name, "GETSET");
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
