//! SQLite backend: the embedded default, used by `dbjanitor demo`.
//!
//! SQLite has no advisory locks. A transactional rule takes the database write
//! lock with `BEGIN IMMEDIATE` before detect, so two runs cannot interleave;
//! if another writer holds it for longer than `lock.wait` (SQLite's busy
//! timeout) the run is `skipped`. A rule that only reads (no fix) opens a
//! read transaction instead: it needs no write lock and holds up no writer.
//! Batch and autocommit rules have no lock across statements: each batch
//! takes the write lock for its own transaction. There is no server-side statement timeout; the engine's
//! client-side timeout still applies.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteQueryResult, SqliteRow};
use sqlx::{Decode, Row, TypeInfo, ValueRef};

use super::text::{TextConn, TextDatabase};
use super::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Detection, Dialect, Executed, Session,
    connect_error, refuse_transaction_end, sample,
};

/// SQLite's primary result code for "database is locked".
const SQLITE_BUSY: i64 = 5;

impl TextDatabase for Sqlite {
    fn cell(row: &SqliteRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        match value.type_info().name() {
            "INTEGER" => <i64 as Decode<Sqlite>>::decode(value)
                .ok()
                .map(|v| v.to_string()),
            "REAL" => <f64 as Decode<Sqlite>>::decode(value)
                .ok()
                .map(|v| v.to_string()),
            "BLOB" => <&[u8] as Decode<Sqlite>>::decode(value)
                .ok()
                .map(sample::bytes),
            // TEXT that is not valid UTF-8 is shown as hex, never as NULL.
            _ => match <&str as Decode<Sqlite>>::decode(value) {
                Ok(text) => Some(sample::clip(text)),
                Err(_) => <&[u8] as Decode<Sqlite>>::decode(row.try_get_raw(index).ok()?)
                    .ok()
                    .map(sample::hex),
            },
        }
    }

    fn full_text(row: &SqliteRow, index: usize) -> Option<String> {
        let value = row.try_get_raw(index).ok()?;
        if value.is_null() {
            return None;
        }
        <&[u8] as Decode<Sqlite>>::decode(value)
            .ok()
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// One SQLite connection.
pub struct SqliteSession {
    text: TextConn<Sqlite>,
    /// Whether dbjanitor opened a transaction (then a marker savepoint is set).
    in_transaction: bool,
}

/// A savepoint set right after BEGIN: if a fix statement ended the
/// transaction, releasing it fails ("no such savepoint"), which is how a
/// session without `unsafe` FFI learns that the transaction is gone.
const MARKER: &str = "dbjanitor_marker";

impl SqliteSession {
    /// Opens the database file of `db`; a missing file is an error, never created.
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(db.url.expose())
            .map_err(|e| connect_error(&db.url, &e))?
            .busy_timeout(settings.lock_wait)
            // sqlx turns foreign keys on; the sqlite3 CLI and the library default
            // to off, and rule SQL must mean what it means there (cascades would
            // change rows no count sees).
            .foreign_keys(false);
        let options = db.pragmas.iter().fold(options, |options, (key, value)| {
            options.pragma(key.clone(), value.clone())
        });
        Ok(Self {
            text: TextConn::connect(&db.url, &options, settings.timeout).await?,
            in_transaction: false,
        })
    }

    /// Readies the connection for the next rule of the same run on this
    /// database; `Ok(false)` when it must not be reused. No transaction may
    /// be open (a `BEGIN` would fail inside one), `query_only` is off again
    /// (detect turns it off on success; a failed detect ends the connection)
    /// and the busy timeout follows the next rule's `lock.wait`.
    pub(crate) async fn reset(&mut self, settings: &ConnectSettings) -> Result<bool, DbError> {
        if self.in_transaction {
            return Ok(false);
        }
        self.text.run("BEGIN").await?;
        self.text.run("ROLLBACK").await?;
        self.text
            .run(&format!(
                "PRAGMA busy_timeout = {}",
                settings.lock_wait.as_millis()
            ))
            .await?;
        Ok(true)
    }

    /// `BEGIN IMMEDIATE` (the write lock) and the marker savepoint.
    async fn begin_immediate(&mut self) -> Result<bool, DbError> {
        match self.text.run_raw("BEGIN IMMEDIATE").await {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return Ok(false),
            Err(e) => return Err(self.text.error(&e)),
        }
        self.text.run(&format!("SAVEPOINT {MARKER}")).await?;
        self.in_transaction = true;
        Ok(true)
    }

    /// Ends the transaction: COMMIT when `commit`, else ROLLBACK.
    async fn end(&mut self, commit: bool) -> Result<(), DbError> {
        self.in_transaction = false;
        match self
            .text
            .run_raw(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
        {
            Ok(()) => Ok(()),
            // SQLite answers a COMMIT it cannot carry out yet (readers still
            // on the file in rollback-journal mode, for longer than the busy
            // timeout) with SQLITE_BUSY and leaves the transaction open and
            // uncommitted (https://www.sqlite.org/lang_transaction.html):
            // the engine closes the connection, which rolls it back.
            Err(e) if commit && is_busy(&e) => Err(DbError::CommitRefused(format!(
                "SQLite refused the COMMIT: {} (readers still held the database for longer than lock.wait)",
                self.text.error(&e)
            ))),
            Err(e) => Err(self.text.error(&e)),
        }
    }

    /// Whether dbjanitor's transaction is still open: the marker savepoint
    /// can be released and set again only inside it.
    async fn transaction_open(&mut self) -> Result<bool, DbError> {
        if self
            .text
            .run(&format!("RELEASE SAVEPOINT {MARKER}"))
            .await
            .is_err()
        {
            return Ok(false);
        }
        self.text.run(&format!("SAVEPOINT {MARKER}")).await?;
        Ok(true)
    }
}

fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

impl Session for SqliteSession {
    async fn begin_locked(&mut self, _lock_name: &str, _wait: Duration) -> Result<bool, DbError> {
        self.begin_immediate().await
    }

    async fn begin_reading(&mut self, _lock_name: &str, _wait: Duration) -> Result<bool, DbError> {
        // A deferred transaction, and a read that takes SQLite's shared lock
        // at once (in WAL mode: the snapshot), in one round trip. It is busy
        // only while a writer commits in rollback-journal mode for longer
        // than the busy timeout (`lock.wait`): then the run is `skipped`, as
        // a busy database is for a rule that writes.
        match self
            .text
            .run_raw("BEGIN; SELECT count(*) FROM sqlite_master")
            .await
        {
            Ok(()) => {
                self.in_transaction = true;
                Ok(true)
            }
            Err(e) if is_busy(&e) => {
                // BEGIN may have succeeded: end it (an error only says it had not).
                let _ = self.text.run_raw("ROLLBACK").await;
                Ok(false)
            }
            Err(e) => Err(self.text.error(&e)),
        }
    }

    async fn finish_locked(&mut self, commit: bool, _lock_name: &str) -> Result<(), DbError> {
        self.end(commit).await
    }

    async fn lock_session(&mut self, _lock_name: &str, _wait: Duration) -> Result<bool, DbError> {
        // No advisory lock: probe the write lock as a transactional rule takes
        // it, so a database busy at the start is `skipped` in every mode.
        if !self.begin_immediate().await? {
            return Ok(false);
        }
        self.end(false).await?;
        Ok(true)
    }

    async fn unlock_session(&mut self, _lock_name: &str) -> Result<(), DbError> {
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        if self.begin_immediate().await? {
            Ok(())
        } else {
            Err(DbError::Sql(
                "the SQLite database is locked by another writer (busy for longer than lock.wait)"
                    .to_owned(),
            ))
        }
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.end(true).await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.end(false).await
    }

    async fn set_statement_timeout(
        &mut self,
        _timeout: Duration,
        _in_transaction: bool,
    ) -> Result<(), DbError> {
        Ok(())
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        if !crate::sql::is_query(sql, Dialect::Sqlite) {
            return Err(DbError::Unsafe(
                "detect is not a query (SELECT, WITH ... SELECT, VALUES); it was not run"
                    .to_owned(),
            ));
        }
        // The connection refuses every write while detect runs.
        self.text.run("PRAGMA query_only = ON").await?;
        let detection = self
            .text
            .detect(sql, keep, limit)
            .await
            .map_err(read_only_refusal);
        self.text.run("PRAGMA query_only = OFF").await?;
        detection
    }

    async fn execute(&mut self, sql: &str) -> Result<Executed, DbError> {
        refuse_transaction_end(sql, Dialect::Sqlite, false)?;
        let rows = self.text.execute(sql).await?;
        if self.in_transaction && !self.transaction_open().await? {
            self.in_transaction = false;
            return Err(DbError::TransactionEnded(
                "dbjanitor's transaction is gone after this fix statement: what the fix ran until now, this statement included, may be committed; check the rows".to_owned(),
            ));
        }
        Ok(Executed {
            rows,
            modifies_data: crate::sql::modifies_data(sql, Dialect::Sqlite),
        })
    }

    async fn own(&mut self, sql: &str) -> Result<super::Own, DbError> {
        self.text.own(sql).await
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
            "SQLite did not finish the COMMIT within the timeout; whether it took effect is known only by reading the database".to_owned(),
        )
    }

    fn abandon_bound(&self) -> Duration {
        // The lock lives in this process: it ends with the connection or the process.
        Duration::ZERO
    }
}

/// A write refused under `PRAGMA query_only` (SQLITE_READONLY, code 8) is
/// `DbError::Unsafe`.
fn read_only_refusal(error: DbError) -> DbError {
    match error {
        DbError::Sql(text) if text.contains("readonly database") => DbError::Unsafe(format!(
            "detect tried to write, which SQLite refused (it runs with query_only): {text}"
        )),
        other => other,
    }
}
