//! MySQL and MariaDB backend.
//!
//! A little over 500 lines: the session's transaction states and the detect
//! paths belong together; locks (`lock`) and the server-side count (`count`)
//! are apart.
//!
//! sqlx changes a new connection's `sql_mode` (adds `PIPES_AS_CONCAT`,
//! `NO_ENGINE_SUBSTITUTION`) and sets `time_zone='+00:00'`; both would change
//! what rule SQL means (`||`, `NOW()` against DATETIME columns). They are
//! turned off here, so a rule means what it means in the `mariadb` client.
//!
//! Locks: kind `advisory`: `GET_LOCK` on the pinned connection for every
//! mode (MySQL has no transaction-scoped lock). The lock survives COMMIT and
//! is released explicitly, or by the server when the connection closes —
//! which is why a connection is closed, never reused, after anything goes
//! wrong. Kind `lease`: a row in `dbjanitor_leases` (see `lease_mysql`),
//! renewed before every batch and autocommit statement and fenced right
//! before every COMMIT. Kind `auto`: a lease on a Galera node (`wsrep_on` is
//! ON, where `GET_LOCK` is node-local), else `GET_LOCK`.
//! Timeouts: `max_statement_time` on MariaDB (covers UPDATE/DELETE/DDL), and
//! `max_execution_time` on MySQL (SELECT only); `innodb_lock_wait_timeout` and
//! `lock_wait_timeout` so a blocked row or metadata lock cannot outlast it.

mod count;
mod lock;

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlQueryResult, MySqlRow};
use sqlx::{Decode, Row, TypeInfo, ValueRef};

use super::lease::{self, Lease};
use super::lease_mysql::MySqlLeases;
use super::lock::LockKind;
use super::text::{TextConn, TextDatabase};
use super::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Detection, Dialect, Executed, Session,
    connect_error, millis, refuse_transaction_end, sample,
};
use lock::galera_node;

impl TextDatabase for MySql {
    fn cell(row: &MySqlRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        let type_name = value.type_info().name().to_owned();
        let raw = <&[u8] as Decode<MySql>>::decode(value).ok()?;
        let binary = type_name.contains("BINARY")
            || type_name.contains("BLOB")
            || type_name == "BIT"
            || type_name == "GEOMETRY";
        Some(if binary {
            sample::bytes(raw)
        } else {
            sample::clip(&String::from_utf8_lossy(raw))
        })
    }

    fn full_text(row: &MySqlRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        <&[u8] as Decode<MySql>>::decode(value)
            .ok()
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// The connect options of a session on `url`: sqlx's own session defaults
/// (`PIPES_AS_CONCAT`, `NO_ENGINE_SUBSTITUTION` added to `sql_mode`,
/// `time_zone='+00:00'`) turned off, so SQL means what it means in the
/// `mariadb` client. Public so the integration tests connect the same way.
pub fn session_options(url: &str) -> Result<MySqlConnectOptions, sqlx::Error> {
    Ok(MySqlConnectOptions::from_str(url)?
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(None))
}

/// Every cell of a row as whole text (`None` for NULL), never clipped: how
/// dbjanitor reads its own SQL's results. Public so the integration tests
/// read tables the same way.
#[must_use]
pub fn row_text(row: &MySqlRow) -> Vec<Option<String>> {
    (0..row.len()).map(|i| MySql::full_text(row, i)).collect()
}

/// Where the connection's transaction stands, as far as dbjanitor opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    /// Autocommit: no transaction open.
    None,
    /// `START TRANSACTION READ ONLY`: detect of a transactional rule.
    ReadOnly,
    /// A read-write transaction: the fix's.
    ReadWrite,
}

/// One pinned MySQL/MariaDB connection.
pub struct MySqlSession {
    text: TextConn<MySql>,
    mariadb: bool,
    /// `VERSION()`, for the limits set again when the session is reused.
    version: String,
    schema: String,
    txn: Txn,
    timeout: Duration,
    idle_limit: Duration,
    /// `advisory` or `lease`, resolved from the config's `auto`.
    kind: LockKind,
    /// The lease held, with kind `lease`.
    lease: Option<Lease>,
    /// Whether the last commit attempt sent COMMIT (else it failed before,
    /// at the lease's fencing check, and nothing can have committed).
    commit_sent: bool,
}

/// The most `wait_timeout` accepts (one year), so any rule timeout maps to a valid value.
const MAX_WAIT_TIMEOUT_SECS: u64 = 31_536_000;

/// How long the server lets this connection sit idle (in or out of a
/// transaction) or blocked on a dead socket before it ends it: twice the
/// rule's timeout plus 10 s, in whole seconds. The engine never leaves a
/// connection idle longer than its timeout (long batch pauses are sliced).
fn idle_limit(timeout: Duration) -> Duration {
    let secs = timeout
        .as_secs()
        .saturating_add(u64::from(timeout.subsec_nanos() > 0))
        .saturating_mul(2)
        .saturating_add(10)
        .min(MAX_WAIT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

/// Whether a MariaDB version string is 10.3 or later (`idle_transaction_timeout`).
fn has_idle_transaction_timeout(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (10, 3)
}

impl MySqlSession {
    /// Connects with the URL of `db`, undoing sqlx's session defaults and
    /// setting the server-side limits that end the session soon after
    /// dbjanitor vanished (see [`Session::abandon_bound`]).
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let options = session_options(db.url.expose()).map_err(|e| connect_error(&db.url, &e))?;
        let mut text = TextConn::connect(&db.url, &options, settings.timeout).await?;
        let row = text
            .fetch_one("SELECT VERSION(), COALESCE(DATABASE(), '')")
            .await?;
        let version = MySql::cell(&row, 0).unwrap_or_default();
        let kind = match db.lock {
            LockKind::Auto => {
                if galera_node(&mut text).await? {
                    LockKind::Lease
                } else {
                    LockKind::Advisory
                }
            }
            other => other,
        };
        let mut session = Self {
            mariadb: version.contains("MariaDB"),
            version,
            schema: MySql::cell(&row, 1).unwrap_or_default(),
            text,
            txn: Txn::None,
            timeout: settings.timeout,
            idle_limit: idle_limit(settings.timeout),
            kind,
            lease: None,
            commit_sent: false,
        };
        session.set_limits().await?;
        Ok(session)
    }

    /// Readies the session for the next rule of the same run on this
    /// database; `Ok(false)` when it must not be reused. The engine reuses a
    /// session only after a rule whose SQL cannot leave session state of its
    /// own (`db::may_leave_session_state`); what dbjanitor itself leaves is
    /// undone here: no transaction may be open (asked of the server), no
    /// lease held (released by the engine; checked here), every
    /// `GET_LOCK` is released (`RELEASE_ALL_LOCKS`, MariaDB 10.5+/MySQL 5.7+;
    /// older servers answer with an error and the session is not reused),
    /// and the idle limits follow the next rule's timeout. sqlx cannot send
    /// `COM_RESET_CONNECTION`, which would be the complete reset.
    pub(crate) async fn reset(&mut self, settings: &ConnectSettings) -> Result<bool, DbError> {
        if self.txn != Txn::None || self.lease.is_some() || self.transaction_open().await? {
            return Ok(false);
        }
        self.text.run("DO RELEASE_ALL_LOCKS()").await?;
        self.commit_sent = false;
        self.timeout = settings.timeout;
        self.idle_limit = idle_limit(settings.timeout);
        self.set_limits().await?;
        Ok(true)
    }

    /// `wait_timeout` (idle), `net_*_timeout` (blocked on the socket) and on
    /// MariaDB 10.3+ `idle_transaction_timeout`, all [`idle_limit`].
    async fn set_limits(&mut self) -> Result<(), DbError> {
        let sql = format!("SET {}", self.idle_limits());
        self.text.run(&sql).await
    }

    /// The assignments of [`Self::set_limits`], for one `SET`.
    fn idle_limits(&self) -> String {
        let idle = self.idle_limit.as_secs();
        let mut sql = format!(
            "SESSION wait_timeout = {idle}, SESSION interactive_timeout = {idle}, \
             SESSION net_read_timeout = {idle}, SESSION net_write_timeout = {idle}"
        );
        if self.mariadb && has_idle_transaction_timeout(&self.version) {
            sql.push_str(&format!(", SESSION idle_transaction_timeout = {idle}"));
        }
        sql
    }

    /// Has the server parse `sql` as ONE prepared statement (the prepared
    /// statement protocol refuses several), without running it. Statements
    /// the protocol does not support rest on dbjanitor's lexer alone.
    async fn server_checks_one_statement(&mut self, sql: &str) -> Result<(), DbError> {
        match self.text.prepare(sql).await {
            Err(DbError::Sql(e))
                if e.contains("not supported in the prepared statement protocol") =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Whether the server still has a transaction open on this connection:
    /// MariaDB `@@in_transaction`; MySQL an InnoDB transaction of this thread.
    async fn transaction_open(&mut self) -> Result<bool, DbError> {
        let sql = if self.mariadb {
            "SELECT @@in_transaction"
        } else {
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()"
        };
        Ok(self.text.fetch_text(sql).await?.is_some_and(|v| v != "0"))
    }

    /// Runs a detect query read-only: in a `READ ONLY` transaction (its own,
    /// or the rule's before the fix), or after the fix under a savepoint that
    /// is rolled back, so whatever the query writes is undone.
    async fn read_only(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        match self.txn {
            Txn::None => {
                self.text.run("START TRANSACTION READ ONLY").await?;
                let detection = self.text.detect(sql, keep, limit).await;
                self.text.run("ROLLBACK").await?;
                detection
            }
            Txn::ReadOnly => self.text.detect(sql, keep, limit).await,
            Txn::ReadWrite => {
                self.text.run("SAVEPOINT dbjanitor_detect").await?;
                let detection = self.text.detect(sql, keep, limit).await;
                self.text
                    .run("ROLLBACK TO SAVEPOINT dbjanitor_detect")
                    .await?;
                self.text.run("RELEASE SAVEPOINT dbjanitor_detect").await?;
                detection
            }
        }
    }

    /// [`Self::read_only`] with the server stopping at `limit` + 1 rows
    /// (`sql_select_limit`; an explicit LIMIT in the query wins). A refused
    /// write may surface on the statement after the query, so every error
    /// of the sequence goes through the same mapping.
    async fn limited_read_only(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        if let Some(limit) = limit {
            let rows = limit.saturating_add(1);
            self.text
                .run(&format!("SET SESSION sql_select_limit = {rows}"))
                .await?;
        }
        let detection = self.read_only(sql, keep, limit).await?;
        if limit.is_some() {
            self.text
                .run("SET SESSION sql_select_limit = DEFAULT")
                .await?;
        }
        Ok(detection)
    }
}

impl Session for MySqlSession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        if !self.take_lock(lock_name, wait).await? {
            return Ok(false);
        }
        // Detect runs read-only, at REPEATABLE READ so that a count on the
        // server and its sample share one read view (see `count`); the first
        // fix statement switches to a read-write transaction (at the
        // session's isolation level) under the same lock. One round trip
        // (see `count::REPEATABLE_READ`).
        self.text
            .run(&format!(
                "{}; START TRANSACTION READ ONLY",
                count::REPEATABLE_READ
            ))
            .await?;
        self.txn = Txn::ReadOnly;
        Ok(true)
    }

    async fn finish_locked(&mut self, commit: bool, lock_name: &str) -> Result<(), DbError> {
        if commit {
            self.fenced_commit().await?;
        } else {
            self.text.run("ROLLBACK").await?;
        }
        self.txn = Txn::None;
        self.release_lock(lock_name).await
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        self.take_lock(lock_name, wait).await
    }

    async fn unlock_session(&mut self, lock_name: &str) -> Result<(), DbError> {
        self.release_lock(lock_name).await
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        if let Some(held) = &self.lease {
            lease::renew(&mut MySqlLeases(&mut self.text), held).await?;
        }
        self.text.run("START TRANSACTION").await?;
        self.txn = Txn::ReadWrite;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.fenced_commit().await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.text.run("ROLLBACK").await?;
        self.txn = Txn::None;
        Ok(())
    }

    async fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        _in_transaction: bool,
    ) -> Result<(), DbError> {
        // Session scope: the connection belongs to this run alone and is
        // closed after it. The timeout is kept, as PostgreSQL's is: the lease
        // length and `abandon_bound` are read from it, and the idle limits
        // follow it in the same `SET`.
        self.timeout = timeout;
        self.idle_limit = idle_limit(timeout);
        let seconds = timeout.as_secs_f64().max(0.001);
        let whole_seconds = timeout.as_secs().max(1);
        let limit = if self.mariadb {
            format!("max_statement_time = {seconds}")
        } else {
            format!("max_execution_time = {}", millis(timeout))
        };
        self.text
            .run(&format!(
                "SET SESSION {limit}, SESSION innodb_lock_wait_timeout = {whole_seconds}, SESSION lock_wait_timeout = {whole_seconds}, {}",
                self.idle_limits()
            ))
            .await
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        if !crate::sql::is_query(sql, Dialect::MySql) {
            return Err(DbError::Unsafe(
                "detect is not a query (SELECT, WITH ... SELECT, VALUES, TABLE); it was not run"
                    .to_owned(),
            ));
        }
        // In a READ ONLY transaction MariaDB refuses a writing function already at PREPARE.
        self.server_checks_one_statement(sql)
            .await
            .map_err(read_only_refusal)?;
        if self.counts_on_server(limit)
            && let Some(detection) = self
                .counted_read_only(sql, keep, limit)
                .await
                .map_err(read_only_refusal)?
        {
            return Ok(detection);
        }
        self.limited_read_only(sql, keep, limit)
            .await
            .map_err(read_only_refusal)
    }

    async fn execute(&mut self, sql: &str) -> Result<Executed, DbError> {
        refuse_transaction_end(sql, Dialect::MySql, self.txn != Txn::None)?;
        if self.txn == Txn::ReadOnly {
            // Nothing was written in the read-only transaction; the lock is still held.
            self.text.run("ROLLBACK").await?;
            self.text.run("START TRANSACTION").await?;
            self.txn = Txn::ReadWrite;
        }
        if self.txn == Txn::None
            && let Some(held) = &self.lease
        {
            // Autocommit: each statement commits on its own; check the lease first.
            lease::renew(&mut MySqlLeases(&mut self.text), held).await?;
        }
        self.server_checks_one_statement(sql).await?;
        let rows = self.text.execute(sql).await?;
        if self.txn == Txn::ReadWrite && !self.transaction_open().await? {
            self.txn = Txn::None;
            return Err(DbError::TransactionEnded(
                "the server reports no open transaction after this fix statement: it ended dbjanitor's transaction (an implicit commit), so what the fix ran until now, this statement included, may be committed; check the rows".to_owned(),
            ));
        }
        Ok(Executed {
            rows,
            modifies_data: crate::sql::modifies_data(sql, Dialect::MySql),
        })
    }

    async fn own(&mut self, sql: &str) -> Result<super::Own, DbError> {
        self.text.own(sql).await
    }

    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        self.text.prepare(sql).await
    }

    async fn close(self) {
        let mut this = self;
        if let Some(held) = this.lease.take() {
            let _ = lease::release(&mut MySqlLeases(&mut this.text), &held).await;
        }
        this.text.close().await;
    }

    async fn abort(self) {
        self.text.abort();
    }

    async fn abort_after_commit(self) -> CommitOutcome {
        let commit_sent = self.commit_sent;
        self.text.abort();
        if !commit_sent {
            // The fencing check failed before COMMIT was sent: the open
            // transaction cannot commit, the server rolls it back.
            return CommitOutcome::RolledBack;
        }
        CommitOutcome::Unknown(
            "MySQL/MariaDB cannot say afterwards whether a COMMIT whose reply was lost took effect"
                .to_owned(),
        )
    }

    fn abandon_bound(&self) -> Duration {
        // A running statement ends within the timeout (MariaDB max_statement_time),
        // then the idle limit ends the session. A lease expires on its own.
        let bound = self.timeout.saturating_add(self.idle_limit);
        match &self.lease {
            Some(held) => bound.max(held.ttl),
            None => bound,
        }
    }
}

/// A write refused because detect runs in a READ ONLY transaction (error
/// 1792, SQLSTATE 25006) is `DbError::Unsafe`.
fn read_only_refusal(error: DbError) -> DbError {
    match error {
        DbError::Sql(text) if text.contains("25006") || text.contains("READ ONLY transaction") => {
            DbError::Unsafe(format!(
                "detect tried to write, which the server refused (it runs read-only): {text}"
            ))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limit_is_twice_the_timeout_plus_ten_seconds_and_never_overflows() {
        assert_eq!(idle_limit(Duration::from_mins(1)), Duration::from_secs(130));
        assert_eq!(
            idle_limit(Duration::from_millis(1500)),
            Duration::from_secs(14)
        );
        assert_eq!(
            idle_limit(Duration::MAX),
            Duration::from_secs(MAX_WAIT_TIMEOUT_SECS)
        );
    }

    #[test]
    fn idle_transaction_timeout_from_mariadb_10_3() {
        assert!(has_idle_transaction_timeout("10.11.19-MariaDB-0+deb12u1"));
        assert!(has_idle_transaction_timeout("11.4.2-MariaDB"));
        assert!(!has_idle_transaction_timeout("10.2.44-MariaDB"));
    }
}
