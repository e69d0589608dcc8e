//! One connection to the audit database, of the concrete driver type for its
//! dialect, opened per operation and never pooled (the audit database may come
//! and go between runs).
//!
//! Why its own type rather than the engine's `db::Session`: the audit table's
//! statements bind parameters and decode typed columns, while a `Session`
//! only sends rule SQL as text. PostgreSQL goes through tokio-postgres
//! ([`PgConn`], unnamed statements only, so it works behind PgBouncer in
//! transaction mode); MySQL/MariaDB and SQLite through sqlx. [`on_each!`]
//! lets one function body serve both sqlx dialects.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::{AuditError, TIMEOUT};
use crate::db::pgconn::PgConn;
use crate::db::{DatabaseConfig, DbError, Dialect, describe};
use crate::secret::SecretUrl;

/// One connection to the audit database, of the concrete type for its
/// dialect (parameters are bound, never spliced into the SQL).
pub(crate) enum Conn {
    /// PostgreSQL (tokio-postgres: no named statements, pooler-safe).
    Postgres(PgConn),
    /// MySQL/MariaDB, with the current schema (for lock names).
    MySql(MySqlConnection, SecretUrl, String),
    /// SQLite.
    Sqlite(SqliteConnection, SecretUrl),
}

impl Conn {
    /// Connects to `db` within [`TIMEOUT`] (the store's shorter
    /// `audit.timeout` applies on top).
    pub(super) async fn open(db: &DatabaseConfig) -> Result<Self, AuditError> {
        let connect = async {
            match db.dialect {
                Dialect::Postgres => open_postgres(&db.url).await,
                Dialect::MySql => open_mysql(&db.url).await,
                Dialect::Sqlite => open_sqlite(&db.url).await,
            }
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| AuditError::Timeout(TIMEOUT))?
    }

    /// Drops the connection at once, without waiting for a stalled server:
    /// it rolls back what was open and frees the locks when it notices.
    pub(crate) fn abandon(self) {
        match self {
            Conn::Postgres(c) => c.abort(),
            Conn::MySql(..) | Conn::Sqlite(..) => {}
        }
    }

    /// Closes the connection politely, within `db::CLOSE_TIMEOUT`.
    pub(crate) async fn close(self) {
        let _ = tokio::time::timeout(crate::db::CLOSE_TIMEOUT, async {
            match self {
                Conn::Postgres(c) => c.close().await,
                Conn::MySql(c, _, _) => {
                    let _ = c.close().await;
                }
                Conn::Sqlite(c, _) => {
                    let _ = c.close().await;
                }
            }
        })
        .await;
    }
}

async fn open_postgres(url: &SecretUrl) -> Result<Conn, AuditError> {
    let conn = PgConn::connect(url, "dbjanitor-audit", TIMEOUT)
        .await
        .map_err(|e| match e {
            DbError::Connect(text) => AuditError::Connect(text),
            other => AuditError::Connect(other.to_string()),
        })?;
    Ok(Conn::Postgres(conn))
}

async fn open_mysql(url: &SecretUrl) -> Result<Conn, AuditError> {
    let connect_err = |e: sqlx::Error| AuditError::Connect(url.scrub(&describe(&e)));
    // Times are bound as UTC DATETIME values; the session time zone is
    // pinned to UTC so NOW() agrees if anyone uses it.
    let options = MySqlConnectOptions::from_str(url.expose())
        .map_err(connect_err)?
        .timezone(Some(String::from("+00:00")));
    let mut conn = MySqlConnection::connect_with(&options)
        .await
        .map_err(connect_err)?;
    let schema: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| AuditError::sql(url, &e))?;
    Ok(Conn::MySql(conn, url.clone(), schema.unwrap_or_default()))
}

async fn open_sqlite(url: &SecretUrl) -> Result<Conn, AuditError> {
    let connect_err = |e: sqlx::Error| AuditError::Connect(url.scrub(&describe(&e)));
    let options = SqliteConnectOptions::from_str(url.expose())
        .map_err(connect_err)?
        .busy_timeout(TIMEOUT);
    let conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(connect_err)?;
    Ok(Conn::Sqlite(conn, url.clone()))
}

/// Ends an operation on `conn`: closes it politely after a success; after an
/// error or a timeout drops it, so the server rolls back whatever was open and
/// releases the migration lock.
pub(super) async fn finish<T>(
    conn: Conn,
    result: Result<Result<T, AuditError>, tokio::time::error::Elapsed>,
    bound: Duration,
) -> Result<T, AuditError> {
    let result = result
        .map_err(|_| AuditError::Timeout(bound))
        .and_then(|r| r);
    if result.is_ok() {
        conn.close().await;
    }
    result
}

/// Runs `$pg_body` on a PostgreSQL connection (see `pg`), or `$body` on a
/// sqlx connection with `$sql` set to the dialect's text (`$other` for MySQL
/// and SQLite, or one text each). The body is expanded once per arm, so each
/// arm binds and decodes with its own concrete database type.
macro_rules! on_each {
    ($conn:expr, $other:expr, pg |$p:ident| $pg_body:expr, |$c:ident, $sql:ident, $url:ident| $body:expr) => {
        on_each!(
            $conn,
            $other,
            $other,
            pg | $p | $pg_body,
            |$c, $sql, $url| $body
        )
    };
    ($conn:expr, $my:expr, $lite:expr, pg |$p:ident| $pg_body:expr, |$c:ident, $sql:ident, $url:ident| $body:expr) => {
        match $conn {
            $crate::audit::Conn::Postgres($p) => $pg_body,
            $crate::audit::Conn::MySql($c, $url, _) => {
                let $sql: &'static str = $my;
                $body
            }
            $crate::audit::Conn::Sqlite($c, $url) => {
                let $sql: &'static str = $lite;
                $body
            }
        }
    };
}
pub(super) use on_each;

/// One statement without parameters or rows (BEGIN, COMMIT), sent as text:
/// the server does not prepare it.
pub(super) async fn statement(conn: &mut Conn, sql: &'static str) -> Result<(), AuditError> {
    use sqlx::Executor as _;
    on_each!(
        conn,
        sql,
        pg | c
            | c.batch(sql)
                .await
                .map_err(|e| AuditError::Sql(e.to_string())),
        |c, sql, url| c
            .execute(sql)
            .await
            .map(drop)
            .map_err(|e| AuditError::sql(url, &e))
    )
}
