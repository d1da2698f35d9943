//! The PostgreSQL side of read-through: a bounded pool (deadpool-postgres), statements prepared
//! once (or unnamed, for transaction-mode poolers), a timeout on every query, and a circuit
//! breaker so a dead database is not hammered.

mod txn;
pub use txn::Step;

use super::params::{self, Param};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

/// Why the database did not answer, for the `-ERR` naming the mapping and for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("no database connection within {0:?} (pool timeout)")]
    PoolTimeout(Duration),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("query took longer than {0:?} (statement timeout)")]
    Timeout(Duration),
    #[error("query failed: {0}")]
    Query(String),
    #[error("database unavailable (circuit open; retrying in {0:?})")]
    CircuitOpen(Duration),
}

impl DbError {
    /// The `kind` label of `cacheside_origin_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::PoolTimeout(_) => "pool_timeout",
            DbError::Unavailable(_) => "unavailable",
            DbError::Timeout(_) => "timeout",
            DbError::Query(_) => "query",
            DbError::CircuitOpen(_) => "circuit_open",
        }
    }
}

/// Checked `[postgres]` settings.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub config: tokio_postgres::Config,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub pool_timeout: Duration,
    pub prepared_statements: bool,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub tls: super::tls::PgTls,
    /// `postgres.notify`: the channel to LISTEN on.
    pub notify: Option<String>,
}

/// Opens after `threshold` consecutive failures; after `cooldown` lets one query try again.
struct Breaker {
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    fn check(&self) -> Result<(), DbError> {
        let mut open = self
            .open_until
            .lock()
            .map_err(|_| DbError::Unavailable("breaker poisoned".into()))?;
        match *open {
            Some(until) if Instant::now() < until => {
                Err(DbError::CircuitOpen(until - Instant::now()))
            }
            Some(_) => {
                // Half open: this caller tries; others wait out another cooldown if it fails.
                *open = Some(Instant::now() + self.cooldown);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut open) = self.open_until.lock() {
            *open = None;
        }
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold {
            if let Ok(mut open) = self.open_until.lock() {
                *open = Some(Instant::now() + self.cooldown);
            }
        }
    }
}

pub struct Database {
    pool: Pool,
    settings: DbSettings,
    breaker: Breaker,
}

impl Database {
    pub fn new(settings: DbSettings) -> Result<Self, String> {
        let mut config = settings.config.clone();
        config.connect_timeout(settings.connect_timeout);
        let ms = settings.statement_timeout.as_millis().max(1);
        config.options(format!("-c statement_timeout={ms}"));
        config.ssl_mode(settings.tls.ssl_mode());
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match settings.tls.connector()? {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(mgr)
            .max_size(settings.pool_size)
            .wait_timeout(Some(settings.pool_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let breaker = Breaker {
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            threshold: settings.breaker_failures.max(1),
            cooldown: settings.breaker_cooldown,
        };
        Ok(Self {
            pool,
            settings,
            breaker,
        })
    }

    /// Opens a connection of its own (not from the pool), LISTENs on `channel`, and forwards
    /// every notification's payload to `tx` until the connection ends (`tx` is then dropped).
    /// The returned client keeps the connection open while the caller holds it.
    pub async fn listen(
        &self,
        channel: &str,
        tx: tokio::sync::mpsc::Sender<String>,
    ) -> Result<tokio_postgres::Client, DbError> {
        let mut config = self.settings.config.clone();
        config.connect_timeout(self.settings.connect_timeout);
        config.ssl_mode(self.settings.tls.ssl_mode());
        let down = |e: tokio_postgres::Error| DbError::Unavailable(e.to_string());
        let client = match self
            .settings
            .tls
            .connector()
            .map_err(DbError::Unavailable)?
        {
            Some(tls) => {
                let (client, conn) = config.connect(tls).await.map_err(down)?;
                tokio::spawn(forward(conn, tx));
                client
            }
            None => {
                let (client, conn) = config.connect(NoTls).await.map_err(down)?;
                tokio::spawn(forward(conn, tx));
                client
            }
        };
        // The channel name is checked to be letters, digits and _ (config validation).
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(down)?;
        Ok(client)
    }

    /// Runs statements without parameters (installing triggers).
    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.client()
            .await?
            .batch_execute(sql)
            .await
            .map_err(|e| DbError::Query(e.to_string()))
    }

    /// A pooled connection, for cacheside's own transactions (the write strategies).
    pub(crate) async fn connection(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.client().await
    }

    /// `postgres.prepared_statements`, and the limit for one statement.
    pub(crate) fn statement_settings(&self) -> (bool, Duration) {
        (
            self.settings.prepared_statements,
            self.settings.statement_timeout,
        )
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                DbError::PoolTimeout(self.settings.pool_timeout)
            }
            other => DbError::Unavailable(other.to_string()),
        })
    }

    /// Prepares `sql` and returns its parameter types, each one a type captures convert to;
    /// an error names what Postgres said.
    pub async fn param_types(&self, sql: &str) -> Result<Vec<Type>, DbError> {
        let types = self.prepare(sql).await?;
        for (i, t) in types.iter().enumerate() {
            if !params::supported(t) {
                return Err(DbError::Query(format!(
                    "parameter ${} has type {}, which key captures cannot be converted to",
                    i + 1,
                    t.name()
                )));
            }
        }
        Ok(types)
    }

    /// Prepares `sql` and returns its parameter types as Postgres inferred them.
    pub async fn prepare(&self, sql: &str) -> Result<Vec<Type>, DbError> {
        let client = self.client().await?;
        let stmt = tokio::time::timeout(self.settings.statement_timeout, client.prepare(sql))
            .await
            .map_err(|_| DbError::Timeout(self.settings.statement_timeout))?
            .map_err(|e| DbError::Query(db_message(&e)))?;
        Ok(stmt.params().to_vec())
    }

    /// Runs a batch wrapper with one array parameter; returns (capture text, row JSON) pairs.
    pub async fn batch_rows(
        &self,
        sql: &str,
        values: Vec<Param>,
    ) -> Result<Vec<(String, String)>, DbError> {
        self.breaker.check()?;
        let timeout = self.settings.statement_timeout;
        let work = async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(|e| classify(&e))?;
            let rows = client
                .query(&stmt, &[&values])
                .await
                .map_err(|e| classify(&e))?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
                        r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(|e| DbError::Query(e.to_string()))
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

    /// Runs `sql` (a row_to_json wrapper) with `params`, returning each row's JSON text.
    pub async fn rows(
        &self,
        sql: &str,
        params: &[Param],
        types: &[Type],
    ) -> Result<Vec<String>, DbError> {
        self.breaker.check()?;
        let result = self.run(sql, params, types).await;
        match &result {
            Ok(_) => self.breaker.success(),
            // A bad capture never gets here; a query error is the database's answer, not its
            // absence, so only unavailability and timeouts count against the breaker.
            Err(DbError::Query(_)) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        result
    }

    async fn run(
        &self,
        sql: &str,
        params: &[Param],
        types: &[Type],
    ) -> Result<Vec<String>, DbError> {
        let timeout = self.settings.statement_timeout;
        let work = async {
            let client = self.client().await?;
            let rows = if self.settings.prepared_statements {
                let stmt = client.prepare_cached(sql).await.map_err(|e| classify(&e))?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                client.query(&stmt, &refs).await.map_err(|e| classify(&e))?
            } else {
                // Unnamed statements only: safe behind a transaction-mode pooler.
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .zip(types)
                    .map(|(p, t)| (p as &(dyn ToSql + Sync), t.clone()))
                    .collect();
                client
                    .query_typed(sql, &typed)
                    .await
                    .map_err(|e| classify(&e))?
            };
            rows.iter()
                .map(|r| {
                    r.try_get::<_, Option<String>>(0)
                        .map(Option::unwrap_or_default)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DbError::Query(e.to_string()))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout(timeout)),
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

pub(crate) fn classify(e: &tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        // 57014: query_canceled (statement_timeout fired server side).
        Some(db) if db.code().code() == "57014" => {
            DbError::Query("canceled by statement_timeout".into())
        }
        Some(db) => DbError::Query(db.message().to_string()),
        None if e.is_closed() => DbError::Unavailable("connection closed".into()),
        None => DbError::Unavailable(e.to_string()),
    }
}

/// Drives a LISTEN connection, sending each notification's payload on; ends with it.
async fn forward<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::Sender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                // Full: changes arrive faster than they are applied. Ending the connection
                // makes the listener empty the hot tier and listen afresh, rather than queue
                // without a bound.
                if let Err(e) = tx.try_send(n.payload().to_string()) {
                    if matches!(e, tokio::sync::mpsc::error::TrySendError::Full(_)) {
                        tracing::warn!(
                            "row changes arrive faster than they are applied: listening afresh"
                        );
                    }
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "LISTEN connection ended");
                return;
            }
            None => return,
        }
    }
}
