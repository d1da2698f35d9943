//! Cluster mode: a transaction runs on the primary of its keys, and MULTI names none. MULTI is
//! therefore answered here and held back; the first command queued after it takes the
//! transaction to that command's primary, where MULTI is sent (its reply unseen) just before
//! it. No transaction is begun on one node and moved to another (a round trip for MULTI's reply
//! and a DISCARD of cacheside's own each time), and an empty one (MULTI, EXEC) costs nothing
//! upstream. With WATCH the transaction stays where the WATCH went (`rehome` is not used
//! either).

use super::run::Dest;
use super::{Session, Stop};
use crate::error::ProxyError;
use crate::metrics::Outcome;
use crate::protocol::reply::Expect;
use crate::protocol::request::encode_command;
use crate::protocol::{CommandInfo, Request};
use crate::router::ReplyMode;
use crate::tier::redis::Replay;
use bytes::{Bytes, BytesMut};

/// Set when a command under the watch was run elsewhere (see `Session::void_exec`).
type WatchVoid = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// What runs again where a redirection says.
enum Rerun {
    /// MULTI, the queued commands, EXEC.
    Transaction,
    /// One command, sent under WATCH; run, it sets the flag if one is given.
    Command(Option<WatchVoid>),
}

impl Session {
    /// Whether this MULTI is held back until its first queued command.
    pub(super) fn defers_multi(&self, info: &CommandInfo) -> bool {
        info.name == "MULTI"
            && !self.pinned_active
            && !self.st.in_multi
            && !self.st.watching
            && self.st.reply_mode == ReplyMode::On
            && self.on_cluster()
    }

    /// MULTI, held back: the client's state opens the transaction, and the client gets `+OK`.
    pub(super) async fn defer_multi(
        &mut self,
        req: &Request,
        info: &'static CommandInfo,
    ) -> Result<(), Stop> {
        self.ctx.metrics.command(info.family, Outcome::Local);
        let _ = self.st.note_pinned(info, req);
        self.multi_deferred = Some(false);
        self.reply(Bytes::from_static(crate::protocol::reply::OK))
            .await
    }

    /// The next command of a held-back transaction. EXEC or DISCARD of an empty one is
    /// answered here (`Ok(true)`); any other command begins the transaction on its key's
    /// primary (any primary for a keyless one) and is then sent as usual (`Ok(false)`).
    pub(super) async fn begin_deferred(
        &mut self,
        chunk: &Bytes,
        key: Option<&[u8]>,
        req: &Request,
        info: &'static CommandInfo,
    ) -> Result<bool, Stop> {
        let Some(failed) = self.multi_deferred else {
            return Ok(false);
        };
        let local = match info.name {
            "EXEC" if failed => {
                Some(&b"-EXECABORT Transaction discarded because of previous errors.\r\n"[..])
            }
            "EXEC" => Some(&b"*0\r\n"[..]),
            "DISCARD" => Some(&b"+OK\r\n"[..]),
            _ => None,
        };
        if let Some(reply) = local {
            self.ctx.metrics.command(info.family, Outcome::Local);
            let _ = self.st.note_pinned(info, req);
            self.multi_deferred = None;
            self.reply(Bytes::from_static(reply)).await?;
            return Ok(true);
        }
        self.flush_run(chunk).await?;
        if let Err(e) = self.enter_pinned(key, None).await {
            // As a command refused while queuing: the transaction is then aborted at EXEC.
            self.ctx.metrics.command(info.family, Outcome::Rejected);
            self.multi_deferred = Some(true);
            self.reply(crate::error::reply_bytes(&ProxyError::Upstream(e)))
                .await?;
            return Ok(true);
        }
        self.multi_deferred = None;
        self.multi_homed = true;
        if let Some(p) = &mut self.pinned {
            p.expect(Expect::Hidden);
        }
        self.send_to(Dest::Pinned, encode_command(&["MULTI"]), 1, None)
            .await?;
        Ok(false)
    }

    /// Whether the transaction in progress is followed where its commands are redirected (see
    /// `tier::redis::pinned::txn`): cluster mode, replies on. Without WATCH it moves
    /// (`replay`); with one, EXEC's answer is `watch_replay`'s.
    pub(super) fn txn_moves(&self) -> bool {
        self.st.in_multi && self.st.reply_mode == ReplyMode::On && self.on_cluster()
    }

    /// A transaction under WATCH that was redirected whole cannot move: its watch was on the
    /// node that discarded it (and unwatched its keys). When every watched key's slot is the
    /// redirected one or is served where the redirection points, EXEC answers as for a watched
    /// key that changed (a null reply): the client's optimistic retry (WATCH again, which
    /// follows the redirection) then runs the whole transaction there. A slot that moved took
    /// its keys with it (MIGRATE deletes them on the old node, which fails a watch on any that
    /// existed), so this is the answer Redis gives in most such cases, and the one the retry
    /// loop expects in every case. Otherwise the keys now span two nodes and the abort stands.
    pub(super) fn watch_replay(&self, watched: Vec<u16>) -> Option<Replay> {
        let cluster = self.ctx.upstream.as_ref()?.cluster()?.clone();
        let from = self.pinned.as_ref()?.addr().clone();
        let null = crate::protocol::reply::null_array(self.st.proto);
        let metrics = self.ctx.metrics.clone();
        Some(Box::new(move |first, abort, _cmds| {
            Box::pin(async move {
                let (Some(hop), Some(slot)) = (
                    cluster.pinned_redirect(&first, &from, 1),
                    crate::tier::redis::redirected_slot(&first),
                ) else {
                    return abort;
                };
                let map = cluster.topology();
                let there =
                    |w: u16| w == slot || map.as_ref().is_some_and(|t| t.serves(w, &hop.addr));
                if watched.into_iter().all(there) {
                    metrics.cluster_watches_failed.inc();
                    null
                } else {
                    abort
                }
            })
        }))
    }

    /// How this client's transaction runs again on the node its commands were redirected to:
    /// on a connection of its own there (ASKING first for `-ASK`), its queued replies unseen,
    /// EXEC's reply the client's, then `cleanup` (read-through's lease cleanup for the mapped
    /// keys it wrote, which must run where the transaction did). The connection is then kept
    /// for the next client.
    pub(super) fn replay(&self, cleanup: &[Bytes]) -> Option<Replay> {
        self.rerun(cleanup, Rerun::Transaction)
    }

    /// How a command sent under WATCH, outside the transaction, runs again where its
    /// redirection says: as `replay`, without MULTI and EXEC, `cleanup` (read-through's, for a
    /// mapped key it writes) after it there; its reply is the client's. Run for a watched key
    /// (`voids`), it voids the watch (`void_exec`); another key's slot may move without
    /// touching the watch (and voiding it then would fail every retry).
    pub(super) fn reroute(&self, voids: bool, cleanup: &[Bytes]) -> Option<Replay> {
        let void = voids.then(|| self.watch_void.clone());
        self.rerun(cleanup, Rerun::Command(void))
    }

    /// EXEC under a watch voided by a redirection (a key read after WATCH had moved to another
    /// node, where the watch does not see its writes): the transaction must not run, even if
    /// its own commands' slot stayed. It is discarded on the node and the client gets what a
    /// failed watch gives, EXEC's null, and retries. `Ok(true)` when so answered.
    pub(super) async fn void_exec(
        &mut self,
        chunk: &Bytes,
        req: &Request,
        info: &'static CommandInfo,
    ) -> Result<bool, Stop> {
        use std::sync::atomic::Ordering;
        let voided = info.name == "EXEC"
            && self.st.in_multi
            && self.st.watching
            && self.st.reply_mode == ReplyMode::On
            && self.watch_void.load(Ordering::Relaxed);
        if !voided {
            return Ok(false);
        }
        self.watch_void.store(false, Ordering::Relaxed);
        self.ctx.metrics.command(info.family, Outcome::Pinned);
        self.ctx.metrics.cluster_watches_failed.inc();
        let _ = self.st.note_pinned(info, req);
        self.multi_writes.clear();
        self.multi_cleanup.clear();
        self.flush_run(chunk).await?;
        if let Some(p) = &mut self.pinned {
            p.expect(Expect::Hidden);
        }
        self.send_to(Dest::Pinned, encode_command(&["DISCARD"]), 1, None)
            .await?;
        if let Some(p) = &mut self.pinned {
            let _ = p.emit(crate::protocol::reply::null_array(self.st.proto));
            if self.st.can_release() {
                p.release();
                self.pinned_active = false;
                self.release_pending = true;
            }
        }
        Ok(true)
    }

    fn rerun(&self, cleanup: &[Bytes], what: Rerun) -> Option<Replay> {
        let (transaction, void) = match what {
            Rerun::Transaction => (true, None),
            Rerun::Command(void) => (false, void),
        };
        let cleanup = cleanup.to_vec();
        let upstream = self.ctx.upstream.clone()?;
        let from = self.pinned.as_ref()?.addr().clone();
        let (proto, name) = (self.st.proto, self.st.name.clone());
        Some(Box::new(move |first, abort, mut cmds| {
            Box::pin(async move {
                if let Some(v) = &void {
                    v.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let Some(hop) = upstream
                    .cluster()
                    .and_then(|c| c.pinned_redirect(&first, &from, 1))
                else {
                    return abort;
                };
                let answered = match transaction {
                    true => encode_command(&["EXEC"]),
                    false => match cmds.pop() {
                        Some(c) => c,
                        None => return abort,
                    },
                };
                let mut p = match upstream.pin_at(proto, name.as_deref(), hop.addr).await {
                    Ok(p) => p,
                    Err(e) => return crate::error::reply_bytes(&ProxyError::Upstream(e)),
                };
                let _frames = p.begin();
                let mut out = BytesMut::new();
                if hop.asking {
                    p.expect(Expect::Hidden);
                    out.extend_from_slice(&encode_command(&["ASKING"]));
                }
                let multi = transaction.then(|| encode_command(&["MULTI"]));
                for c in multi.into_iter().chain(cmds) {
                    p.expect(Expect::Hidden);
                    out.extend_from_slice(&c);
                }
                p.expect(Expect::Frames(1));
                let reply = p.take_reply();
                out.extend_from_slice(&answered);
                // The last cleanup command's reply is awaited too: the connection is answered
                // whole before it is kept or closed.
                let mut cleaned = None;
                for (i, c) in cleanup.iter().enumerate() {
                    if i + 1 == cleanup.len() {
                        p.expect(Expect::Frames(1));
                        cleaned = Some(p.take_reply());
                    } else {
                        p.expect(Expect::Hidden);
                    }
                    out.extend_from_slice(c);
                }
                let lost = |e| crate::error::reply_bytes(&ProxyError::PinnedLost(e));
                if let Err(e) = p.send(&out).await {
                    return lost(e);
                }
                let got = match reply.await {
                    Ok(r) => r.frame,
                    Err(_) => return lost(p.lost().await),
                };
                if let Some(rx) = cleaned {
                    let _ = rx.await;
                }
                p.release();
                upstream.unpin(p);
                got
            })
        }))
    }
}
