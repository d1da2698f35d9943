//! Cluster mode: a transaction whose queued commands were redirected is run again where the
//! cluster says.
//!
//! A transaction goes to the primary of its first key by cacheside's slot map. When that map is
//! stale (a slot moved by resharding or scaling) or the slot is being migrated, the node answers
//! each queued command with `-MOVED` or `-ASK` instead of `+QUEUED`, and EXEC with
//! `-EXECABORT`. A client that does not speak the cluster protocol cannot follow that, so the
//! relay does: it keeps the commands queued (up to [`MAX_BYTES`]), shows the client `+QUEUED`
//! for the redirected ones, and when EXEC's reply is the abort, runs the whole transaction on
//! the node named (ASKING first for `-ASK`), handing the client that EXEC's reply instead. Only
//! a transaction that can run there whole is moved: every redirection names the same node, and
//! no command with a key was queued where it was sent (its slot is served there: the keys
//! span two nodes, and the abort stands). EXEC itself may be redirected (a key queued there
//! migrated before EXEC): the node then discarded the transaction, and it is run where EXEC's
//! redirection says. A transaction under WATCH cannot move (its watch stays on the node that
//! discarded it): its `Replay` decides what EXEC answers instead (see the session's
//! `watch_replay`). A command sent under WATCH before MULTI (the transaction's reads) whose
//! reply is a redirection is run once where it says, and that reply is the client's
//! (`reroute`): the client reads its keys where they now live, and the transaction after it
//! meets the redirection in turn.

use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

/// Bytes of queued commands kept per transaction; a larger one is not moved.
pub const MAX_BYTES: usize = 4 << 20;

/// Runs a transaction again elsewhere: given the first redirection, the abort EXEC got, and
/// the queued commands, resolves to the reply the client gets for EXEC.
pub type Replay =
    Box<dyn FnOnce(Bytes, Bytes, Vec<Bytes>) -> Pin<Box<dyn Future<Output = Bytes> + Send>> + Send>;

/// What the relay knows of the transactions sent: the commands marked as queued and the EXECs
/// that may be replayed (of this one and of those pipelined after it), and this one's state.
#[derive(Default)]
pub(super) struct Txn {
    /// Queued commands (request number, bytes, whether it has a key), in order.
    marks: VecDeque<(u64, Bytes, bool)>,
    /// EXECs whose abort may be replayed, by request number.
    execs: VecDeque<(u64, Replay)>,
    /// Commands outside a transaction (under WATCH) run again where a redirection says.
    reroutes: VecDeque<(u64, Bytes, Replay)>,
    state: State,
}

/// The transaction whose replies are being read.
#[derive(Default)]
struct State {
    cmds: Vec<Bytes>,
    bytes: usize,
    /// The first redirection, and the node it names.
    first: Option<(Bytes, Bytes)>,
    /// A command with a key was queued where it was sent.
    queued_keyed: bool,
    /// The transaction cannot be moved whole: a command refused, redirections to two nodes,
    /// too many bytes to keep.
    stuck: bool,
}

/// The slot a `-MOVED <slot> <addr>` or `-ASK <slot> <addr>` names.
pub fn slot(frame: &[u8]) -> Option<u16> {
    let line = frame.strip_suffix(b"\r\n")?;
    let rest = line
        .strip_prefix(b"-MOVED ")
        .or_else(|| line.strip_prefix(b"-ASK "))?;
    let slot = rest.split(|&b| b == b' ').next()?;
    std::str::from_utf8(slot).ok()?.parse().ok()
}

/// The node a `-MOVED <slot> <addr>` or `-ASK <slot> <addr>` names.
fn target(frame: &[u8]) -> Option<&[u8]> {
    let line = frame.strip_suffix(b"\r\n")?;
    let rest = line
        .strip_prefix(b"-MOVED ")
        .or_else(|| line.strip_prefix(b"-ASK "))?;
    let mut parts = rest.split(|&b| b == b' ');
    let (_slot, addr) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && !addr.is_empty()).then_some(addr)
}

impl Txn {
    pub fn mark(&mut self, at: u64, cmd: Bytes, keyed: bool) {
        self.marks.push_back((at, cmd, keyed));
    }

    pub fn exec(&mut self, at: u64, replay: Replay) {
        self.execs.push_back((at, replay));
    }

    pub fn reroute(&mut self, at: u64, cmd: Bytes, replay: Replay) {
        self.reroutes.push_back((at, cmd, replay));
    }

    /// The frame the client gets for request `next`'s reply `frame` (one frame, the whole
    /// reply): a queued command's redirection becomes `+QUEUED`, an EXEC's abort the reply of
    /// the transaction run again where it belongs; anything else as it came.
    pub async fn reply(&mut self, next: u64, frame: Bytes) -> Bytes {
        while self.marks.front().is_some_and(|(at, _, _)| *at < next) {
            self.marks.pop_front();
        }
        while self.execs.front().is_some_and(|(at, _)| *at < next) {
            self.execs.pop_front();
        }
        while self.reroutes.front().is_some_and(|(at, _, _)| *at < next) {
            self.reroutes.pop_front();
        }
        if self.reroutes.front().is_some_and(|(at, _, _)| *at == next) {
            let Some((_, cmd, replay)) = self.reroutes.pop_front() else {
                return frame;
            };
            self.state = State::default();
            return match target(&frame) {
                Some(_) => replay(frame.clone(), frame, vec![cmd]).await,
                None => frame,
            };
        }
        if self.marks.front().is_some_and(|(at, _, _)| *at == next) {
            let Some((_, cmd, keyed)) = self.marks.pop_front() else {
                return frame;
            };
            return self.queued(frame, cmd, keyed);
        }
        if self.execs.front().is_some_and(|(at, _)| *at == next) {
            let Some((_, replay)) = self.execs.pop_front() else {
                return frame;
            };
            let done = std::mem::take(&mut self.state);
            if done.stuck {
                return frame;
            }
            return match (done.first, target(&frame)) {
                // EXEC redirected: the node discarded the transaction.
                (first, Some(to)) if first.as_ref().is_none_or(|(_, n)| n[..] == *to) => {
                    replay(frame.clone(), frame, done.cmds).await
                }
                (Some((first, _)), None)
                    if !done.queued_keyed && frame.starts_with(b"-EXECABORT") =>
                {
                    replay(first, frame, done.cmds).await
                }
                _ => frame,
            };
        }
        if frame.first() != Some(&b'>') {
            // A request outside any transaction (MULTI itself, DISCARD, ...): a new one starts.
            self.state = State::default();
        }
        frame
    }

    fn queued(&mut self, frame: Bytes, cmd: Bytes, keyed: bool) -> Bytes {
        self.state.queued(frame, cmd, keyed)
    }
}

impl State {
    fn queued(&mut self, frame: Bytes, cmd: Bytes, keyed: bool) -> Bytes {
        self.bytes += cmd.len();
        if self.bytes > MAX_BYTES {
            self.stuck = true;
            self.cmds.clear();
        } else {
            self.cmds.push(cmd);
        }
        if let Some(to) = target(&frame) {
            match &self.first {
                None => self.first = Some((frame.clone(), Bytes::copy_from_slice(to))),
                Some((_, node)) if node[..] == *to => {}
                Some(_) => self.stuck = true,
            }
            // A keyed command queued here already: the transaction cannot move.
            self.stuck |= self.queued_keyed;
            if !self.stuck {
                return Bytes::from_static(b"+QUEUED\r\n");
            }
        } else if !frame.starts_with(b"+QUEUED") {
            // Refused: the abort stands.
            self.stuck = true;
        } else if keyed {
            // Its slot is served where it was sent.
            self.queued_keyed = true;
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    type Seen = Arc<Mutex<Option<(Bytes, Vec<Bytes>)>>>;

    fn replay(seen: &Seen) -> Replay {
        let seen = seen.clone();
        Box::new(move |first, _abort, cmds| {
            *seen.lock().unwrap() = Some((first, cmds));
            Box::pin(async { b("*1\r\n+OK\r\n") })
        })
    }

    #[test]
    fn redirection_targets_are_read_from_moved_and_ask() {
        assert_eq!(
            target(b"-MOVED 3999 10.0.0.1:6381\r\n"),
            Some(&b"10.0.0.1:6381"[..])
        );
        assert_eq!(target(b"-ASK 1 h:1\r\n"), Some(&b"h:1"[..]));
        assert_eq!(target(b"-MOVED 3999\r\n"), None);
        assert_eq!(target(b"-ERR MOVED 1 h:1\r\n"), None);
        assert_eq!(target(b"+QUEUED\r\n"), None);
        assert_eq!(slot(b"-MOVED 3999 10.0.0.1:6381\r\n"), Some(3999));
        assert_eq!(slot(b"-ASK 16383 h:1\r\n"), Some(16383));
        assert_eq!(slot(b"-ASK x h:1\r\n"), None);
        assert_eq!(slot(b"-ERR 1 h:1\r\n"), None);
    }

    #[tokio::test]
    async fn a_transaction_redirected_whole_is_replayed_and_its_commands_show_queued() {
        let (mut t, seen) = (Txn::default(), Seen::default());
        assert_eq!(t.reply(1, b("+OK\r\n")).await, b("+OK\r\n"), "MULTI");
        t.mark(2, b("SET a 1"), true);
        t.mark(3, b("PING"), false);
        t.mark(4, b("SET a 2"), true);
        t.exec(5, replay(&seen));
        let moved = b("-MOVED 1 h:2\r\n");
        assert_eq!(t.reply(2, moved.clone()).await, b("+QUEUED\r\n"));
        assert_eq!(t.reply(3, b("+QUEUED\r\n")).await, b("+QUEUED\r\n"));
        assert_eq!(t.reply(4, moved.clone()).await, b("+QUEUED\r\n"));
        let exec = t.reply(5, b("-EXECABORT Transaction discarded\r\n")).await;
        assert_eq!(exec, b("*1\r\n+OK\r\n"));
        let (first, cmds) = seen.lock().unwrap().take().unwrap();
        assert_eq!(first, moved);
        assert_eq!(cmds, vec![b("SET a 1"), b("PING"), b("SET a 2")]);
    }

    #[tokio::test]
    async fn a_transaction_split_over_two_nodes_keeps_its_abort() {
        let abort = b("-EXECABORT Transaction discarded\r\n");
        // A keyed command queued where it was sent, another redirected.
        let (mut t, seen) = (Txn::default(), Seen::default());
        t.mark(1, b("SET a 1"), true);
        t.mark(2, b("SET b 1"), true);
        t.exec(3, replay(&seen));
        assert_eq!(t.reply(1, b("+QUEUED\r\n")).await, b("+QUEUED\r\n"));
        let moved = b("-MOVED 1 h:2\r\n");
        assert_eq!(t.reply(2, moved.clone()).await, moved, "shown as it came");
        assert_eq!(t.reply(3, abort.clone()).await, abort);
        assert!(seen.lock().unwrap().is_none());
        // Redirections to two nodes.
        t.mark(4, b("SET a 1"), true);
        t.mark(5, b("SET b 1"), true);
        t.exec(6, replay(&seen));
        assert_eq!(t.reply(4, moved).await, b("+QUEUED\r\n"));
        let other = b("-MOVED 2 h:3\r\n");
        assert_eq!(t.reply(5, other.clone()).await, other);
        assert_eq!(t.reply(6, abort.clone()).await, abort);
        assert!(seen.lock().unwrap().is_none());
        // Nothing carries over: the next transaction is redirected whole.
        assert_eq!(t.reply(7, b("+OK\r\n")).await, b("+OK\r\n"), "MULTI");
        t.mark(8, b("SET c 1"), true);
        t.exec(9, replay(&seen));
        assert_eq!(t.reply(8, b("-ASK 3 h:4\r\n")).await, b("+QUEUED\r\n"));
        assert_eq!(t.reply(9, abort).await, b("*1\r\n+OK\r\n"));
        assert!(seen.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_redirected_exec_is_replayed_where_it_says() {
        let (mut t, seen) = (Txn::default(), Seen::default());
        t.mark(1, b("INCR a"), true);
        t.exec(2, replay(&seen));
        assert_eq!(t.reply(1, b("+QUEUED\r\n")).await, b("+QUEUED\r\n"));
        let ask = b("-ASK 5 h:2\r\n");
        assert_eq!(t.reply(2, ask.clone()).await, b("*1\r\n+OK\r\n"));
        assert_eq!(seen.lock().unwrap().take(), Some((ask, vec![b("INCR a")])));
        // Not where the queued commands' redirections said: left as it came.
        t.mark(3, b("INCR a"), true);
        t.exec(4, replay(&seen));
        assert_eq!(t.reply(3, b("-MOVED 5 h:2\r\n")).await, b("+QUEUED\r\n"));
        let elsewhere = b("-MOVED 5 h:3\r\n");
        assert_eq!(t.reply(4, elsewhere.clone()).await, elsewhere);
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn an_exec_that_ran_or_a_transaction_too_large_is_left_alone() {
        let (mut t, seen) = (Txn::default(), Seen::default());
        t.mark(1, b("SET a 1"), false);
        t.exec(2, replay(&seen));
        let ran = b("*1\r\n+OK\r\n");
        assert_eq!(t.reply(1, b("+QUEUED\r\n")).await, b("+QUEUED\r\n"));
        assert_eq!(t.reply(2, ran.clone()).await, ran);
        let big = Bytes::from(vec![b'x'; MAX_BYTES + 1]);
        t.mark(3, big, true);
        t.exec(4, replay(&seen));
        let moved = b("-MOVED 1 h:2\r\n");
        assert_eq!(t.reply(3, moved.clone()).await, moved);
        let abort = b("-EXECABORT x\r\n");
        assert_eq!(t.reply(4, abort.clone()).await, abort);
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_rerouted_command_runs_again_only_when_redirected() {
        let (mut t, seen) = (Txn::default(), Seen::default());
        t.reroute(1, b("GET a"), replay(&seen));
        assert_eq!(t.reply(1, b("$1\r\n1\r\n")).await, b("$1\r\n1\r\n"));
        assert!(seen.lock().unwrap().is_none());
        t.reroute(2, b("GET a"), replay(&seen));
        let moved = b("-MOVED 1 h:2\r\n");
        assert_eq!(t.reply(2, moved.clone()).await, b("*1\r\n+OK\r\n"));
        assert_eq!(seen.lock().unwrap().take(), Some((moved, vec![b("GET a")])));
        // One not answered (the connection moved on) is dropped with the replies after it.
        t.reroute(3, b("GET a"), replay(&seen));
        let err = b("-ERR x\r\n");
        assert_eq!(t.reply(4, err.clone()).await, err);
        assert!(t.reroutes.is_empty());
    }
}
