//! Cluster mode: a client's shard channels (SSUBSCRIBE) on any primaries, as one Redis serves
//! them. A cluster serves a shard channel on the primary of its slot and refuses one command
//! naming channels of several slots (`-CROSSSLOT`); a client that speaks to cacheside as to one
//! Redis may subscribe to any channels, in one command or several. Each channel is subscribed
//! on its primary, alone: on the client's pinned connection when that is where the channel
//! lives, else on a connection of the client's own to that primary, whose frames (the channel's
//! messages) go into the client's one stream. Confirmations are cacheside's, written after the
//! node confirmed, in the client's order and with its count over every node, as Redis counts.
//! When a channel's slot moves (resharding, a failover), its node ends the subscription with an
//! unasked `sunsubscribe`; the connection reports it here instead of to the client, and the
//! channel is subscribed again on the slot's new primary, the client's count unchanged. Only if
//! that fails does the client get the `sunsubscribe`, with its count, as a node would send it.

use super::{Session, Stop};
use crate::error::{ProxyError, UpstreamError};
use crate::protocol::reply::{self, Expect};
use crate::protocol::request::encode_command;
use crate::protocol::{CommandInfo, Request};
use crate::router::ReplyMode;
use crate::tier::redis::Pinned;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What happened to the client's shard subscriptions.
pub(super) enum Event {
    /// An extra connection was lost.
    Lost(UpstreamError),
    /// A node ended the subscription to this channel unasked (its slot moved).
    Gone(Bytes),
}

/// The client's shard subscriptions and the extra connections that hold some of them.
#[derive(Default)]
pub(super) struct Shards {
    /// Connections to primaries other than the pinned connection's.
    conns: Vec<Pinned>,
    /// Each subscribed channel, in subscription order, with the node that holds it.
    subs: Vec<(Bytes, Arc<str>)>,
    /// Channels a node ended unasked, reported by the connections (see `Pinned::report_shards_gone`).
    gone: Option<(mpsc::UnboundedSender<Bytes>, mpsc::UnboundedReceiver<Bytes>)>,
}

impl Shards {
    /// Resolves when one of the extra connections is lost (its node went away: the client's
    /// subscriptions there are gone, as a direct client's connection would be), or a node
    /// ended a channel unasked; never while neither can happen.
    pub(super) async fn event(&mut self) -> Event {
        std::future::poll_fn(|cx| {
            for p in &mut self.conns {
                if let std::task::Poll::Ready(e) = p.poll_lost(cx) {
                    return std::task::Poll::Ready(Event::Lost(e));
                }
            }
            if let Some((_, rx)) = &mut self.gone {
                if let std::task::Poll::Ready(Some(c)) = rx.poll_recv(cx) {
                    return std::task::Poll::Ready(Event::Gone(c));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Where connections report channels their node ended unasked.
    fn reporter(&mut self) -> mpsc::UnboundedSender<Bytes> {
        self.gone
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }
}

impl Session {
    /// Whether `req` is a shard (un)subscription that this module answers: in cluster mode,
    /// outside a transaction, with replies on (an SSUBSCRIBE of no channel goes to Redis, for
    /// its arity error).
    pub(super) fn shard_command(&self, info: &CommandInfo, req: &Request) -> bool {
        (info.name == "SUNSUBSCRIBE" || (info.name == "SSUBSCRIBE" && req.argc() > 1))
            && !self.st.in_multi
            && self.st.reply_mode == ReplyMode::On
            && self.on_cluster()
    }

    /// SSUBSCRIBE or SUNSUBSCRIBE, channel by channel, each on the node of its slot.
    pub(super) async fn shard_request(
        &mut self,
        chunk: &Bytes,
        req: Request,
        info: &'static CommandInfo,
    ) -> Result<(), Stop> {
        let subscribe = info.name == "SSUBSCRIBE";
        let channels: Vec<Bytes> = if subscribe || req.argc() > 1 {
            (1..req.argc()).map(|i| req.arg_bytes(i)).collect()
        } else {
            self.shards.subs.iter().map(|(c, _)| c.clone()).collect()
        };
        if !self.pinned_active {
            self.flush_run(chunk).await?;
            if let Err(e) = self
                .enter_pinned(channels.first().map(|c| &c[..]), None)
                .await
            {
                return self
                    .reply(crate::error::reply_bytes(&ProxyError::Upstream(e)))
                    .await;
            }
        }
        self.flush_run(chunk).await?;
        if subscribe {
            let tx = self.shards.reporter();
            if let Some(p) = &mut self.pinned {
                p.report_shards_gone(tx);
            }
        }
        self.ctx
            .metrics
            .command(info.family, crate::metrics::Outcome::Pinned);
        // Subscribed state (sticky, the commands allowed), as for any subscription.
        let _ = self.st.note_pinned(info, &req);
        let head: &[u8] = if subscribe {
            b"ssubscribe"
        } else {
            b"sunsubscribe"
        };
        if channels.is_empty() {
            return self.confirm(head, None).await;
        }
        for channel in channels {
            let held = self.shards.subs.iter().position(|(c, _)| *c == channel);
            match (subscribe, held) {
                // Already subscribed, or not: Redis confirms with the count unchanged.
                (true, Some(_)) | (false, None) => {}
                (true, None) => match self.shard_subscribe(&channel).await? {
                    Ok(node) => self.shards.subs.push((channel.clone(), node)),
                    Err(error) => {
                        self.reply(error).await?;
                        continue;
                    }
                },
                (false, Some(i)) => {
                    let (_, node) = self.shards.subs.remove(i);
                    let cmd = encode_command(&[&b"SUNSUBSCRIBE"[..], &channel]);
                    if let Err(error) = self.on_node(&node, cmd).await? {
                        self.reply(error).await?;
                        continue;
                    }
                    self.close_unused_shard_conns();
                }
            }
            self.confirm(head, Some(&channel)).await?;
        }
        Ok(())
    }

    /// Subscribes `channel` on its slot's primary (following a slot map older than a move);
    /// its node, or the error reply for the client.
    async fn shard_subscribe(&mut self, channel: &[u8]) -> Result<Result<Arc<str>, Bytes>, Stop> {
        let Some(cluster) = self
            .ctx
            .upstream
            .as_ref()
            .and_then(|u| u.cluster())
            .cloned()
        else {
            return Ok(Err(lost()));
        };
        let mut node = match cluster.addr_for(Some(channel)) {
            Ok(a) => a,
            Err(e) => return Ok(Err(crate::error::reply_bytes(&ProxyError::Upstream(e)))),
        };
        let cmd = encode_command(&[&b"SSUBSCRIBE"[..], channel]);
        for attempt in 1.. {
            let reply = match self.on_node(&node, cmd.clone()).await? {
                Ok(r) => r,
                Err(error) => return Ok(Err(error)),
            };
            if reply.first() != Some(&b'-') {
                return Ok(Ok(node));
            }
            match cluster.pinned_redirect(&reply, &node, attempt) {
                Some(hop) if !hop.asking => node = hop.addr,
                _ => return Ok(Err(reply)),
            }
        }
        Ok(Err(lost()))
    }

    /// Sends `cmd` (one reply) on the client's connection to `node` (opened if needed), its
    /// reply taken back from the client: `Ok(reply)`, or `Err(error reply)` for the client.
    async fn on_node(&mut self, node: &Arc<str>, cmd: Bytes) -> Result<Result<Bytes, Bytes>, Stop> {
        let main = self.pinned.as_ref().is_some_and(|p| p.addr() == node);
        if !main && !self.shards.conns.iter().any(|p| p.addr() == node) {
            let opened = self.open_shard_conn(node).await;
            match opened {
                Ok(p) => self.shards.conns.push(p),
                Err(e) => return Ok(Err(crate::error::reply_bytes(&ProxyError::Upstream(e)))),
            }
        }
        let conn = if main {
            self.pinned.as_mut()
        } else {
            self.shards.conns.iter_mut().find(|p| p.addr() == node)
        };
        let Some(conn) = conn else {
            return Ok(Err(lost()));
        };
        conn.expect(Expect::Frames(1));
        let rx = conn.take_reply();
        if let Err(e) = conn.send(&cmd).await {
            return Ok(Err(crate::error::reply_bytes(&ProxyError::PinnedLost(e))));
        }
        Ok(match self.wait_reading(rx).await? {
            Ok(taken) => Ok(taken.frame),
            Err(_) => Err(crate::error::reply_bytes(&ProxyError::PinnedLost(
                UpstreamError::Closed { addr: node.clone() },
            ))),
        })
    }

    /// A connection of the client's own to `node`, relaying into the client's stream.
    async fn open_shard_conn(&mut self, node: &Arc<str>) -> Result<Pinned, UpstreamError> {
        let closed = || UpstreamError::Closed { addr: node.clone() };
        let stream = self
            .pinned
            .as_ref()
            .and_then(|p| p.stream())
            .ok_or_else(closed)?;
        let upstream = self.ctx.upstream.as_ref().ok_or_else(closed)?;
        let mut p = upstream
            .pin_at(self.st.proto, self.st.name.as_deref(), node.clone())
            .await?;
        p.begin_into(stream);
        p.report_shards_gone(self.shards.reporter());
        Ok(p)
    }

    /// A node ended the client's subscription to `channel` (its slot moved): subscribed again
    /// on the slot's primary now, unseen by the client; if that fails, the client is told, as
    /// the node would have told it, and its count drops.
    pub(super) async fn shard_moved(&mut self, channel: Bytes) -> Result<(), Stop> {
        let Some(i) = self.shards.subs.iter().position(|(c, _)| *c == channel) else {
            return Ok(());
        };
        self.shards.subs.remove(i);
        if let Some(c) = self.ctx.upstream.as_ref().and_then(|u| u.cluster()) {
            c.refresh_soon();
        }
        // While a move is being finished, the nodes may still point at each other: tried again
        // for a few seconds at most.
        let mut again = self.shard_subscribe(&channel).await?;
        for attempt in 1..=RESUBSCRIBE_TRIES {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            if let Some(c) = self.ctx.upstream.as_ref().and_then(|u| u.cluster()) {
                c.refresh_soon();
            }
            again = self.shard_subscribe(&channel).await?;
        }
        match again {
            Ok(node) => self.shards.subs.insert(i, (channel, node)),
            Err(error) => {
                tracing::debug!(error = %String::from_utf8_lossy(&error).trim_end(), "a shard channel whose slot moved could not be subscribed again");
                self.confirm(b"sunsubscribe", Some(&channel)).await?;
            }
        }
        self.close_unused_shard_conns();
        Ok(())
    }

    /// Closes the extra connections that no longer hold a subscription.
    fn close_unused_shard_conns(&mut self) {
        let subs = &self.shards.subs;
        self.shards
            .conns
            .retain(|p| subs.iter().any(|(_, node)| node == p.addr()));
    }

    /// The client's confirmation for `channel`, with its count after it.
    async fn confirm(&mut self, head: &[u8], channel: Option<&[u8]>) -> Result<(), Stop> {
        let mut out = BytesMut::new();
        reply::subscription(
            &mut out,
            self.st.proto,
            head,
            channel,
            self.shards.subs.len(),
        );
        self.reply(out.freeze()).await
    }
}

/// Attempts to subscribe again a channel whose slot moved, after the first.
const RESUBSCRIBE_TRIES: u64 = 8;

/// The reply for a shard subscription that cacheside could not make (no upstream, no stream).
fn lost() -> Bytes {
    crate::error::reply_bytes(&ProxyError::Internal(
        "shard subscription connection unavailable",
    ))
}
