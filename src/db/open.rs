//! The one place that opens a session: [`open`] picks the backend from the
//! database's dialect, and [`AnySession`] forwards every [`Session`] call to
//! it, so the engine, `check --connect` and the daemon's health check never
//! name a backend.
//!
//! An enum rather than `Box<dyn Session>`: [`Session`]'s methods return
//! `impl Future + Send`, which a trait object cannot carry without boxing
//! every future of every statement (and restating the trait in a second,
//! object-safe form); the set of backends is closed and known when dbjanitor
//! is built; and a match over an enum is exhaustive, so the compiler lists
//! what a new backend must provide. A new dialect adds a variant, its arm in
//! [`open`] (the only dialect → backend match) and its arm in `each!`.

use std::time::Duration;

use super::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Detection, Dialect, Executed,
    MySqlSession, PgSession, Session, SqliteSession,
};

/// A session on any backend, as [`open`] returns it.
// At most one per running job, so a few hundred bytes inline beat a box.
#[allow(clippy::large_enum_variant)]
pub enum AnySession {
    /// `postgres://`.
    Postgres(PgSession),
    /// `mysql://`, `mariadb://`.
    MySql(MySqlSession),
    /// `sqlite://`.
    Sqlite(SqliteSession),
}

/// `$body` with `$s` bound to the backend session inside `$session`.
macro_rules! each {
    ($session:expr, $s:ident => $body:expr) => {
        match $session {
            AnySession::Postgres($s) => $body,
            AnySession::MySql($s) => $body,
            AnySession::Sqlite($s) => $body,
        }
    };
}

/// Opens a session on `database` with the backend its URL names. The error
/// text never holds the password.
pub async fn open(
    database: &DatabaseConfig,
    settings: &ConnectSettings,
) -> Result<AnySession, DbError> {
    Ok(match database.dialect {
        Dialect::Postgres => AnySession::Postgres(PgSession::connect(database, settings).await?),
        Dialect::MySql => AnySession::MySql(MySqlSession::connect(database, settings).await?),
        Dialect::Sqlite => AnySession::Sqlite(SqliteSession::connect(database, settings).await?),
    })
}

impl Session for AnySession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        each!(self, s => s.begin_locked(lock_name, wait).await)
    }

    async fn finish_locked(&mut self, commit: bool, lock_name: &str) -> Result<(), DbError> {
        each!(self, s => s.finish_locked(commit, lock_name).await)
    }

    async fn lock_session(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        each!(self, s => s.lock_session(lock_name, wait).await)
    }

    async fn unlock_session(&mut self, lock_name: &str) -> Result<(), DbError> {
        each!(self, s => s.unlock_session(lock_name).await)
    }

    async fn begin(&mut self) -> Result<(), DbError> {
        each!(self, s => s.begin().await)
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        each!(self, s => s.commit().await)
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        each!(self, s => s.rollback().await)
    }

    async fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        in_transaction: bool,
    ) -> Result<(), DbError> {
        each!(self, s => s.set_statement_timeout(timeout, in_transaction).await)
    }

    async fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> Result<Detection, DbError> {
        each!(self, s => s.detect(sql, keep, limit).await)
    }

    async fn execute(&mut self, sql: &str) -> Result<Executed, DbError> {
        each!(self, s => s.execute(sql).await)
    }

    async fn own(&mut self, sql: &str) -> Result<super::Own, DbError> {
        each!(self, s => s.own(sql).await)
    }

    async fn prepare(&mut self, sql: &str) -> Result<(), DbError> {
        each!(self, s => s.prepare(sql).await)
    }

    async fn close(self) {
        each!(self, s => s.close().await);
    }

    async fn abort(self) {
        each!(self, s => s.abort().await);
    }

    async fn abort_after_commit(self) -> CommitOutcome {
        each!(self, s => s.abort_after_commit().await)
    }

    fn abandon_bound(&self) -> Duration {
        each!(self, s => s.abandon_bound())
    }
}
