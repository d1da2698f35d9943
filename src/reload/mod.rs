//! Live config reload: SIGHUP, or a change of the config file's content, re-runs the loading
//! done at start (file + `CACHESIDE_*` env + flags, validated, mapping queries prepared). The
//! `[[cache]]` rules and the `[[mapping]]`s are swapped in place; clients stay connected and no
//! request fails. Settings read once at start are named in a warning and left as they are. An
//! invalid config is rejected whole, with an error log line, and the running one stays.
//!
//! A mapping whose query, key pattern, shape or batch query changed, or that is gone, must not
//! keep serving what it filled: its keys are flushed from Redis and the hot tier right after
//! the swap, and again once no load holds the old mapping any more (loads that resolved it
//! before the swap may fill after the first flush).

mod diff;
pub mod watch;

use crate::config::{Config, ConfigError, MappingConfig, Validated};
use crate::loader::{DbError, Loader, Mapping};
use crate::metrics::reload::ReloadMetrics;
use crate::metrics::{InvalidationSource, Metrics};
use crate::strategy::behind::BehindSettings;
use crate::tier::hot::HotTier;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the second flush of a changed mapping waits for its loads to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Re-runs the start-up loading.
pub type LoadFn = Box<dyn Fn() -> Result<Validated, ConfigError> + Send + Sync>;

/// Where a reload reads its config from.
pub struct Source {
    pub load: LoadFn,
    /// The config file: its directory is watched. `None`: SIGHUP only.
    pub file: Option<PathBuf>,
}

/// Applies reloads to the running components.
pub struct Reloader {
    load: LoadFn,
    /// The config the process started with: what the restart-only settings still are.
    started: Config,
    started_behind: Vec<BehindSettings>,
    /// The `[[cache]]` and `[[mapping]]` entries in force.
    cache: Vec<crate::config::CacheRule>,
    mappings: Vec<MappingConfig>,
    hot: Option<Arc<HotTier>>,
    loader: Option<Arc<Loader>>,
    metrics: Arc<Metrics>,
    counts: ReloadMetrics,
}

/// Whether a change of a mapping can change the values it fills.
fn fills_differ(a: &MappingConfig, b: &MappingConfig) -> bool {
    a.key != b.key || a.query != b.query || a.shape != b.shape || a.batch_query != b.batch_query
}

impl Reloader {
    pub fn new(
        load: LoadFn,
        started: &Validated,
        hot: Option<Arc<HotTier>>,
        loader: Option<Arc<Loader>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let counts = ReloadMetrics::new(metrics.registry());
        Self {
            load,
            started: started.config.clone(),
            started_behind: started.write_behind.clone(),
            cache: started.config.cache.clone(),
            mappings: started.config.mapping.clone(),
            hot,
            loader,
            metrics,
            counts,
        }
    }

    /// Loads the config again and applies what can change live. `why`: what asked for it.
    pub async fn reload(&mut self, why: &str) {
        let new = match (self.load)() {
            Ok(v) => v,
            Err(e) => return self.reject(why, &e.to_string()),
        };
        let mut restart = diff::needs_restart(
            &self.started,
            &new.config,
            &self.started_behind,
            &new.write_behind,
        );
        let rules_changed = new.config.cache != self.cache;
        let rules = match &self.hot {
            Some(_) if rules_changed && new.hot.rules.is_empty() => {
                restart.push("cache (removing every rule turns the hot tier off)".into());
                None
            }
            Some(_) if rules_changed => Some(new.hot.rules.clone()),
            None if rules_changed && !new.hot.rules.is_empty() => {
                restart.push("cache (the hot tier is off: rules take effect at start)".into());
                None
            }
            _ => None,
        };
        let mut swap = None;
        if new.config.mapping != self.mappings {
            match &self.loader {
                Some(loader) => match self.compile(loader, &new).await {
                    Ok(s) => swap = Some(s),
                    Err(e) => return self.reject(why, &e),
                },
                None => restart
                    .push("mapping (read-through is off: mappings take effect at start)".into()),
            }
        }
        // Valid: from here on nothing is rejected.
        if let (Some(hot), Some(rules)) = (&self.hot, &rules) {
            hot.replace_rules(rules).await;
            self.cache = new.config.cache.clone();
        }
        let mut flushed = Vec::new();
        if let (Some(loader), Some((list, stale))) = (&self.loader, swap) {
            drop(loader.replace_mappings(list));
            self.mappings = new.config.mapping.clone();
            for m in stale {
                flushed.push(m.name.clone());
                self.flush(loader, &m, "swapped").await;
                tokio::spawn(drain(loader.clone(), self.hot.clone(), m));
            }
        }
        if restart.is_empty() {
            self.counts.restart_pending.set(0);
        } else {
            self.counts.restart_pending.set(1);
            tracing::warn!(settings = %restart.join(", "), "config reload: these settings changed and apply only after a restart; they are unchanged");
        }
        self.counts.ok.inc();
        self.counts.last_success.set(1);
        tracing::info!(
            trigger = why,
            cache_rules_changed = rules.is_some(),
            rules = self.cache.len(),
            mappings = self.mappings.len(),
            flushed = %flushed.join(","),
            "config reloaded"
        );
    }

    fn reject(&self, why: &str, error: &str) {
        self.counts.error.inc();
        self.counts.last_success.set(0);
        tracing::error!(
            trigger = why,
            error,
            "config reload rejected; the running config stays in force"
        );
    }

    /// The new mapping list (unchanged mappings kept as they are, the others compiled and
    /// prepared) and the old mappings whose fills must go. A query Postgres rejects fails the
    /// reload, naming its mapping; an unreachable database does not (as at start).
    async fn compile(
        &self,
        loader: &Loader,
        new: &Validated,
    ) -> Result<(Vec<Arc<Mapping>>, Vec<Arc<Mapping>>), String> {
        let current = loader.mappings();
        let by_name = |name: &str| current.iter().find(|m| m.name == name).cloned();
        let mut list = Vec::with_capacity(new.mappings.len());
        for (i, (s, raw)) in new.mappings.iter().zip(&new.config.mapping).enumerate() {
            let old = self.mappings.iter().find(|o| o.name == raw.name);
            if let (Some(o), Some(m)) = (old, by_name(&raw.name)) {
                if o == raw {
                    list.push(m);
                    continue;
                }
            }
            let m = loader.compile(s.clone(), &self.metrics);
            match loader.prepare(&m).await {
                Ok(()) => {}
                Err(DbError::Query(msg)) => {
                    return Err(format!("mapping[{i}].query: mapping {:?}: {msg}", s.name))
                }
                Err(e) => {
                    tracing::warn!(mapping = s.name, error = %e, "config reload: database not reachable; the mapping will be prepared on first use")
                }
            }
            list.push(m);
        }
        let stale = self
            .mappings
            .iter()
            .filter(|o| {
                new.config
                    .mapping
                    .iter()
                    .find(|n| n.name == o.name)
                    .is_none_or(|n| fills_differ(o, n))
            })
            .filter_map(|o| by_name(&o.name))
            .collect();
        Ok((list, stale))
    }

    async fn flush(&self, loader: &Loader, m: &Mapping, pass: &str) {
        flush(loader, self.hot.as_deref(), m, pass).await;
    }
}

/// Deletes what `m` filled, in Redis and in the hot tier.
async fn flush(loader: &Loader, hot: Option<&HotTier>, m: &Mapping, pass: &str) {
    match loader.flush_keys(m).await {
        Ok(n) => tracing::info!(
            mapping = m.name,
            keys = n,
            pass,
            "config reload: keys of a changed mapping flushed"
        ),
        Err(e) => {
            tracing::warn!(mapping = m.name, error = %e, pass, "config reload: flushing a changed mapping's keys failed; they expire with their TTL")
        }
    }
    if let Some(hot) = hot {
        hot.invalidate_all(InvalidationSource::Flush).await;
    }
}

/// Once no load holds the replaced mapping `m` (this task's reference is the last), flushes
/// its keys again: a load that resolved it before the swap may have filled after the first
/// flush.
async fn drain(loader: Arc<Loader>, hot: Option<Arc<HotTier>>, m: Arc<Mapping>) {
    let started = Instant::now();
    while Arc::strong_count(&m) > 1 && started.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&m) > 1 {
        tracing::warn!(mapping = m.name, "config reload: loads of a replaced mapping still running after {DRAIN_LIMIT:?}; flushing anyway");
    }
    flush(&loader, hot.as_deref(), &m, "after its loads").await;
}
