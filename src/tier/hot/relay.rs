//! `hot.broadcast_relay`: a fleet's announcements go through one elected sidecar, which joins
//! what every sidecar asked for into one round of messages to the whole fleet.
//!
//! Redis pays per message per subscriber, and a sidecar's batch holds only its own writes in
//! flight, so a fleet of many lightly writing sidecars sends many small messages to every
//! sidecar. With the relay, a sidecar (an *origin*) asks on `{<channel>}.relay`, heard by the
//! relay alone, with a sequence number; the relay evicts the keys from its own tier, announces
//! every key asked for since its last round as any sidecar announces (the same messages, its
//! own id), sends the fence, and then tells each origin which of its requests are done, on
//! `{<channel>}.ack.<origin id>`, heard by that origin alone, on its invalidation connection.
//! The origin releases its writers' replies only then, so the ordering argument is the one of a
//! sidecar's own announcement: every sidecar has the message before any writer has its reply.
//!
//! The relay holds a lease (`{<channel>}.relay.lease`, 3 s, renewed every second); a request
//! that no relay hears (PUBLISH answers 0), or whose acknowledgement does not come within
//! [`ACK_WAIT`], is announced by its origin itself, as without the setting.

use super::coherence::open;
use super::{Broadcast, HotTier, Publish};
use crate::metrics::InvalidationSource;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::{self, encode_command, Limits, Step};
use crate::protocol::scan::Value;
use crate::tier::redis::{Settings, Upstream};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// How long an origin waits for the relay before announcing itself.
pub const ACK_WAIT: Duration = Duration::from_millis(250);
const LEASE_MS: u64 = 3000;
const RENEW: Duration = Duration::from_secs(1);
const RENEW_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// An origin's requests waiting for the relay, by sequence number.
#[derive(Default)]
pub(super) struct Origin {
    seq: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

/// `{<base>}<suffix>`: in the base channel's slot (config refuses braces in it).
fn tagged(base: &[u8], suffix: &[u8]) -> Vec<u8> {
    [&b"{"[..], base, b"}", suffix].concat()
}

pub fn relay_channel(base: &[u8]) -> Vec<u8> {
    tagged(base, b".relay")
}

pub fn ack_channel(base: &[u8], id: &[u8]) -> Vec<u8> {
    tagged(base, &[&b".ack."[..], id].concat())
}

fn lease_key(base: &[u8]) -> Vec<u8> {
    tagged(base, b".relay.lease")
}

impl Broadcast {
    /// `PUBLISH {<channel>}.relay [id, "R", seq, <message tag and keys>]` (SPUBLISH on a cluster).
    fn relay_request(&self, seq: u64, keys: &[Bytes], flush: bool) -> Bytes {
        let seq = seq.to_string();
        let payload = self.payload(&[&self.id, b"R", seq.as_bytes()], keys, flush);
        encode_command(&[self.verb(), &relay_channel(&self.channel), &payload])
    }
}

impl HotTier {
    /// An acknowledgement `[relay id, "A", seq...]` heard on our ack channel.
    pub(super) fn relay_acked(&self, seqs: impl Iterator<Item = u64>) {
        let mut w = self
            .origin
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for s in seqs {
            if let Some(tx) = w.remove(&s) {
                let _ = tx.send(());
            }
        }
    }

    /// Asks the relay to announce each of `groups` (keys, flush); resolves, per group, to
    /// whether the relay announced it (false: announce it yourself).
    pub(super) async fn via_relay(
        &self,
        publish: &Publish,
        groups: &[(Vec<Bytes>, bool)],
    ) -> Vec<bool> {
        let Some(b) = self.broadcast() else {
            return vec![false; groups.len()];
        };
        let mut asked = Vec::with_capacity(groups.len());
        for (keys, flush) in groups {
            let seq = self.origin.seq.fetch_add(1, SeqCst);
            let (tx, rx) = oneshot::channel();
            self.origin
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seq, tx);
            // Queued at once: every request of the batch is out before any reply is awaited.
            asked.push((seq, rx, publish(b.relay_request(seq, keys, *flush))));
        }
        let mut done = Vec::with_capacity(asked.len());
        for (seq, rx, reply) in asked {
            let heard =
                matches!(reply.await, Some(r) if r.starts_with(b":") && &r[..] != b":0\r\n");
            let acked = heard && matches!(tokio::time::timeout(ACK_WAIT, rx).await, Ok(Ok(())));
            if acked {
                self.metrics.cache.relayed.inc();
            } else {
                self.origin
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&seq);
                self.metrics.cache.relay_fallbacks.inc();
            }
            done.push(acked);
        }
        done
    }
}

/// Contends for the relay's lease for the tier's life; relays while holding it.
pub(super) async fn run(tier: Arc<HotTier>, upstream: Arc<Upstream>, settings: Arc<Settings>) {
    let mut first = true;
    let mut wait = Duration::from_millis(50);
    loop {
        let (Some(b), Some(publish)) = (tier.broadcast().cloned(), tier.publisher.get().cloned())
        else {
            // Broadcast has not started (or never will, in tracking mode): looked at again
            // soon at first, then once per lease renewal.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RENEW);
            continue;
        };
        if !first {
            tokio::time::sleep(RENEW).await;
        }
        first = false;
        // Taken, or still ours (a relay that just stopped, its lease not yet expired).
        let take = encode_command(&[
            &b"SET"[..],
            &lease_key(&b.channel),
            &b.id,
            b"NX",
            b"PX",
            LEASE_MS.to_string().as_bytes(),
        ]);
        let held = match crate::loader::call(&upstream, take, 1).await {
            Ok(r) if r.first().is_some_and(|r| r.starts_with(b"+OK")) => true,
            Ok(_) => renew(&upstream, &b).await,
            Err(_) => false,
        };
        if !held {
            continue;
        }
        tracing::info!("this sidecar relays the fleet's broadcast announcements");
        let why = relay(&tier, &upstream, &settings, &b, &publish).await;
        tracing::info!(reason = %why, "this sidecar no longer relays announcements");
    }
}

/// Relays until the lease is lost or the connection fails; the reason.
async fn relay(
    tier: &HotTier,
    upstream: &Upstream,
    settings: &Settings,
    b: &Broadcast,
    publish: &Publish,
) -> String {
    let channel = relay_channel(&b.channel);
    let addr: Arc<str> = match upstream.cluster().map(|c| c.addr_for(Some(&channel))) {
        None => settings.url.addr().into(),
        Some(Ok(a)) => a,
        Some(Err(e)) => return e.to_string(),
    };
    let Ok(mut stream) = open(settings, &addr, Proto::Resp2).await else {
        return format!("cannot connect to {addr}");
    };
    let verb: &[u8] = if b.shard { b"SSUBSCRIBE" } else { b"SUBSCRIBE" };
    if let Err(e) = stream.write_all(&encode_command(&[verb, &channel])).await {
        return e.to_string();
    }
    let _ = stream.flush().await;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut every = tokio::time::interval(RENEW);
    every.tick().await;
    loop {
        let mut asked = Vec::new();
        loop {
            match reply::frame(&buf, Proto::Resp2) {
                Ok(Some(f)) => {
                    let frame = buf.split_to(f.len).freeze();
                    if frame.starts_with(b"-") {
                        return String::from_utf8_lossy(&frame).trim_end().to_string();
                    }
                    if frame.starts_with(b"*3\r\n$12\r\nsunsubscribe\r\n") {
                        // The channel's slot moved (cluster): subscribe again where it lives.
                        return "the relay channel's slot moved".into();
                    }
                    if let Some(r) = heard(&frame) {
                        asked.push(r);
                    }
                }
                Ok(None) => break,
                Err(e) => return e.to_string(),
            }
        }
        if !asked.is_empty() {
            round(tier, b, publish, asked).await;
            continue;
        }
        tokio::select! {
            n = stream.read_buf(&mut buf) => match n {
                Ok(0) => return format!("{addr} closed the connection"),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            },
            _ = every.tick() => {
                if !renew(upstream, b).await {
                    return "the lease was lost".into();
                }
            }
        }
    }
}

/// Extends our lease; whether it is still ours.
async fn renew(upstream: &Upstream, b: &Broadcast) -> bool {
    let cmd = encode_command(&[
        &b"EVAL"[..],
        RENEW_SCRIPT.as_bytes(),
        b"1",
        &lease_key(&b.channel),
        &b.id,
        LEASE_MS.to_string().as_bytes(),
    ]);
    matches!(crate::loader::call(upstream, cmd, 1).await, Ok(r) if r.first().is_some_and(|r| &r[..] == b":1\r\n"))
}

/// A request: its origin, its sequence number, and what it announces.
struct Asked {
    origin: Bytes,
    seq: Bytes,
    keys: Vec<Bytes>,
    flush: bool,
}

/// A message on the relay channel, as a request (`None` for anything else: confirmations).
fn heard(frame: &[u8]) -> Option<Asked> {
    let (v, _) = Value::parse(frame, Proto::Resp2)?;
    let parts: Vec<_> = v.items()?.map(|v| v.string()).collect();
    let payload = match parts.as_slice() {
        [Some(b"message" | b"smessage"), _, Some(p)] => *p,
        _ => return None,
    };
    let Ok(Step::Request(p)) = request::parse(payload, 0, &Limits::default()) else {
        return None;
    };
    let chunk = Bytes::copy_from_slice(payload);
    let m = request::Request::from_parsed(&chunk, p);
    if m.argc() < 4 || m.arg(1) != b"R" {
        return None;
    }
    let mut asked = Asked {
        origin: m.arg_bytes(0),
        seq: m.arg_bytes(2),
        keys: Vec::new(),
        flush: false,
    };
    match m.arg(3) {
        b"F" => asked.flush = true,
        b"K" => asked.keys = (4..m.argc()).map(|i| m.arg_bytes(i)).collect(),
        b"P" if m.argc() == 5 => {
            let whole = super::pack::unpack(m.arg(4), |k| {
                asked.keys.push(Bytes::copy_from_slice(k));
            });
            // Keys that do not unpack: everything is announced as changed.
            asked.flush |= !whole;
        }
        _ => asked.flush = true,
    }
    Some(asked)
}

/// One round: what was asked is evicted here, announced to the fleet, fenced, and acknowledged
/// to each origin. Nothing is acknowledged if any of it failed (the origins announce it then).
async fn round(tier: &HotTier, b: &Broadcast, publish: &Publish, asked: Vec<Asked>) {
    let flush = asked.iter().any(|a| a.flush);
    let mut keys: Vec<Bytes> = asked.iter().flat_map(|a| a.keys.iter().cloned()).collect();
    keys.sort_unstable();
    keys.dedup();
    if flush {
        tier.invalidate_all(InvalidationSource::Flush).await;
    } else {
        for k in &keys {
            tier.invalidate(k, InvalidationSource::Broadcast).await;
        }
    }
    let groups = tier.message_groups(&keys, flush);
    if !tier.publish_groups(publish, &groups, keys.len()).await {
        return;
    }
    let mut by_origin: BTreeMap<Bytes, Vec<Bytes>> = BTreeMap::new();
    for a in asked {
        by_origin.entry(a.origin).or_default().push(a.seq);
    }
    let acks: Vec<_> = by_origin
        .into_iter()
        .map(|(origin, seqs)| {
            let mut args: Vec<&[u8]> = vec![&b.id, b"A"];
            args.extend(seqs.iter().map(|s| &s[..]));
            let payload = encode_command(&args);
            let ch = ack_channel(&b.channel, &origin);
            publish(encode_command(&[b.verb(), &ch, &payload]))
        })
        .collect();
    for a in acks {
        let _ = a.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_channels_share_the_base_channels_hash_tag() {
        assert_eq!(relay_channel(b"inv"), b"{inv}.relay");
        assert_eq!(ack_channel(b"inv", b"00ff"), b"{inv}.ack.00ff");
        assert_eq!(lease_key(b"inv"), b"{inv}.relay.lease");
    }

    #[test]
    fn requests_are_read_back_from_the_relay_channel() {
        let b = Broadcast {
            channel: Bytes::from_static(b"inv"),
            id: Bytes::from_static(b"me"),
            shard: false,
            per_prefix: false,
            packed: true,
        };
        let keys = [Bytes::from_static(b"a:1"), Bytes::from_static(b"a:2")];
        let cmd = b.relay_request(7, &keys, false);
        let Ok(Step::Request(p)) = request::parse(&cmd, 0, &Limits::default()) else {
            panic!("a command");
        };
        let r = request::Request::from_parsed(&cmd, p);
        assert_eq!(r.arg(1), b"{inv}.relay");
        let msg = encode_command(&[&b"message"[..], b"{inv}.relay", r.arg(2)]);
        let got = heard(&msg).expect("a request");
        assert_eq!((&got.origin[..], &got.seq[..]), (&b"me"[..], &b"7"[..]));
        assert_eq!(got.keys, keys.to_vec());
        assert!(!got.flush);
        let flush = b.relay_request(8, &[], true);
        let r = request::Request::from_parsed(
            &flush,
            match request::parse(&flush, 0, &Limits::default()) {
                Ok(Step::Request(p)) => p,
                _ => panic!("a command"),
            },
        );
        let msg = encode_command(&[&b"message"[..], b"{inv}.relay", r.arg(2)]);
        assert!(heard(&msg).expect("a request").flush);
        // A confirmation, or a message that is no request: nothing.
        assert!(heard(&encode_command(&[&b"subscribe"[..], b"{inv}.relay"])).is_none());
        let other = encode_command(&[&b"me"[..], b"K", b"a:1"]);
        assert!(heard(&encode_command(&[&b"message"[..], b"x", &other])).is_none());
    }
}
