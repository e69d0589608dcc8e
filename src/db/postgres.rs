//! PostgreSQL backend.
//!
//! Locks: `pg_try_advisory_xact_lock` right after `BEGIN` for transactional
//! rules (released by COMMIT/ROLLBACK, safe behind PgBouncer in transaction
//! mode), `pg_try_advisory_lock` on the connection for batch and autocommit
//! rules. Both use the same key, so the two kinds exclude each other.
//! Timeouts: `statement_timeout` (and `idle_in_transaction_session_timeout`,
//! so a stalled dbjanitor cannot hold row locks) with `SET LOCAL` inside the
//! transaction; on PostgreSQL 14+ also `client_connection_check_interval`, so
//! a killed dbjanitor is noticed mid-statement and its locks freed.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgQueryResult, PgRow, PgValueFormat, Postgres,
};
use sqlx::{Connection, Row, ValueRef};

use super::text::{TextConn, TextDatabase};
use super::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Detection, Dialect, Executed, Session,
    connect_error, millis, postgres_lock_key, refuse_transaction_end, sample,
};

/// How often a waiting lock is retried.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// First version with `client_connection_check_interval`.
const PG_CONNECTION_CHECK: u32 = 140_000;

impl TextDatabase for Postgres {
    fn cell(row: &PgRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        match value.format() {
            PgValueFormat::Text => value.as_str().ok().map(sample::clip),
            PgValueFormat::Binary => value.as_bytes().ok().map(sample::bytes),
        }
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// One pinned PostgreSQL connection.
pub struct PgSession {
    text: TextConn<Postgres>,
    /// `server_version_num`, e.g. 150019.
    version: u32,
}

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
        let mut text = TextConn {
            conn,
            url: db.url.clone(),
        };
        let version = text
            .fetch_text("SHOW server_version_num")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self { text, version })
    }

    /// Retries `try_sql` until it returns true or `wait` has passed.
    async fn try_lock(&mut self, try_sql: &str, wait: Duration) -> Result<bool, DbError> {
        let deadline = Instant::now() + wait;
        loop {
            if self.text.fetch_text(try_sql).await?.as_deref() == Some("t") {
                return Ok(true);
            }
            if Instant::now() + LOCK_POLL > deadline {
                return Ok(false);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

impl Session for PgSession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        self.text.run("BEGIN").await?;
        let key = postgres_lock_key(lock_name);
        let locked = self
            .try_lock(&format!("SELECT pg_try_advisory_xact_lock({key})"), wait)
            .await?;
        if !locked {
            self.text.run("ROLLBACK").await?;
        }
        Ok(locked)
    }

    async fn finish_locked(&mut self, commit: bool, _lock_name: &str) -> Result<(), DbError> {
        // The transaction-level lock ends with the transaction.
        self.text
            .run(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        let key = postgres_lock_key(lock_name);
        self.try_lock(&format!("SELECT pg_try_advisory_lock({key})"), wait)
            .await
    }

    async fn unlock_session(&mut self, lock_name: &str) -> Result<(), DbError> {
        let key = postgres_lock_key(lock_name);
        self.text
            .run(&format!("SELECT pg_advisory_unlock({key})"))
            .await
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        self.text.run("BEGIN").await
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.text.run("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.text.run("ROLLBACK").await
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
            sql.push_str(&format!(
                "; {scope} client_connection_check_interval = 1000"
            ));
        }
        self.text.run(&sql).await
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        // Interim (sqlx): the tokio-postgres backend makes the server check read-only.
        if !crate::sql::is_query(sql, Dialect::Postgres) {
            return Err(DbError::Unsafe(
                "detect is not a query (SELECT, WITH ... SELECT, VALUES, TABLE); it was not run"
                    .to_owned(),
            ));
        }
        self.text.detect(sql, keep, limit).await
    }

    async fn execute(&mut self, sql: &str) -> Result<Executed, DbError> {
        refuse_transaction_end(sql, Dialect::Postgres, false)?;
        let rows = self.text.execute(sql).await?;
        Ok(Executed {
            rows,
            modifies_data: crate::sql::modifies_data(sql, Dialect::Postgres),
        })
    }

    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        self.text.prepare(sql).await
    }

    async fn close(self) {
        self.text.close().await;
    }

    async fn abort(self) {
        self.text.abort();
    }

    async fn abort_after_commit(self) -> CommitOutcome {
        self.text.abort();
        CommitOutcome::Unknown(
            "the COMMIT reply was lost and this backend does not ask the server afterwards"
                .to_owned(),
        )
    }

    fn abandon_bound(&self) -> Duration {
        // Interim and conservative: a session lock on a vanished connection lasts
        // until the server's TCP keepalive gives up (Linux default 2 h + 9 × 75 s).
        ABANDON_BOUND
    }
}

/// The server's default TCP keepalive: 7200 s idle, then 9 probes 75 s apart.
const ABANDON_BOUND: Duration = Duration::from_secs(7200 + 9 * 75);
