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

impl AnySession {
    /// Readies a session whose rule ended cleanly for the next rule of the
    /// same run on the same database (design §3, "one connection per
    /// database"); `Ok(false)` when it must not be reused, and then the caller
    /// drops it and opens a new one. Each backend checks that nothing of the
    /// last rule is left (no transaction, no lock) and applies the next
    /// rule's connect settings.
    pub async fn reset(&mut self, settings: &ConnectSettings) -> Result<bool, DbError> {
        each!(self, s => s.reset(settings).await)
    }
}

/// Words that, anywhere in a rule's SQL, mean it may leave state on the
/// session that the next rule would inherit: session variables, temporary
/// objects, locks, prepared statements, cursors, procedures that could do
/// any of these. Deliberately coarse (a column named `temp` counts too): a
/// false alarm costs one new connection, a miss would let one rule change
/// what the next one means.
const SESSION_WORDS: [&str; 15] = [
    "TEMP",
    "TEMPORARY",
    "GET_LOCK",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_LOCK_SHARED",
    "SET_CONFIG",
    "PRAGMA",
    "ATTACH",
    "DETACH",
    "HANDLER",
    "CALL",
    "LISTEN",
    "DISCARD",
];

/// First keywords of statements that change the session rather than data.
const SESSION_STATEMENTS: [&str; 9] = [
    "SET",
    "RESET",
    "LOCK",
    "UNLOCK",
    "PREPARE",
    "DEALLOCATE",
    "DECLARE",
    "DO",
    "LOAD",
];

/// Whether `sql` (one statement or several) may leave session state behind:
/// then the engine does not reuse the session for the next rule. Only
/// `SET`, `LOCK TABLES` and the like as a statement of their own count, so
/// `UPDATE ... SET` does not; a MySQL `@` variable anywhere counts.
#[must_use]
pub fn may_leave_session_state(sql: &str, dialect: Dialect) -> bool {
    if dialect == Dialect::MySql && sql.contains('@') {
        return true;
    }
    let statement_changes_session =
        crate::sql::split_statements(sql, dialect)
            .into_iter()
            .any(|statement| {
                SESSION_STATEMENTS.contains(&crate::sql::first_keyword(statement, dialect).as_str())
            });
    statement_changes_session
        || sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| {
                SESSION_WORDS
                    .iter()
                    .any(|session_word| word.eq_ignore_ascii_case(session_word))
            })
}

impl Session for AnySession {
    async fn begin_locked(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        each!(self, s => s.begin_locked(lock_name, wait).await)
    }

    async fn begin_reading(&mut self, lock_name: &str, wait: Duration) -> Result<bool, DbError> {
        each!(self, s => s.begin_reading(lock_name, wait).await)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_changing_sql_is_recognised() {
        for (sql, dialect) in [
            ("SET SESSION sql_mode = ''", Dialect::MySql),
            ("UPDATE t SET a = @x", Dialect::MySql),
            ("SELECT GET_LOCK('a', 0)", Dialect::MySql),
            ("CREATE TEMPORARY TABLE x (a int)", Dialect::MySql),
            ("UPDATE t SET a = 1; set search_path = x", Dialect::Postgres),
            ("SELECT pg_advisory_lock(1)", Dialect::Postgres),
            ("select set_config('a.b', '1', false)", Dialect::Postgres),
            ("PRAGMA foreign_keys = ON", Dialect::Sqlite),
            ("create temp table x (a)", Dialect::Sqlite),
        ] {
            assert!(may_leave_session_state(sql, dialect), "{sql}");
        }
        for (sql, dialect) in [
            (
                "UPDATE job SET state = 'done' WHERE id IN (SELECT id FROM job LIMIT 10)",
                Dialect::MySql,
            ),
            (
                "DELETE FROM t WHERE ctid = ANY(ARRAY(SELECT ctid FROM t LIMIT 10))",
                Dialect::Postgres,
            ),
            (
                "SELECT id, settled FROM job WHERE state = 'doing'",
                Dialect::Sqlite,
            ),
        ] {
            assert!(!may_leave_session_state(sql, dialect), "{sql}");
        }
    }
}
