//! PostgreSQL backend.
//!
//! Locks: `pg_try_advisory_xact_lock` right after `BEGIN` for transactional
//! rules (released by COMMIT/ROLLBACK, safe behind PgBouncer in transaction
//! mode), `pg_try_advisory_lock` on the connection for batch and autocommit
//! rules. Both use the same key, so the two kinds exclude each other.
//! Timeouts: `statement_timeout` (and `idle_in_transaction_session_timeout`,
//! so a stalled dbjanitor cannot hold row locks) with `SET LOCAL` inside the
//! transaction.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgValueFormat};
use sqlx::{AssertSqlSafe, Column, Connection, Executor, Row, SqlSafeStr, ValueRef};

use super::{
    CLOSE_TIMEOUT, ConnectSettings, DatabaseConfig, DbError, Detection, Session, connect_error,
    millis, postgres_lock_key, sample, sql_error,
};
use crate::outcome::Sample;
use crate::secret::SecretUrl;

/// How often a waiting lock is retried.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// One pinned PostgreSQL connection.
pub struct PgSession {
    conn: PgConnection,
    url: SecretUrl,
    /// `server_version_num`, e.g. 150019.
    version: u32,
}

/// First version with `client_connection_check_interval`.
const PG_CONNECTION_CHECK: u32 = 140_000;

impl PgSession {
    /// Connects with the URL of `db`; the error text never holds the password.
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(db.url.expose())
            .map_err(|e| connect_error(&db.url, &e))?
            .application_name("dbjanitor");
        let conn = tokio::time::timeout(settings.timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| DbError::Connect(format!("timed out after {:?}", settings.timeout)))?
            .map_err(|e| connect_error(&db.url, &e))?;
        let mut session = Self {
            conn,
            url: db.url.clone(),
            version: 0,
        };
        let row = session
            .conn
            .fetch_one(sqlx::raw_sql("SHOW server_version_num"))
            .await
            .map_err(|e| sql_error(&session.url, &e))?;
        session.version = text_cell(&row, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(session)
    }

    async fn run(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn
            .execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(|_| ())
            .map_err(|e| sql_error(&self.url, &e))
    }

    async fn query_bool(&mut self, sql: String) -> Result<bool, DbError> {
        let row = self
            .conn
            .fetch_one(sqlx::raw_sql(AssertSqlSafe(sql)))
            .await
            .map_err(|e| sql_error(&self.url, &e))?;
        let text = text_cell(&row, 0).unwrap_or_default();
        Ok(text == "t")
    }

    /// Retries `try_sql` until it returns true or `wait` has passed.
    async fn try_lock(&mut self, try_sql: String, wait: Duration) -> Result<bool, DbError> {
        let deadline = Instant::now() + wait;
        loop {
            if self.query_bool(try_sql.clone()).await? {
                return Ok(true);
            }
            if Instant::now() + LOCK_POLL > deadline {
                return Ok(false);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

fn text_cell(row: &sqlx::postgres::PgRow, i: usize) -> Option<String> {
    let value = row.try_get_raw(i).ok()?;
    if value.is_null() {
        return None;
    }
    match value.format() {
        PgValueFormat::Text => value.as_str().ok().map(sample::clip),
        PgValueFormat::Binary => value.as_bytes().ok().map(sample::bytes),
    }
}

impl Session for PgSession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        self.run("BEGIN").await?;
        let key = postgres_lock_key(lock_name);
        let locked = self
            .try_lock(format!("SELECT pg_try_advisory_xact_lock({key})"), wait)
            .await?;
        if !locked {
            self.run("ROLLBACK").await?;
        }
        Ok(locked)
    }

    async fn finish_locked(&mut self, commit: bool, _lock_name: &str) -> Result<(), DbError> {
        // The transaction-level lock ends with the transaction.
        self.run(if commit { "COMMIT" } else { "ROLLBACK" }).await
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        let key = postgres_lock_key(lock_name);
        self.try_lock(format!("SELECT pg_try_advisory_lock({key})"), wait)
            .await
    }

    async fn unlock_session(&mut self, lock_name: &str) -> Result<(), DbError> {
        let key = postgres_lock_key(lock_name);
        self.query_bool(format!("SELECT pg_advisory_unlock({key})"))
            .await
            .map(|_| ())
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        self.run("BEGIN").await
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.run("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.run("ROLLBACK").await
    }

    async fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        in_transaction: bool,
    ) -> Result<(), DbError> {
        let ms = millis(timeout);
        let scope = if in_transaction { "SET LOCAL" } else { "SET" };
        // Idle-in-transaction gets a longer leash: the engine may pause between statements.
        let idle = ms.saturating_mul(2);
        let mut sql = format!(
            "{scope} statement_timeout = {ms}; {scope} idle_in_transaction_session_timeout = {idle}"
        );
        if self.version >= PG_CONNECTION_CHECK {
            // A killed dbjanitor is noticed within a second even mid-statement, so its
            // locks do not outlive it until the statement ends.
            sql.push_str(&format!(
                "; {scope} client_connection_check_interval = 1000"
            ));
        }
        self.run(&sql).await
    }

    async fn detect(&mut self, sql: &str, keep: usize) -> Result<Detection, DbError> {
        let mut detection = Detection::default();
        let mut rows = self
            .conn
            .fetch(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())));
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| sql_error(&self.url, &e))?
        {
            if detection.count == 0 {
                detection.sample.columns =
                    row.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            if detection.sample.rows.len() < keep.min(Sample::MAX_ROWS) {
                detection
                    .sample
                    .rows
                    .push((0..row.len()).map(|i| text_cell(&row, i)).collect());
            }
            detection.count += 1;
        }
        Ok(detection)
    }

    async fn execute(&mut self, sql: &str) -> Result<u64, DbError> {
        self.conn
            .execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| sql_error(&self.url, &e))
    }

    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        (&mut self.conn)
            .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .map(|_| ())
            .map_err(|e| sql_error(&self.url, &e))
    }

    async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conn.close()).await;
    }

    async fn abort(self) {
        // Dropping closes the socket at once; `close_hard` can wait on a TLS
        // shutdown after an error, which is the last thing an abort should do.
        drop(self.conn);
    }
}
