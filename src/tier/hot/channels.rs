//! `hot.channel_per_prefix`: broadcast invalidations on a channel per key namespace, so a
//! sidecar hears only the writes to the namespaces its rules cache.
//!
//! A key's namespace is its bytes before its first `:`; a key without `:` has none. The channel
//! of namespace `ns` is `{<channel>}:<ns>`: its hash tag puts it in the slot of the base channel
//! `<channel>` (config refuses braces in `hot.channel` then), so on a Redis Cluster every one of
//! them lives on the primary where the sidecar already SSUBSCRIBEs. Announcements of keys of
//! one namespace go on its channel; anything else (several namespaces, a key without one, a
//! flush) on the base channel, which every sidecar always subscribes to.

use super::Rule;
use std::sync::Arc;

/// The namespace of `key`: its bytes before the first `:`.
pub fn namespace(key: &[u8]) -> Option<&[u8]> {
    key.iter().position(|&c| c == b':').map(|i| &key[..i])
}

/// `{<base>}:<ns>`.
pub fn channel(base: &[u8], ns: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(base.len() + ns.len() + 3);
    c.push(b'{');
    c.extend_from_slice(base);
    c.extend_from_slice(b"}:");
    c.extend_from_slice(ns);
    c
}

/// `{<base>}:*`: every namespace's channel (standalone only: shard channels have no patterns).
pub fn pattern(base: &[u8]) -> Vec<u8> {
    channel(base, b"*")
}

/// What a sidecar listens to, beyond the base channel, for its rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// The distinct namespaces of the rules' literal prefixes, sorted.
    pub namespaces: Vec<Vec<u8>>,
    /// A rule may match keys of any namespace (its literal prefix has no `:`): every
    /// namespace's channel is needed, which only a pattern subscription gives.
    pub pattern: bool,
}

impl Subscriptions {
    pub fn of(rules: &[Arc<Rule>]) -> Self {
        let mut s = Self::default();
        for r in rules {
            let prefix = r.pattern.literal_prefix();
            match namespace(prefix) {
                Some(ns) => s.namespaces.push(ns.to_vec()),
                // A literal key without `:` (no wildcard at all) is announced on the base channel.
                None if r.pattern.is_literal() => {}
                None => s.pattern = true,
            }
        }
        s.namespaces.sort();
        s.namespaces.dedup();
        s
    }

    /// The channels to SUBSCRIBE (SSUBSCRIBE) to: the base first, then one per namespace unless
    /// the pattern covers them (a channel matched twice would deliver each message twice).
    pub fn channels(&self, base: &[u8]) -> Vec<Vec<u8>> {
        let mut all = vec![base.to_vec()];
        if !self.pattern {
            all.extend(self.namespaces.iter().map(|ns| channel(base, ns)));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::hot::settings::RuleSettings;
    use std::time::Duration;

    fn subs(patterns: &[&str]) -> Subscriptions {
        let rules: Vec<RuleSettings> = patterns
            .iter()
            .map(|p| RuleSettings {
                pattern: (*p).into(),
                ttl: Duration::from_secs(1),
                max_value_size: 1,
            })
            .collect();
        Subscriptions::of(&crate::tier::hot::rules::compile(&rules))
    }

    #[test]
    fn a_key_namespace_is_what_comes_before_its_first_colon() {
        assert_eq!(namespace(b"product:1:views"), Some(&b"product"[..]));
        assert_eq!(namespace(b":x"), Some(&b""[..]));
        assert_eq!(namespace(b"plain"), None);
        assert_eq!(channel(b"inv", b"product"), b"{inv}:product".to_vec());
    }

    #[test]
    fn rules_with_a_namespace_need_its_channel_and_others_the_pattern() {
        let s = subs(&["product:*", "product:1*", "user:?", "exact"]);
        assert_eq!(s.namespaces, vec![b"product".to_vec(), b"user".to_vec()]);
        assert!(!s.pattern);
        assert_eq!(
            s.channels(b"c"),
            vec![b"c".to_vec(), b"{c}:product".to_vec(), b"{c}:user".to_vec()]
        );
        for any in ["*", "prod*", "*:views", "a\\:b*"] {
            let s = subs(&["product:*", any]);
            assert!(s.pattern, "{any}");
            assert_eq!(s.channels(b"c"), vec![b"c".to_vec()], "{any}");
        }
    }

    /// The channel a PUBLISH (or the fence) names.
    fn channel_of(cmd: &bytes::Bytes) -> Vec<u8> {
        use crate::protocol::request::{parse, Limits, Request, Step};
        let Ok(Step::Request(p)) = parse(cmd, 0, &Limits::default()) else {
            panic!("a command");
        };
        Request::from_parsed(cmd, p).arg(1).to_vec()
    }

    fn broadcast(per_prefix: bool) -> crate::tier::hot::Broadcast {
        crate::tier::hot::Broadcast {
            channel: bytes::Bytes::from_static(b"c"),
            id: bytes::Bytes::from_static(b"me"),
            shard: false,
            per_prefix,
            packed: false,
        }
    }

    #[test]
    fn keys_of_one_namespace_are_published_on_its_channel_and_the_rest_on_the_base() {
        let b = broadcast(true);
        let keys =
            |k: &[&'static str]| k.iter().map(|k| bytes::Bytes::from(*k)).collect::<Vec<_>>();
        let on = |k: &[&'static str], flush| channel_of(&b.publish(&keys(k), flush));
        assert_eq!(on(&["a:1", "a:2:x"], false), b"{c}:a".to_vec());
        assert_eq!(on(&["a:1", "b:1"], false), b"c".to_vec());
        assert_eq!(on(&["a:1", "plain"], false), b"c".to_vec());
        assert_eq!(on(&["plain"], false), b"c".to_vec());
        assert_eq!(on(&[], true), b"c".to_vec());
        // Off: every message on the channel, byte for byte as before.
        let off = broadcast(false).publish(&keys(&["a:1"]), false);
        assert_eq!(channel_of(&off), b"c".to_vec());
        assert_eq!(
            off,
            crate::protocol::request::encode_command(&[
                &b"PUBLISH"[..],
                b"c",
                &broadcast(false).message(&keys(&["a:1"]), false)
            ])
        );
    }

    #[tokio::test]
    async fn a_batch_goes_as_one_message_per_namespace_then_the_fence_on_the_base() {
        let t = crate::tier::hot::tests::tier(1 << 20);
        t.start_broadcast(broadcast(true));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = sent.clone();
        t.set_publisher(Box::new(move |cmd| {
            log.lock().unwrap().push(channel_of(&cmd));
            Box::pin(async { Some(bytes::Bytes::from_static(b":1\r\n")) })
        }));
        let keys = ["b:1", "a:1", "plain", "a:2", "other"].map(bytes::Bytes::from);
        assert!(t.announce(keys.to_vec(), false).await);
        let mut sent = sent.lock().unwrap().clone();
        assert_eq!(
            sent.pop(),
            Some(b"c".to_vec()),
            "the fence last, on the base channel"
        );
        sent.sort();
        let want: Vec<Vec<u8>> = vec![b"c".to_vec(), b"{c}:a".to_vec(), b"{c}:b".to_vec()];
        assert_eq!(sent, want);
    }

    #[tokio::test]
    async fn in_ttl_mode_new_namespaces_leave_the_tier_in_use() {
        use crate::tier::hot::settings::{Coherence, HotSettings};
        let rule = |p: &str| RuleSettings {
            pattern: p.into(),
            ttl: Duration::from_secs(1),
            max_value_size: 1,
        };
        let settings = HotSettings {
            max_bytes: 1 << 20,
            lru: false,
            coherence: Coherence::Ttl,
            channel: "c".into(),
            broadcast_batching: true,
            broadcast_packed: false,
            broadcast_relay: false,
            channel_per_prefix: true,
            rules: vec![rule("a:*")],
        };
        let registry = prometheus::Registry::new();
        let t = crate::tier::hot::HotTier::new(
            &settings,
            Arc::new(crate::metrics::Metrics::new(registry)),
        );
        // What `coherence::spawn` does in ttl mode; nothing listens for a resubscription.
        t.set_coherent(true).await;
        t.replace_rules(&[rule("b:*")]).await;
        assert!(
            t.is_coherent(),
            "no channel to subscribe to again: the tier stays in use"
        );
    }
}
