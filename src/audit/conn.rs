//! One connection to the audit database, opened per operation and never
//! pooled (the audit database may come and go between runs).
//!
//! The connection is the `db` layer's [`TypedConn`], opened by the same
//! connect code as the engine's sessions (URL handling, TLS, keepalives,
//! scrubbed errors); what is the audit's own is its [`Purpose`] (PostgreSQL
//! `application_name` `dbjanitor-audit`, SQLite busy timeout, the connect
//! bound [`TIMEOUT`]) and how an operation ends ([`finish`]: a polite close
//! after a success, a drop without waiting after anything else).

use std::time::Duration;

use super::{AuditError, TIMEOUT};
use crate::db::DatabaseConfig;
use crate::db::typed::Purpose;
pub(crate) use crate::db::typed::TypedConn as Conn;

/// How the audit's connections name themselves and what bounds them.
const PURPOSE: Purpose = Purpose {
    application_name: "dbjanitor-audit",
    connect_timeout: TIMEOUT,
    busy_timeout: TIMEOUT,
};

/// Connects to `db` within [`TIMEOUT`] (the store's shorter `audit.timeout`
/// applies on top).
pub(super) async fn open(db: &DatabaseConfig) -> Result<Conn, AuditError> {
    tokio::time::timeout(TIMEOUT, Conn::open(db, &PURPOSE))
        .await
        .map_err(|_| AuditError::Timeout(TIMEOUT))?
        .map_err(AuditError::from)
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

/// Opens one of the audit's own transactions: READ COMMITTED on PostgreSQL
/// (the audit's statements need no stronger isolation, whatever the
/// database's default), the server's default elsewhere.
pub(super) async fn begin(conn: &mut Conn) -> Result<(), AuditError> {
    let sql = match conn.dialect() {
        crate::db::Dialect::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE",
        crate::db::Dialect::MySql | crate::db::Dialect::Sqlite => "BEGIN",
    };
    Ok(conn.batch(sql).await?)
}

/// Ends the transaction open on `conn`: COMMIT after `result` succeeded,
/// else ROLLBACK (its own failure ignored: the caller drops the connection
/// after an error, which rolls back too) and `result`'s error.
pub(super) async fn end<T>(
    conn: &mut Conn,
    result: Result<T, AuditError>,
) -> Result<T, AuditError> {
    match result {
        Ok(value) => {
            conn.batch("COMMIT").await?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK").await;
            Err(e)
        }
    }
}
