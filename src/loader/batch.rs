//! Loading several keys of one mapping together: an MGET's misses, a pipeline's, a warm-up
//! batch. Leases in one pipeline, one `= ANY($1)` query, fills in one pipeline.

use super::lease::{call, counted_fill, from_reply, lease_key, new_token, release_command};
use super::{encode, params, single_error, LoadError, Loaded, Loader, Mapping};
use crate::protocol::request::encode_command;
use crate::protocol::scan::integer;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::types::Type;

impl Loader {
    /// Whether `m` can load several keys in one query (prepared once, remembered).
    pub(super) async fn batch_usable(&self, m: &Mapping) -> bool {
        let Some(sql) = &m.batch_sql else {
            return false;
        };
        *m.batch_ok
            .get_or_init(|| async {
                match self.db.prepare(sql).await {
                    Ok(t) if t.len() == 1 && matches!(t[0].kind(), tokio_postgres::types::Kind::Array(member) if params::supported(member)) => true,
                    Ok(_) => false,
                    Err(e) => {
                        tracing::info!(mapping = %m.name, error = %e, "batch query not usable; MGET loads keys of this mapping one by one");
                        false
                    }
                }
            })
            .await
    }

    /// Loads several keys of one mapping (an MGET's misses): leases taken in one pipeline, one
    /// query for the keys whose lease this sidecar got, their fills in one pipeline; keys leased
    /// by another sidecar wait for its fill as single loads do. Results are in `items` order.
    /// `begun` is the latest ticket of the reads the keys are loaded for (see `flight`).
    pub async fn load_many(
        &self,
        m: &Arc<Mapping>,
        items: &[(Bytes, Vec<Bytes>)],
        upstream_down: bool,
        begun: u64,
    ) -> Vec<Result<Loaded, LoadError>> {
        let upstream = match &self.upstream {
            Some(u) if items.len() >= 2 && !upstream_down && self.batch_usable(m).await => u,
            _ => return self.load_each(m, items, upstream_down, begun).await,
        };
        // Convert every capture first: a bad one fails only its own key.
        let mut results: Vec<Option<Result<Loaded, LoadError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut params = Vec::new();
        for (i, (_, caps)) in items.iter().enumerate() {
            match self.params(m, caps).await {
                Ok(mut p) if p.len() == 1 => params.push((i, p.remove(0))),
                Ok(_) => results[i] = Some(single_error(m, "a batch needs exactly one capture")),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let token = new_token();
        // As for one key: each lease taken is followed by a read of the key, which sees any fill
        // made before the lease was free.
        let mut acquire = Vec::new();
        for (i, _) in &params {
            acquire.extend_from_slice(&self.take_lease(m, &items[*i].0, &token));
        }
        let Ok(replies) = call(upstream, Bytes::from(acquire), 2 * params.len() as u32).await
        else {
            return self.load_each(m, items, true, begun).await;
        };
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let mut release = Vec::new();
        let mut released = 0u32;
        for ((i, param), pair) in params.into_iter().zip(replies.chunks(2)) {
            match (pair[0].starts_with(b"+OK"), from_reply(&pair[1])) {
                (true, Some(found)) => {
                    release.extend_from_slice(&encode_command(&[
                        &b"DEL"[..],
                        &lease_key(&items[i].0),
                    ]));
                    released += 1;
                    results[i] = Some(Ok(found));
                }
                (true, None) => mine.push(((i, param), ())),
                (false, _) => theirs.push(((i, param), ())),
            }
        }
        if released > 0 {
            let _ = call(upstream, Bytes::from(release), released).await;
        }
        if !mine.is_empty() {
            m.metrics.queries.inc();
            let started = Instant::now();
            let values: Vec<params::Param> = mine.iter().map(|((_, p), _)| p.clone()).collect();
            let rows = self
                .db
                .batch_rows(m.batch_sql.as_deref().unwrap_or_default(), values)
                .await;
            m.metrics.latency.observe(started.elapsed().as_secs_f64());
            match rows {
                Err(err) => {
                    m.metrics.error(err.kind());
                    let release: Vec<u8> = mine
                        .iter()
                        .flat_map(|((i, _), _)| release_command(&items[*i].0, &token).to_vec())
                        .collect();
                    let _ = call(upstream, Bytes::from(release), mine.len() as u32).await;
                    for ((i, _), _) in &mine {
                        results[*i] = Some(Err(LoadError::Db {
                            mapping: m.name.clone(),
                            err: err.clone(),
                        }));
                    }
                }
                Ok(rows) => {
                    m.metrics.rows.inc_by(rows.len() as u64);
                    let ty = m
                        .types
                        .get()
                        .and_then(|t| t.first().cloned())
                        .unwrap_or(Type::TEXT);
                    let mut fills = Vec::new();
                    let mut filled_keys = Vec::new();
                    for ((i, param), _) in &mine {
                        // Rows are matched to keys by value (the column as Postgres renders it,
                        // converted back), so "042" and "42" of an int key are the same key.
                        let own: Vec<String> = rows
                            .iter()
                            .filter(|(k, _)| {
                                params::convert(&ty, k.as_bytes()).ok().as_ref() == Some(param)
                            })
                            .map(|(_, json)| json.clone())
                            .collect();
                        let loaded =
                            encode::encode(m.shape, &own).map_err(|detail| LoadError::Encode {
                                mapping: m.name.clone(),
                                detail,
                            });
                        if let Ok(l) = &loaded {
                            fills.push(self.fill_command(m, &items[*i].0, &token, l));
                            filled_keys.push(&items[*i].0);
                        }
                        results[*i] = Some(loaded);
                    }
                    let n = fills.len() as u32;
                    let replies = call(upstream, Bytes::from(fills.concat()), n)
                        .await
                        .unwrap_or_default();
                    for (i, key) in filled_keys.into_iter().enumerate() {
                        if !counted_fill(m, replies.get(i).and_then(|r| integer(r))) {
                            self.forget(key);
                        }
                    }
                }
            }
        }
        for ((i, _), _) in theirs {
            let (k, caps) = &items[i];
            results[i] = Some(self.load(m, k, caps, upstream_down, begun).await);
        }
        let mut out = Vec::with_capacity(items.len());
        for ((key, _), r) in items.iter().zip(results) {
            let r = r.unwrap_or_else(|| single_error(m, "not loaded"));
            out.push(self.or_stale(m, key, r).await);
        }
        out
    }

    pub(super) async fn load_each(
        &self,
        m: &Arc<Mapping>,
        items: &[(Bytes, Vec<Bytes>)],
        upstream_down: bool,
        begun: u64,
    ) -> Vec<Result<Loaded, LoadError>> {
        let mut out = Vec::with_capacity(items.len());
        for (k, c) in items {
            out.push(self.load(m, k, c, upstream_down, begun).await);
        }
        out
    }

    /// Loads every key whose captures `query` returns (one row per key, columns in capture
    /// order), in batches, logging progress. Returns how many keys were loaded.
    pub async fn warm(&self, mapping: &str, query: &str) -> Result<usize, LoadError> {
        let Some(m) = self
            .mappings
            .load()
            .iter()
            .find(|m| m.name == mapping)
            .cloned()
        else {
            return Ok(0);
        };
        let rows = self
            .db
            .rows(&encode::wrap(query), &[], &[])
            .await
            .map_err(|err| LoadError::Db {
                mapping: m.name.clone(),
                err,
            })?;
        let items: Vec<(Bytes, Vec<Bytes>)> = rows
            .iter()
            .filter_map(|row| {
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(row).ok()?;
                let caps: Vec<Bytes> = obj
                    .values()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Bytes::from(s.clone()),
                        other => Bytes::from(other.to_string()),
                    })
                    .collect();
                let refs: Vec<&[u8]> = caps.iter().map(|c| &c[..]).collect();
                Some((Bytes::from(m.pattern.render(&refs)), caps))
            })
            .collect();
        let total = items.len();
        let mut done = 0;
        for chunk in items.chunks(100) {
            let results = self.load_many(&m, chunk, false, self.ticket()).await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
            done += chunk.len();
            tracing::info!(mapping = %m.name, done, total, "warming");
        }
        Ok(total)
    }
}
