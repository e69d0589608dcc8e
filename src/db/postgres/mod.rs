//! PostgreSQL backend, on tokio-postgres (see `pgconn` for why not sqlx).
//!
//! **Session settings.** A session starts with the server's, database's and
//! role's defaults, exactly like `psql` (`ALTER DATABASE ... SET timezone`
//! holds). dbjanitor's own limits are set with `SET LOCAL` inside every
//! transaction it opens (`statement_timeout`,
//! `idle_in_transaction_session_timeout`, `client_connection_check_interval`
//! and `tcp_keepalives_*`), so nothing outlives the transaction on a server
//! connection that a pooler hands to someone else. Only while a session-level
//! advisory lock is held (lock kind `advisory`: a direct connection) are the
//! limits also set for the session (with `idle_session_timeout`), because
//! that lock lives between transactions too; the connection is closed at the
//! end of the run.
//!
//! **Locks.** Kind `advisory`: `pg_try_advisory_xact_lock` for transactional
//! rules, polled in a fresh transaction per attempt so that under
//! `repeatable read`/`serializable` the snapshot is taken by the statement
//! that was granted the lock, not before the wait; `pg_try_advisory_lock` on
//! the connection for batch and autocommit rules. Keys:
//! [`super::postgres_schema_lock_key`] (the schema list distinguishes tenants
//! of one database). Kind `lease`: see `lease`. Kind `auto`: a lease when the
//! connection goes through a pooler, see [`behind_pooler`]. The session's side
//! of both is `lock.rs`.
//!
//! **Rule SQL.** Detect runs as a `NO SCROLL` cursor declared through the
//! unnamed extended-protocol statement in a read-only (sub)transaction: the
//! server refuses a second statement, DML, data-modifying CTEs and functions
//! that write. Rows are fetched through the simple protocol, so values come
//! back as text, as `psql` prints them. Fix statements run one at a time
//! through the unnamed statement (the server refuses a second one) and
//! transaction control is refused before it is sent.

mod commit;
mod detect;
mod lock;
mod statements;

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use super::lease::{self, PgLeases};
use super::lock::LockKind;
use super::pgconn::PgConn;
use super::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Detection, Dialect, Executed, Session,
    millis,
};
use crate::sql::first_keyword;
pub(crate) use commit::behind_pooler;
use commit::xact_status;
use lock::Held;
use statements::{is_transaction_control, modifies_data};

/// First version with `client_connection_check_interval` and `idle_session_timeout`.
const PG_14: u32 = 140_000;

/// First version with `pg_current_xact_id` and `pg_xact_status` on xid8.
const PG_13: u32 = 130_000;

/// Rows fetched per FETCH when detect reads everything.
const FETCH_CHUNK: u64 = 10_000;

/// A detect that may read more rows than this (a fix rule's `max_rows` + 1)
/// is counted by the server instead of streamed (issue 11, third round: a
/// purge of 500 k rows sent its 500 k keys to be counted before the first
/// batch); below it, reading the rows costs less than a second pass.
const SERVER_COUNT_ABOVE: u64 = FETCH_CHUNK;

/// The shortest idle limits, so a slow network is not mistaken for a dead client.
const MIN_IDLE: Duration = Duration::from_secs(10);

/// How long `abort_after_commit` asks while the transaction is "in progress".
const XACT_STATUS_WAIT: Duration = Duration::from_secs(30);

/// One PostgreSQL connection for one run.
pub struct PgSession {
    conn: PgConn,
    /// `server_version_num`, e.g. 150019.
    version: u32,
    /// The rule's statement timeout.
    timeout: Duration,
    /// `advisory` or `lease`, resolved from the config's `auto`.
    kind: LockKind,
    /// `current_schemas(false)`: part of the advisory lock key.
    schemas: Vec<String>,
    in_transaction: bool,
    held: Held,
    /// The transaction id taken right before COMMIT.
    xid: Option<String>,
    /// Whether the last commit attempt sent COMMIT (else it failed before,
    /// e.g. the lease's fencing check, and nothing can have committed).
    commit_sent: bool,
}

impl PgSession {
    /// Connects with the URL of `db`; the error text never holds the password.
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let conn = PgConn::connect(&db.url, "dbjanitor", settings.timeout).await?;
        let info = conn
            .client
            .simple_query(
                "SELECT current_setting('server_version_num'), \
                 array_to_json(current_schemas(false))::text, \
                 host(inet_server_addr()), inet_server_port()::text, current_setting('port')",
            )
            .await
            .map_err(|e| conn.error(&e))?;
        let row = info.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        let cell = |i: usize| row.and_then(|r| r.get(i)).map(str::to_owned);
        let version = cell(0).and_then(|v| v.parse().ok()).unwrap_or(0);
        let schemas: Vec<String> = cell(1)
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        let kind = match db.lock {
            LockKind::Auto => {
                if behind_pooler(&conn, cell(2), cell(3), cell(4)).await {
                    LockKind::Lease
                } else {
                    LockKind::Advisory
                }
            }
            other => other,
        };
        Ok(Self {
            conn,
            version,
            timeout: settings.timeout,
            kind,
            schemas,
            in_transaction: false,
            held: Held::None,
            xid: None,
            commit_sent: false,
        })
    }

    /// Readies the session for the next rule of the same run on this
    /// database; `Ok(false)` when it must not be reused. What a run leaves on
    /// the session by design: nothing in a transaction (the engine ended it;
    /// checked here), no lock (released; checked here), and, only after a
    /// session advisory lock, the limits set with `SET`. On a direct
    /// connection (lock kind `advisory`) `DISCARD ALL` returns the session to
    /// how it started (settings, temporary tables, advisory locks, cursors,
    /// prepared statements); through a pooler (kind `lease`) nothing is
    /// session-scoped: limits are `SET LOCAL` and the lease is a row.
    pub(crate) async fn reset(&mut self, settings: &ConnectSettings) -> Result<bool, DbError> {
        if self.in_transaction || !matches!(self.held, Held::None) {
            return Ok(false);
        }
        if self.kind == LockKind::Advisory {
            self.conn.batch("DISCARD ALL").await?;
        }
        self.timeout = settings.timeout;
        self.xid = None;
        self.commit_sent = false;
        Ok(true)
    }

    /// The lock kind in use (after `auto` was resolved).
    #[must_use]
    pub fn lock_kind(&self) -> LockKind {
        self.kind
    }

    /// How long the server keeps an idle session or transaction of a client
    /// that stopped talking.
    fn idle_limit(&self) -> Duration {
        (self.timeout * 2).max(MIN_IDLE)
    }

    /// `SET` (session) or `SET LOCAL` (transaction) of every limit.
    fn limits(&self, scope: &str) -> String {
        let ms = millis(self.timeout);
        let idle = millis(self.idle_limit());
        let mut sql = format!(
            "{scope} statement_timeout = {ms}; {scope} idle_in_transaction_session_timeout = {idle}; \
             {scope} tcp_keepalives_idle = {}; {scope} tcp_keepalives_interval = {}; {scope} tcp_keepalives_count = {}",
            super::pgconn::KEEPALIVE_IDLE.as_secs(),
            super::pgconn::KEEPALIVE_INTERVAL.as_secs(),
            super::pgconn::KEEPALIVE_RETRIES
        );
        if self.version >= PG_14 {
            sql.push_str(&format!(
                "; {scope} client_connection_check_interval = 1000"
            ));
            if scope == "SET" {
                sql.push_str(&format!("; SET idle_session_timeout = {idle}"));
            }
        }
        sql
    }

    /// `BEGIN` and the transaction's limits, in one round trip.
    async fn open_transaction(&mut self, extra: &str) -> Result<Option<String>, DbError> {
        let sql = format!("BEGIN; {}{extra}", self.limits("SET LOCAL"));
        let value = self.conn.text(&sql).await?;
        self.in_transaction = true;
        Ok(value)
    }

    async fn end_transaction(&mut self, commit: bool) -> Result<(), DbError> {
        self.in_transaction = false;
        self.conn
            .batch(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
    }

    /// Fencing (a lease must still be ours), the xid, then COMMIT.
    async fn fenced_commit(&mut self) -> Result<(), DbError> {
        self.xid = None;
        self.commit_sent = false;
        let xid_sql = if self.version >= PG_13 {
            "SELECT pg_current_xact_id_if_assigned()::text"
        } else {
            "SELECT txid_current_if_assigned()::text"
        };
        self.xid = self.conn.text(xid_sql).await?;
        if let Held::Lease(held) = &self.held {
            lease::fence(&mut PgLeases(&self.conn), held).await?;
        }
        self.commit_sent = true;
        self.end_transaction(true).await
    }
}

impl Session for PgSession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        if self.kind == LockKind::Lease {
            if !self.take_lease(lock_name, wait).await? {
                return Ok(false);
            }
            self.open_transaction("").await?;
            return Ok(true);
        }
        let try_sql = format!("SELECT pg_try_advisory_xact_lock({})", self.key(lock_name));
        self.poll_lock(&try_sql, wait, true).await
    }

    async fn finish_locked(&mut self, commit: bool, _lock_name: &str) -> Result<(), DbError> {
        // A transaction-level advisory lock ends with the transaction.
        if commit {
            self.fenced_commit().await?;
        } else {
            self.end_transaction(false).await?;
        }
        self.drop_lease().await
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        if self.kind == LockKind::Lease {
            return self.take_lease(lock_name, wait).await;
        }
        let key = self.key(lock_name);
        let granted = self
            .poll_lock(&format!("SELECT pg_try_advisory_lock({key})"), wait, false)
            .await?;
        if granted {
            self.held = Held::Advisory(key);
            // A session lock lives between transactions: bound the session
            // too (idle_session_timeout, keepalives), not only transactions.
            self.conn.batch(&self.limits("SET")).await?;
        }
        Ok(granted)
    }

    async fn unlock_session(&mut self, _lock_name: &str) -> Result<(), DbError> {
        match std::mem::replace(&mut self.held, Held::None) {
            Held::Advisory(key) => {
                self.conn
                    .batch(&format!("SELECT pg_advisory_unlock({key})"))
                    .await
            }
            Held::Lease(held) => lease::release(&mut PgLeases(&self.conn), &held).await,
            Held::None => Ok(()),
        }
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        if let Held::Lease(held) = &self.held {
            lease::renew(&mut PgLeases(&self.conn), held).await?;
        }
        self.open_transaction("").await.map(|_| ())
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.fenced_commit().await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.end_transaction(false).await
    }

    async fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        in_transaction: bool,
    ) -> Result<(), DbError> {
        self.timeout = timeout;
        if in_transaction && self.in_transaction {
            self.conn.batch(&self.limits("SET LOCAL")).await
        } else if matches!(self.held, Held::Advisory(_)) {
            self.conn.batch(&self.limits("SET")).await
        } else {
            // Behind a pooler: applied with SET LOCAL in every transaction.
            Ok(())
        }
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        let outer = !self.in_transaction;
        if outer {
            self.conn
                .batch(&format!("BEGIN READ ONLY; {}", self.limits("SET LOCAL")))
                .await?;
        } else {
            self.conn
                .batch("SAVEPOINT dbjanitor_detect; SET LOCAL transaction_read_only = on")
                .await?;
        }
        let detection = self.read_cursor(sql, keep, limit).await?;
        if outer {
            self.conn.batch("ROLLBACK").await?;
        } else {
            self.conn
                .batch("ROLLBACK TO SAVEPOINT dbjanitor_detect; RELEASE SAVEPOINT dbjanitor_detect")
                .await?;
        }
        Ok(detection)
    }

    async fn execute(&mut self, sql: &str) -> Result<Executed, DbError> {
        if is_transaction_control(sql) {
            return Err(DbError::Unsafe(format!(
                "a fix statement may not control transactions ({}): dbjanitor owns the transaction",
                first_keyword(sql, Dialect::Postgres)
            )));
        }
        if !self.in_transaction
            && let Held::Lease(held) = &self.held
        {
            // Autocommit: each statement commits on its own; check the lease first.
            lease::renew(&mut PgLeases(&self.conn), held).await?;
        }
        let rows = self.conn.execute_one(sql, &[]).await?;
        Ok(Executed {
            rows,
            modifies_data: modifies_data(sql),
        })
    }

    async fn own(&mut self, sql: &str) -> Result<super::Own, DbError> {
        let messages = self
            .conn
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.conn.error(&e))?;
        let mut own = super::Own::default();
        for message in messages {
            match message {
                SimpleQueryMessage::Row(row) => own.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                SimpleQueryMessage::CommandComplete(n) => own.rows_affected = n,
                _ => {}
            }
        }
        Ok(own)
    }

    /// `check --connect` without named statements: a detect is declared as
    /// the cursor [`Session::detect`] would read (never fetched), a fix
    /// statement is planned with `EXPLAIN` (never executed), both through the
    /// unnamed statement inside `BEGIN READ ONLY ... ROLLBACK`. Utility
    /// statements (DDL, `SET`, ...) have no plan: PostgreSQL cannot check
    /// them without running them, so they pass unchecked.
    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        if is_transaction_control(sql) {
            return Err(DbError::Unsafe(format!(
                "a rule statement may not control transactions ({})",
                first_keyword(sql, Dialect::Postgres)
            )));
        }
        let keyword = first_keyword(sql, Dialect::Postgres);
        let plannable = matches!(
            keyword.as_str(),
            "SELECT" | "WITH" | "VALUES" | "TABLE" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"
        );
        if !plannable {
            return Ok(());
        }
        self.conn
            .batch(&format!("BEGIN READ ONLY; {}", self.limits("SET LOCAL")))
            .await?;
        let result = self.conn.execute_one(&format!("EXPLAIN {sql}"), &[]).await;
        let _ = self.conn.batch("ROLLBACK").await;
        result.map(|_| ())
    }

    async fn close(self) {
        let mut this = self;
        if matches!(this.held, Held::Lease(_)) {
            let _ = this.drop_lease().await;
        }
        this.conn.close().await;
    }

    async fn abort(self) {
        self.conn.abort();
    }

    async fn abort_after_commit(self) -> CommitOutcome {
        let url = self.conn.url.clone();
        let version = self.version;
        let xid = self.xid.clone();
        let commit_sent = self.commit_sent;
        let bound = self.abandon_bound().min(XACT_STATUS_WAIT);
        self.conn.abort();
        match (xid, commit_sent) {
            // Asked even when COMMIT was never sent (the fencing check
            // failed): the server then confirms the rollback.
            (Some(xid), _) => xact_status(&url, &xid, version, bound).await,
            // Nothing written and COMMIT never sent: nothing to commit.
            (None, false) => CommitOutcome::RolledBack,
            (None, true) => CommitOutcome::Unknown(
                "the transaction had no transaction id (it had written nothing), so the server cannot say".to_owned(),
            ),
        }
    }

    fn abandon_bound(&self) -> Duration {
        // A statement runs at most `timeout`; then the transaction (or, on
        // 14+, the idle session) ends after the idle limit.
        let bound = self.timeout + self.idle_limit() + Duration::from_secs(1);
        match (&self.held, self.version >= PG_14) {
            (Held::Lease(held), _) => bound.max(held.ttl),
            (_, true) => bound,
            // Before 14: no idle_session_timeout; TCP keepalives only.
            (_, false) => {
                bound
                    + super::pgconn::KEEPALIVE_IDLE
                    + super::pgconn::KEEPALIVE_INTERVAL * super::pgconn::KEEPALIVE_RETRIES
            }
        }
    }
}
