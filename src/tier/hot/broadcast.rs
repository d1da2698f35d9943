//! Broadcast coherence, sending side: announcing the keys this sidecar's writes changed.

use super::{channels, HotTier, Publish};
use bytes::Bytes;
use std::sync::Arc;

/// Broadcast coherence: this sidecar's id and the channel it announces writes on.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub channel: Bytes,
    pub id: Bytes,
    /// On a Redis Cluster: a shard channel (SPUBLISH/SSUBSCRIBE), served by the primary of its
    /// slot, where every sidecar subscribes; announcements then always follow the writes' replies
    /// (a write's node is not the channel's, so a PUBLISH in its pipeline would not be ordered).
    pub shard: bool,
    /// `hot.channel_per_prefix`: keys of one namespace are announced on its own channel.
    pub per_prefix: bool,
    /// `hot.broadcast_encoding = "packed"`: keys go as one front-coded string (see `pack`).
    pub packed: bool,
}

impl Broadcast {
    /// The message announcing that `keys` (or everything, with `flush`) changed:
    /// a RESP array `[id, "K", key...]`, `[id, "P", packed keys]` or `[id, "F"]`, binary safe.
    pub fn message(&self, keys: &[Bytes], flush: bool) -> Bytes {
        self.payload(&[&self.id], keys, flush)
    }

    /// `head` (our id, and for the relay "R" and a sequence number), then what a message says.
    pub(super) fn payload(&self, head: &[&[u8]], keys: &[Bytes], flush: bool) -> Bytes {
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + head.len() + 1);
        args.extend_from_slice(head);
        let packed;
        if self.packed && !flush {
            packed = super::pack::pack(keys);
            args.extend([&b"P"[..], &packed]);
            return crate::protocol::request::encode_command(&args);
        }
        args.push(if flush { b"F" } else { b"K" });
        if !flush {
            args.extend(keys.iter().map(|k| &k[..]));
        }
        crate::protocol::request::encode_command(&args)
    }

    /// `PUBLISH`, or `SPUBLISH` on a cluster's shard channel.
    pub(super) fn verb(&self) -> &'static [u8] {
        if self.shard {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        }
    }

    /// `EXISTS <channel>`: a command answered by the channel's node, sent after a PUBLISH's
    /// reply to know its messages are written (see `run_announcer`).
    pub fn fence(&self) -> Bytes {
        crate::protocol::request::encode_command(&[&b"EXISTS"[..], &self.channel])
    }

    /// `PUBLISH <channel> <message>` (`SPUBLISH` on a cluster). Per prefix: on the channel of
    /// the keys' namespace when they all share one, else on the base channel.
    pub fn publish(&self, keys: &[Bytes], flush: bool) -> Bytes {
        let verb = self.verb();
        let own = self.per_prefix && !flush;
        let channel: std::borrow::Cow<'_, [u8]> =
            match own.then(|| shared_namespace(keys)).flatten() {
                Some(ns) => channels::channel(&self.channel, ns).into(),
                None => self.channel[..].into(),
            };
        crate::protocol::request::encode_command(&[verb, &channel, &self.message(keys, flush)])
    }
}

/// The namespace every key of `keys` has, if they all have the same one.
fn shared_namespace(keys: &[Bytes]) -> Option<&[u8]> {
    let (first, rest) = keys.split_first()?;
    let ns = channels::namespace(first)?;
    rest.iter()
        .all(|k| channels::namespace(k) == Some(ns))
        .then_some(ns)
}

impl HotTier {
    /// Announces writes through `broadcast` from now on (coherence chose broadcast mode).
    pub fn start_broadcast(&self, b: Broadcast) {
        let _ = self.broadcast.set(b);
    }

    pub fn broadcast(&self) -> Option<&Broadcast> {
        self.broadcast.get()
    }

    /// The PUBLISH to append to a batch of writes, in broadcast mode.
    pub fn broadcast_command(&self, keys: &[Bytes], flush: bool) -> Option<Bytes> {
        let b = self.broadcast.get()?;
        (flush || !keys.is_empty()).then(|| b.publish(keys, flush))
    }

    /// Whether announcements go on a cluster's shard channel or through the relay: never in a
    /// write's own pipeline or transaction, always after its reply, through
    /// [`HotTier::announce`].
    pub fn announces_after_reply(&self) -> bool {
        self.broadcast.get().is_some_and(|b| b.shard || self.relay)
    }

    /// How to send a PUBLISH. The function must queue it at once (the future only awaits the
    /// reply). Starts the announcer that batches broadcast announcements (see `announce`).
    pub fn set_publisher(self: &Arc<Self>, f: Publish) {
        let publish = Arc::new(f);
        if self.publisher.set(publish.clone()).is_ok() {
            let tier = self.clone();
            // The announcer lives as long as the process's tier.
            tokio::spawn(async move { tier.run_announcer(&publish).await });
        }
    }

    /// For a PUBLISH that went with its writes (in their pipeline or their transaction) and has
    /// been answered: sends the fence (`EXISTS <channel>`, see `publish_groups`) and resolves
    /// once Redis answers it, when the other sidecars' connections have the message. Redis writes
    /// the PUBLISH's reply before the messages, so without this a client could have its write's
    /// reply, and read through another sidecar, while that sidecar's message is still unwritten
    /// (for a long message, or on a Redis with many subscribers to write to). Whether Redis
    /// answered; true when there is nothing to fence (not broadcast, or no publisher yet).
    pub async fn fence_published(&self) -> bool {
        match (self.broadcast.get(), self.publisher.get()) {
            (Some(b), Some(publish)) => publish(b.fence()).await.is_some(),
            _ => true,
        }
    }
}
