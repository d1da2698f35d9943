//! The `[[cache]]` rules in force, swapped whole when the configuration is reloaded.

use super::channels::Subscriptions;
use super::settings::RuleSettings;
use super::{coherence, HotTier, Rule};
use crate::metrics::InvalidationSource;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

pub(super) fn compile(rules: &[RuleSettings]) -> Vec<Arc<Rule>> {
    rules
        .iter()
        .map(|r| Arc::new(Rule::from_settings(r)))
        .collect()
}

impl HotTier {
    /// Puts `rules` in force and empties the tier, so nothing cached under an old rule (its
    /// pattern, its TTL) is served once this returns; fills planned under the old rules are
    /// refused by the flush epoch. Where CLIENT TRACKING runs and the new rules need other
    /// prefixes, the tier is bypassed from before the swap until the coherence connection
    /// tracks them: a key of a new prefix is never served while its writes go unheard.
    ///
    /// With `hot.channel_per_prefix` in broadcast mode, the same holds for the channels: where
    /// the new rules need other namespaces' channels (or the pattern, or no longer), the tier is
    /// bypassed and the coherence connection subscribes again.
    pub async fn replace_rules(&self, rules: &[RuleSettings]) {
        let new = compile(rules);
        let tracking = self.tracking.load(SeqCst);
        let restart = if self.per_prefix && !tracking {
            Subscriptions::of(&self.rules.load()) != Subscriptions::of(&new)
        } else {
            coherence::prefixes(&self.rules.load()) != coherence::prefixes(&new)
        };
        if restart && (tracking || self.per_prefix) {
            self.upstream_ok.store(false, SeqCst);
            self.update_coherent();
        }
        self.rules.store(Arc::new(new));
        self.invalidate_all(InvalidationSource::Flush).await;
        if restart {
            self.retrack.notify_one();
        }
    }
}
