//! Database backends behind one small trait, opened in one place ([`open()`]).
//!
//! Nothing is pooled across runs. Within one `run`, the rules of one database
//! run in order on one connection (a fleet pays one connection set-up per
//! database, not per rule): the engine hands a connection on only after a
//! rule that ended with no failure and whose SQL cannot set session state of
//! its own ([`may_leave_session_state`]), and only after the backend checked
//! that nothing of that rule is left (no open transaction, no lock) and reset
//! what dbjanitor itself set ([`AnySession::reset`]). After any error,
//! timeout, cancellation or lost COMMIT reply the connection is dropped,
//! never reused: the server then rolls back and releases every lock, and a
//! killed process leaves nothing behind but a closed socket.
//!
//! [`Session`] is the whole surface the engine needs; `postgres`, `mysql` and
//! `sqlite` implement it, each knowing its own lock, timeout and transaction
//! statements. Rule SQL is sent as text (PostgreSQL simple query protocol,
//! MySQL `COM_QUERY`), so it means what it means in `psql` or the `mariadb`
//! client, and every value arrives as text that a report can show whatever
//! its column type.

mod endpoint;
mod lease;
mod lease_mysql;
mod lock;
mod mysql;
mod open;
pub(crate) mod pgconn;
mod pgurl;
mod postgres;
pub mod replica;
mod sample;
mod sqlite;
mod text;
pub(crate) mod typed;

use std::future::Future;
use std::time::Duration;

pub use endpoint::name_endpoint;
pub use lease::LEASE_TABLE_SQL;
pub use lease_mysql::MYSQL_LEASE_TABLE_SQL;
pub use lock::{LockKind, mysql_lock_name, postgres_lock_key, postgres_schema_lock_key};
pub use mysql::{
    MySqlSession, row_text as mysql_row_text, session_options as mysql_session_options,
};
pub use open::{AnySession, may_leave_session_state, open};
pub use postgres::PgSession;
pub use sqlite::SqliteSession;

pub use crate::dialect::Dialect;
use crate::outcome::Sample;
use crate::secret::SecretUrl;

/// A database from the config: its name, dialect and (secret) URL.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The name rules refer to.
    pub name: String,
    /// Taken from the URL scheme.
    pub dialect: Dialect,
    /// The connection URL; prints redacted.
    pub url: SecretUrl,
    /// The lock kind its rules take (`lock: {kind: ...}`; default `auto`).
    pub lock: LockKind,
    /// SQLite pragmas set on every connection (`pragmas:` in the config),
    /// validated names and values; empty for the other engines.
    pub pragmas: Vec<(String, String)>,
    /// MySQL/MariaDB replicas whose lag `batch.max_replica_lag` reads
    /// (`replicas:` in the config); empty for the other engines, which need
    /// none (PostgreSQL reads lag on the primary).
    pub replicas: Vec<SecretUrl>,
}

/// What a session needs to know before it connects.
#[derive(Debug, Clone, Copy)]
pub struct ConnectSettings {
    /// Per-statement timeout; also bounds connecting.
    pub timeout: Duration,
    /// How long to wait for a lock held elsewhere (SQLite: the busy timeout).
    pub lock_wait: Duration,
}

/// Errors from a backend. Texts are already scrubbed of secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The connection could not be established.
    #[error("cannot connect to database: {0}")]
    Connect(String),
    /// The server returned an error or the connection broke.
    #[error("{0}")]
    Sql(String),
    /// The server cancelled a statement that ran past its timeout.
    #[error("{0}")]
    Timeout(String),
    /// dbjanitor or the server refused SQL that could escape the guards before
    /// it changed anything: a detect that is not a single read-only query, a
    /// fix statement that would end its transaction (COMMIT, END, ROLLBACK,
    /// BEGIN, an implicitly committing statement in a transaction). Reported
    /// as `failed`, reason `unsafe_sql`.
    #[error("{0}")]
    Unsafe(String),
    /// A fix statement ended the transaction it ran in (found out afterwards,
    /// e.g. MySQL `@@in_transaction` = 0 after an implicit commit): what ran
    /// before it may be committed. Reported as `failed`, reason
    /// `transaction_ended`, never as "rolled back".
    #[error("{0}")]
    TransactionEnded(String),
    /// The server answered a COMMIT by refusing it and left the transaction
    /// uncommitted (SQLite: `SQLITE_BUSY` while readers are still on the
    /// file in rollback-journal mode), so closing the connection rolls it
    /// back. Reported as a failed statement (`sql_error`), never as a COMMIT
    /// whose outcome is unknown.
    #[error("{0}")]
    CommitRefused(String),
}

/// The count and a sample of a detect query's rows.
#[derive(Debug, Clone, Default)]
pub struct Detection {
    /// Rows read: every row when `complete`, else exactly the `limit` asked for.
    pub count: u64,
    /// The first few rows, rendered as text.
    pub sample: Sample,
    /// `false` when reading stopped at `limit` and the query had more rows.
    pub complete: bool,
}

/// What one fix statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executed {
    /// Rows the server reported as affected.
    pub rows: u64,
    /// Whether it is a data-modifying statement (INSERT, UPDATE, DELETE,
    /// MERGE, REPLACE, or a WITH ... ending in one of them); only these count
    /// towards `changed` and `max_rows`. SELECT, SET, DDL and the like do not.
    pub modifies_data: bool,
}

/// What dbjanitor's own SQL returned (see [`Session::own`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    /// Rows affected by the (last) statement.
    pub rows_affected: u64,
    /// Every row it returned, each cell as text (`None` for NULL), never clipped.
    pub rows: Vec<Vec<Option<String>>>,
}

/// What became of a COMMIT whose reply did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The server confirmed (afterwards, e.g. `pg_xact_status`) that it committed.
    Committed,
    /// The server confirmed that the transaction rolled back (or never reached it).
    RolledBack,
    /// Nobody can tell; the text says why (reported as reason `commit_unknown`).
    Unknown(String),
}

/// The operations the engine performs on one pinned connection.
///
/// Locks come in two kinds, as in docs/architecture.md §3: a transactional rule calls
/// [`Session::begin_locked`], which opens a transaction and takes a lock that
/// ends with it; batch and autocommit rules call [`Session::lock_session`],
/// which holds a lock on the connection across several transactions.
pub trait Session: Send + Sized {
    /// Opens a transaction holding the lock for `lock_name`; `Ok(false)` when
    /// the lock is held elsewhere (then no transaction is left open).
    fn begin_locked(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<bool, DbError>> + Send;

    /// [`Session::begin_locked`] for a rule that only reads
    /// ([`crate::rule::Rule::only_reads`]). The same lock by default, so a
    /// report-only rule is still `skipped` while another run holds its lock.
    /// SQLite's only lock is the database write lock, which would hold up
    /// the application's writers (and every other rule of the database) for
    /// a report: there it opens a read transaction instead.
    fn begin_reading(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<bool, DbError>> + Send {
        self.begin_locked(lock_name, wait)
    }

    /// Commits (or rolls back) the transaction of [`Session::begin_locked`]
    /// (or [`Session::begin_reading`]) and releases its lock.
    fn finish_locked(
        &mut self,
        commit: bool,
        lock_name: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Takes a lock held by the connection until [`Session::unlock_session`]
    /// (or until the connection closes); `Ok(false)` when held elsewhere.
    fn lock_session(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<bool, DbError>> + Send;

    /// Releases the lock of [`Session::lock_session`].
    fn unlock_session(
        &mut self,
        lock_name: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Opens a plain transaction (one batch of a batch rule).
    fn begin(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Commits the open transaction (a batch, or the transaction of
    /// `begin_locked` via `finish_locked`).
    fn commit(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Rolls back the open transaction.
    fn rollback(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Applies the server-side statement timeout. `in_transaction` scopes it
    /// to the open transaction where the engine supports that (PostgreSQL
    /// `SET LOCAL`, which also works behind PgBouncer in transaction mode).
    fn set_statement_timeout(
        &mut self,
        timeout: Duration,
        in_transaction: bool,
    ) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Runs a detect query. The backend guarantees, checked by the server
    /// wherever the engine allows it, that it is ONE statement and READ ONLY:
    /// multiple statements, DML (`DELETE ... RETURNING`, data-modifying CTEs)
    /// and functions that write must fail with `DbError::Unsafe` (or the
    /// server's error) before or without changing anything. It reads at most
    /// `limit` rows (`None`: all) and keeps `keep` of them as the sample; the
    /// query is not read further once the limit is reached.
    fn detect(
        &mut self,
        sql: &str,
        keep: usize,
        limit: Option<u64>,
    ) -> impl Future<Output = Result<Detection, DbError>> + Send;

    /// Runs ONE fix statement (the engine splits the fix with `sql::split_statements`;
    /// the backend makes the server enforce "one statement" where it can, so a
    /// lexer mistake cannot smuggle a second one in). Inside a transaction it
    /// refuses statements that would end it (`DbError::Unsafe`, before running
    /// them) and reports `DbError::TransactionEnded` if it finds the transaction
    /// gone afterwards.
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<Executed, DbError>> + Send;

    /// Runs dbjanitor's OWN SQL, never rule SQL: the statements of the backup
    /// images (`crate::backup`), which build and compare the images on the
    /// server so that no row data streams through dbjanitor. Every result
    /// column is text; all rows are returned (the callers bound them by
    /// `max_rows` or by a run's images).
    fn own(&mut self, sql: &str) -> impl Future<Output = Result<Own, DbError>> + Send;

    /// Asks the server to parse and plan `sql` without running it.
    fn prepare(&mut self, sql: &str) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Closes the connection politely.
    fn close(self) -> impl Future<Output = ()> + Send;

    /// Drops the connection at once; the server rolls back whatever was open
    /// and releases every lock the connection held.
    fn abort(self) -> impl Future<Output = ()> + Send;

    /// Called by the engine INSTEAD of `abort` when COMMIT (directly or inside
    /// `finish_locked(true, ..)`) failed or timed out without a reply: drops the
    /// connection, then finds out what the server did with the transaction —
    /// PostgreSQL asks `pg_xact_status(<xid taken before COMMIT>)` on a new
    /// connection (waiting a bounded time while it is still "in progress");
    /// MySQL/MariaDB and SQLite return `Unknown` with a reason.
    fn abort_after_commit(self) -> impl Future<Output = CommitOutcome> + Send;

    /// How long the server may keep this connection's transaction and locks
    /// after the client vanished without closing it, given the server-side
    /// limits this session set at connect (PostgreSQL
    /// `idle_in_transaction_session_timeout`, `idle_session_timeout`,
    /// `tcp_keepalives_*`, `client_connection_check_interval`; MariaDB/MySQL
    /// `wait_timeout`, `idle_transaction_timeout`, `net_*_timeout`; SQLite:
    /// zero, the lock is in the process). The engine's failure messages say
    /// "the connection was dropped; the server rolls back the open
    /// transaction and releases its locks within N s" with this N, never a
    /// bare "the server rolled back".
    fn abandon_bound(&self) -> Duration;
}

/// Turns a driver error into a [`DbError`] with the URL's secrets masked.
pub(crate) fn sql_error(url: &SecretUrl, err: &sqlx::Error) -> DbError {
    let text = url.scrub(&describe(err));
    if is_server_timeout(err) {
        DbError::Timeout(text)
    } else {
        DbError::Sql(text)
    }
}

/// Whether the server cancelled a statement for running too long: PostgreSQL
/// `statement_timeout` (SQLSTATE 57014), MariaDB `max_statement_time` (1969,
/// SQLSTATE 70100), MySQL `max_execution_time` (3024).
fn is_server_timeout(err: &sqlx::Error) -> bool {
    let Some(db) = err.as_database_error() else {
        return false;
    };
    let code = db.code();
    let message = db.message().to_ascii_lowercase();
    matches!(code.as_deref(), Some("57014" | "70100"))
        || message.contains("max_statement_time exceeded")
        || message.contains("maximum statement execution time exceeded")
}

/// Like [`sql_error`] for a failed connection attempt.
pub(crate) fn connect_error(url: &SecretUrl, err: &sqlx::Error) -> DbError {
    DbError::Connect(url.scrub(&describe(err)))
}

/// A driver error as text: the server's message and code, or the error itself.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err.as_database_error() {
        Some(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        None => err.to_string(),
    }
}

/// Refuses a fix statement that would end (or split) the transaction it runs
/// in, before it reaches the server; `implicit` adds MySQL's implicitly
/// committing statements.
pub(crate) fn refuse_transaction_end(
    sql: &str,
    dialect: Dialect,
    implicit: bool,
) -> Result<(), DbError> {
    if let Some(words) = crate::sql::transaction_control(sql, dialect) {
        return Err(DbError::Unsafe(format!(
            "the fix statement runs {words}, which would end or split dbjanitor's transaction; it was not run"
        )));
    }
    if implicit && let Some(words) = crate::sql::implicit_commit(sql) {
        return Err(DbError::Unsafe(format!(
            "the fix statement runs {words}, which commits the open transaction implicitly; it was not run (use `mode: autocommit`)"
        )));
    }
    Ok(())
}

/// Longest wait for a connection to close; after it the socket is just dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Milliseconds for SQL `SET` statements, at least 1.
pub(crate) fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}
