//! Statements run together in one transaction (a write-through: the old row, the write, the new
//! row), under the same timeout and circuit breaker as reads.

use super::{classify, Database, DbError, Param};
use tokio_postgres::types::{ToSql, Type};

/// One statement of a transaction.
pub struct Step<'a> {
    pub sql: &'a str,
    pub params: &'a [Param],
    /// The parameter types to prepare the statement with.
    pub types: &'a [Type],
    /// Returns rows (their first column as text), or runs for its effect only.
    pub rows: bool,
}

impl Database {
    /// Runs `steps` in order in one transaction and commits; with each step's rows (empty for
    /// steps run for their effect). Any failure rolls everything back.
    pub async fn transaction(&self, steps: &[Step<'_>]) -> Result<Vec<Vec<String>>, DbError> {
        self.breaker.check()?;
        let timeout = self.settings.statement_timeout;
        let prepared = self.settings.prepared_statements;
        let work = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| classify(&e))?;
            let mut out = Vec::with_capacity(steps.len());
            for s in steps {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    s.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = if prepared {
                    let stmt = tx
                        .prepare_typed_cached(s.sql, s.types)
                        .await
                        .map_err(|e| classify(&e))?;
                    if !s.rows {
                        tx.execute(&stmt, &refs).await.map_err(|e| classify(&e))?;
                        out.push(Vec::new());
                        continue;
                    }
                    tx.query(&stmt, &refs).await.map_err(|e| classify(&e))?
                } else {
                    let typed: Vec<(&(dyn ToSql + Sync), Type)> = refs
                        .iter()
                        .zip(s.types)
                        .map(|(p, t)| (*p, t.clone()))
                        .collect();
                    tx.query_typed(s.sql, &typed)
                        .await
                        .map_err(|e| classify(&e))?
                };
                if !s.rows {
                    out.push(Vec::new());
                    continue;
                }
                out.push(
                    rows.iter()
                        .map(|r| {
                            r.try_get::<_, Option<String>>(0)
                                .map(Option::unwrap_or_default)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| DbError::Query(e.to_string()))?,
                );
            }
            tx.commit().await.map_err(|e| classify(&e))?;
            Ok(out)
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout(timeout)),
        };
        match &result {
            Ok(_) | Err(DbError::Query(_)) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        result
    }
}

impl Database {
    /// Prepares `sql` with the given parameter types; an error names what Postgres said.
    pub async fn prepare_typed(&self, sql: &str, types: &[Type]) -> Result<(), DbError> {
        let client = self.client().await?;
        tokio::time::timeout(
            self.settings.statement_timeout,
            client.prepare_typed(sql, types),
        )
        .await
        .map_err(|_| DbError::Timeout(self.settings.statement_timeout))?
        .map_err(|e| DbError::Query(super::db_message(&e)))?;
        Ok(())
    }
}
