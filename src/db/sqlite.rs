//! SQLite backend: the embedded default, used by `dbjanitor demo`.
//!
//! SQLite has no advisory locks. A transactional rule takes the database write
//! lock with `BEGIN IMMEDIATE` before detect, so two runs cannot interleave;
//! if another writer holds it for longer than `lock.wait` (SQLite's busy
//! timeout) the run is `skipped`. Batch and autocommit rules have no lock
//! across statements: each batch takes the write lock for its own
//! transaction. There is no server-side statement timeout; the engine's
//! client-side timeout still applies.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteConnection, SqliteQueryResult, SqliteRow};
use sqlx::{Connection, Decode, Executor, Row, TypeInfo, ValueRef};

use super::text::{TextConn, TextDatabase};
use super::{
    ConnectSettings, DatabaseConfig, DbError, Detection, Session, connect_error, sample, sql_error,
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
            _ => <&str as Decode<Sqlite>>::decode(value)
                .ok()
                .map(sample::clip),
        }
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// One SQLite connection.
pub struct SqliteSession {
    text: TextConn<Sqlite>,
}

impl SqliteSession {
    /// Opens the database file of `db`; a missing file is an error, never created.
    pub async fn connect(db: &DatabaseConfig, settings: &ConnectSettings) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(db.url.expose())
            .map_err(|e| connect_error(&db.url, &e))?
            .busy_timeout(settings.lock_wait);
        let conn = tokio::time::timeout(settings.timeout, SqliteConnection::connect_with(&options))
            .await
            .map_err(|_| DbError::Connect(format!("timed out after {:?}", settings.timeout)))?
            .map_err(|e| connect_error(&db.url, &e))?;
        Ok(Self {
            text: TextConn {
                conn,
                url: db.url.clone(),
            },
        })
    }
}

fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

impl Session for SqliteSession {
    async fn begin_locked(&mut self, _lock_name: &str, _wait: Duration) -> Result<bool, DbError> {
        match self
            .text
            .conn
            .execute(sqlx::raw_sql("BEGIN IMMEDIATE"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_busy(&e) => Ok(false),
            Err(e) => Err(sql_error(&self.text.url, &e)),
        }
    }

    async fn finish_locked(&mut self, commit: bool, _lock_name: &str) -> Result<(), DbError> {
        self.text
            .run(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
    }

    async fn lock_session(&mut self, _lock_name: &str, _wait: Duration) -> Result<bool, DbError> {
        Ok(true)
    }

    async fn unlock_session(&mut self, _lock_name: &str) -> Result<(), DbError> {
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        self.text.run("BEGIN IMMEDIATE").await
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.text.run("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.text.run("ROLLBACK").await
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
        _limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        self.text.detect(sql, keep).await
    }

    async fn execute(&mut self, sql: &str) -> Result<super::Executed, DbError> {
        let rows = self.text.execute(sql).await?;
        Ok(super::Executed {
            rows,
            modifies_data: !crate::sql::is_ddl(sql, super::Dialect::Sqlite),
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

    async fn abort_after_commit(self) -> super::CommitOutcome {
        self.text.abort();
        super::CommitOutcome::Unknown("the COMMIT reply was lost".to_owned())
    }

    fn abandon_bound(&self) -> Duration {
        Duration::ZERO
    }
}
