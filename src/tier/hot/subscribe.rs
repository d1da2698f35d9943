//! Broadcast coherence, receiving side: subscribing to the invalidation channels on one
//! connection and applying what other sidecars announce on them.

use super::channels::{self, Subscriptions};
use super::coherence::{lost, next, open, protocol, watch, End};
use super::{Broadcast, HotTier};
use crate::error::UpstreamError;
use crate::metrics::InvalidationSource;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::{self, encode_command, Limits, Step};
use crate::protocol::scan::Value;
use crate::tier::redis::cluster::Cluster;
use crate::tier::redis::Settings;
use crate::transport::Stream;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a frame on the subscribed connection says.
enum Heard<'a> {
    /// An announcement's payload, from any of our channels.
    Message(&'a [u8]),
    /// A (S|P)SUBSCRIBE confirmation.
    Subscribed,
    /// The shard channel's slot moved to another primary (resharding, failover): what is
    /// published there from now on is unheard here.
    ShardGone,
    Other,
}

fn hear(frame: &[u8]) -> Heard<'_> {
    let parts = Value::parse(frame, Proto::Resp2)
        .and_then(|(v, _)| v.items())
        .map(|items| items.map(|v| v.string()).collect::<Vec<_>>());
    match parts.as_deref() {
        Some([Some(b"message" | b"smessage"), _, Some(payload)]) => Heard::Message(payload),
        Some([Some(b"pmessage"), _, _, Some(payload)]) => Heard::Message(payload),
        Some([Some(b"subscribe" | b"ssubscribe" | b"psubscribe"), ..]) => Heard::Subscribed,
        Some([Some(b"sunsubscribe"), ..]) => Heard::ShardGone,
        _ => Heard::Other,
    }
}

/// Subscribes to `channel` (on a cluster: SSUBSCRIBE on the primary of the channel's slot, where
/// every sidecar's SPUBLISH goes) and applies what other sidecars announce. With
/// `hot.channel_per_prefix`, also to the channels of `subs` (all in that one slot) or, where a
/// rule can match any namespace, to the pattern `{channel}:*` (standalone only; `spawn` does
/// not come here on a cluster then). Every channel is on this one connection, whose socket the
/// hit path peeks (see `HotTier::invalidations_pending`), and every confirmation is read before
/// the tier turns coherent.
pub(super) async fn run_broadcast(
    tier: &HotTier,
    settings: &Settings,
    cluster: Option<&Arc<Cluster>>,
    channel: &str,
    id: &Bytes,
    subs: &Subscriptions,
) -> End {
    let addr: Arc<str> = match cluster.map(|c| c.addr_for(Some(channel.as_bytes()))) {
        None => settings.url.addr().into(),
        Some(Ok(a)) => a,
        Some(Err(e)) => return End::Lost(e),
    };
    let mut stream = match open(settings, &addr, Proto::Resp2).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let verb: &[u8] = if cluster.is_some() {
        b"SSUBSCRIBE"
    } else {
        b"SUBSCRIBE"
    };
    let base = channel.as_bytes();
    let names = if tier.per_prefix {
        subs.channels(base)
    } else {
        vec![base.to_vec()]
    };
    let mut names = names;
    if tier.relay {
        // The relay's acknowledgements of our requests: heard here, after its announcements.
        names.push(super::relay::ack_channel(base, id));
    }
    let mut args: Vec<&[u8]> = vec![verb];
    args.extend(names.iter().map(Vec::as_slice));
    let mut cmd = encode_command(&args).to_vec();
    let mut expected = names.len();
    let pattern = channels::pattern(base);
    if tier.per_prefix && subs.pattern && cluster.is_none() {
        cmd.extend_from_slice(&encode_command(&[&b"PSUBSCRIBE"[..], &pattern]));
        expected += 1;
    }
    match subscribe(tier, &mut stream, &mut buf, &cmd, expected, &addr, id).await {
        Ok(()) => {}
        Err((end, refused)) => {
            // A slot map that moved on (-MOVED): read again before the next attempt.
            if let (true, Some(c)) = (refused, cluster) {
                c.refresh_soon();
            }
            return end;
        }
    }
    tier.start_broadcast(Broadcast {
        channel: Bytes::copy_from_slice(base),
        id: id.clone(),
        shard: cluster.is_some(),
        per_prefix: tier.per_prefix,
        packed: tier.packed,
    });
    watch(tier, &stream);
    // As for tracking: frames read with the SUBSCRIBE reply are applied before any hit.
    let mut applying = tier.applying();
    tier.set_coherent(true).await;
    tracing::info!(upstream = %addr, channel, channels = names.len(), pattern = expected > names.len(), "hot tier coherent: broadcast invalidation");
    loop {
        while let Some(f) = match reply::frame(&buf, Proto::Resp2) {
            Ok(f) => f,
            Err(e) => return End::Lost(protocol(&addr, e)),
        } {
            let bytes = buf.split_to(f.len);
            match hear(&bytes) {
                Heard::Message(payload) => apply_broadcast(tier, payload, id).await,
                Heard::ShardGone => {
                    if let Some(c) = cluster {
                        c.refresh_soon();
                    }
                    return End::Lost(UpstreamError::Closed { addr });
                }
                Heard::Subscribed | Heard::Other => {}
            }
        }
        applying = match next(applying, &mut stream, &mut buf, tier, &addr).await {
            Ok(guard) => guard,
            Err(end) => return end,
        };
    }
}

/// Sends the subscribe commands `cmd` and reads their `expected` confirmations, applying any
/// announcement that comes between them; what follows the last one stays in `buf`. An error
/// says whether Redis refused a command (an error reply) rather than the connection failing.
async fn subscribe(
    tier: &HotTier,
    stream: &mut Stream,
    buf: &mut BytesMut,
    cmd: &[u8],
    mut expected: usize,
    addr: &Arc<str>,
    id: &Bytes,
) -> Result<(), (End, bool)> {
    let io = |e| (lost(addr, e), false);
    stream.write_all(cmd).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    while expected > 0 {
        let frame = reply::frame(buf, Proto::Resp2);
        let Some(f) = frame.map_err(|e| (End::Lost(protocol(addr, e)), false))? else {
            if stream.read_buf(buf).await.map_err(io)? == 0 {
                let closed = UpstreamError::Closed { addr: addr.clone() };
                return Err((End::Lost(closed), false));
            }
            continue;
        };
        let bytes = buf.split_to(f.len);
        if f.kind == reply::ReplyKind::Error {
            let detail = String::from_utf8_lossy(&bytes);
            return Err((End::Lost(protocol(addr, detail)), true));
        }
        match hear(&bytes) {
            Heard::Subscribed => expected -= 1,
            Heard::Message(payload) => apply_broadcast(tier, payload, id).await,
            Heard::ShardGone | Heard::Other => {}
        }
    }
    Ok(())
}

/// A message `[id, "K", key...]`, `[id, "P", packed keys]` or `[id, "F"]` from a sidecar (ours
/// are skipped: our writes invalidated locally already). Packed keys that do not unpack empty
/// the tier: which keys they named is unknown.
pub(super) async fn apply_broadcast(tier: &HotTier, payload: &[u8], own_id: &Bytes) {
    let Ok(Step::Request(p)) = request::parse(payload, 0, &Limits::default()) else {
        return;
    };
    let chunk = Bytes::copy_from_slice(payload);
    let msg = request::Request::from_parsed(&chunk, p);
    if msg.arg(1) == b"A" {
        // The relay's acknowledgement of our requests (on our own ack channel; ours too when
        // we are the relay).
        let seqs =
            (2..msg.argc()).filter_map(|i| std::str::from_utf8(msg.arg(i)).ok()?.parse().ok());
        tier.relay_acked(seqs);
        return;
    }
    if msg.arg(0) == &own_id[..] {
        return;
    }
    match msg.arg(1) {
        b"F" => tier.invalidate_all(InvalidationSource::Flush).await,
        b"K" => {
            for i in 2..msg.argc() {
                tier.invalidate(msg.arg(i), InvalidationSource::Broadcast)
                    .await;
            }
        }
        b"P" => {
            let mut keys = Vec::new();
            let whole = msg.argc() == 3
                && super::pack::unpack(msg.arg(2), |k| keys.push(Bytes::copy_from_slice(k)));
            if !whole {
                tracing::warn!("a packed announcement did not unpack; hot tier emptied");
                tier.invalidate_all(InvalidationSource::Flush).await;
                return;
            }
            for k in keys {
                tier.invalidate(&k, InvalidationSource::Broadcast).await;
            }
        }
        _ => {}
    }
}
