//! Leases: a lock that survives transaction pooling.
//!
//! An advisory lock belongs to a server connection. Behind PgBouncer in
//! transaction mode every transaction may run on another server connection,
//! so a session-level lock taken in one transaction is neither held for the
//! next nor released by the unlock (issue 15). A lease lives in a table
//! instead, `dbjanitor_leases` in the target database (in the first schema of
//! the connection's `search_path`, so two tenants' schemas have their own):
//!
//! | column | |
//! | --- | --- |
//! | `name` | the rule's lock name (primary key) |
//! | `owner` | who holds it: host, process id and a random part |
//! | `token` | fencing token: +1 at every acquisition, never reused |
//! | `expires_at` | the server's clock; after it anyone may take the lease |
//! | `acquired_at`, `renewed_at` | for the operator |
//!
//! Every lease operation is a short transaction of its own (READ COMMITTED,
//! whatever the database's default), using the server's clock only, so
//! clients' clocks do not matter. A holder renews the lease before each batch
//! and re-checks it (fencing) inside the batch's transaction right before
//! COMMIT: a holder that stalled past `expires_at` finds its lease gone or
//! taken, and rolls back instead of committing. A holder that dies simply
//! stops renewing; the lease expires on its own.
//!
//! The table is created on first use (`CREATE TABLE IF NOT EXISTS`, under a
//! transaction-scoped advisory lock so two first users do not collide). A role
//! that may not create it gets an error naming the statement to run.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::DbError;
use super::pgconn::PgConn;

/// The lease table's DDL (also in the README).
pub const LEASE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_leases (\
    name text PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL, \
    expires_at timestamptz NOT NULL, acquired_at timestamptz NOT NULL, \
    renewed_at timestamptz NOT NULL)";

/// How often a waiting acquisition retries.
const POLL: Duration = Duration::from_millis(100);

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The lock name.
    pub(crate) name: String,
    /// Our owner string.
    pub(crate) owner: String,
    /// The fencing token we got.
    pub(crate) token: i64,
    /// How long each acquisition or renewal lasts.
    pub(crate) ttl: Duration,
}

/// A unique owner for this process and session.
pub(crate) fn owner() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{nanos:08x}", std::process::id())
}

fn interval(ttl: Duration) -> String {
    format!("{} milliseconds", ttl.as_millis().max(1))
}

/// Runs `body` (one statement with parameters) in its own READ COMMITTED
/// transaction with a short lock timeout; returns the rows it returned.
async fn short_transaction(
    conn: &PgConn,
    sql: &str,
    params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
) -> Result<u64, DbError> {
    conn.batch(
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; \
         SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'",
    )
    .await?;
    let result = conn.execute_one(sql, params).await;
    match result {
        Ok(rows) => {
            conn.batch("COMMIT").await?;
            Ok(rows)
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Creates the lease table if it is missing.
async fn ensure_table(conn: &PgConn) -> Result<(), DbError> {
    let exists = conn
        .text("SELECT to_regclass('dbjanitor_leases') IS NOT NULL")
        .await?;
    if exists.as_deref() == Some("t") {
        return Ok(());
    }
    let create = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({}); {LEASE_TABLE_SQL}; COMMIT",
        super::postgres_lock_key("dbjanitor.leases.create")
    );
    if let Err(e) = conn.batch(&create).await {
        let _ = conn.batch("ROLLBACK").await;
        return Err(DbError::Sql(format!(
            "the lease table dbjanitor_leases does not exist and cannot be created ({e}); \
             create it once as its owner: {LEASE_TABLE_SQL}, and GRANT SELECT, INSERT, UPDATE on it to dbjanitor's role"
        )));
    }
    Ok(())
}

const ACQUIRE: &str = "INSERT INTO dbjanitor_leases AS l (name, owner, token, expires_at, acquired_at, renewed_at) \
    VALUES ($1, $2, 1, clock_timestamp() + $3::text::interval, clock_timestamp(), clock_timestamp()) \
    ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, token = l.token + 1, \
    expires_at = EXCLUDED.expires_at, acquired_at = EXCLUDED.acquired_at, renewed_at = EXCLUDED.renewed_at \
    WHERE l.expires_at <= clock_timestamp()";

const TOKEN: &str = "SELECT token FROM dbjanitor_leases WHERE name = $1 AND owner = $2";

const RENEW: &str = "UPDATE dbjanitor_leases SET expires_at = clock_timestamp() + $4::text::interval, \
    renewed_at = clock_timestamp() \
    WHERE name = $1 AND owner = $2 AND token = $3 AND expires_at > clock_timestamp()";

const RELEASE: &str = "UPDATE dbjanitor_leases SET expires_at = '-infinity' \
    WHERE name = $1 AND owner = $2 AND token = $3";

/// Takes the lease `name` for `ttl`, retrying for `wait`; `None` when another
/// holder keeps it.
pub(crate) async fn acquire(
    conn: &PgConn,
    name: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<Lease>, DbError> {
    ensure_table(conn).await?;
    let owner = owner();
    let ttl_text = interval(ttl);
    let deadline = Instant::now() + wait;
    loop {
        let taken = short_transaction(
            conn,
            ACQUIRE,
            &[
                (&name, Type::TEXT),
                (&owner, Type::TEXT),
                (&ttl_text, Type::TEXT),
            ],
        )
        .await;
        match taken {
            Ok(1) => break,
            Ok(_) => {}
            // Another holder is committing a renewal right now: held.
            Err(DbError::Sql(text)) if text.contains("(code 55P03)") => {}
            Err(e) => return Err(e),
        }
        if Instant::now() + POLL > deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
    let rows = conn
        .query_one_stmt(TOKEN, &[(&name, Type::TEXT), (&owner, Type::TEXT)])
        .await?;
    let token = rows
        .first()
        .and_then(|row| row.try_get::<_, i64>(0).ok())
        .ok_or_else(|| DbError::Sql(format!("lease {name:?} vanished right after it was taken")))?;
    Ok(Some(Lease {
        name: name.to_owned(),
        owner,
        token,
        ttl,
    }))
}

fn lost(lease: &Lease) -> DbError {
    DbError::Sql(format!(
        "the lease {:?} (token {}) expired or was taken by another run; nothing more is committed",
        lease.name, lease.token
    ))
}

/// Extends the lease in a transaction of its own; an error when it was lost.
pub(crate) async fn renew(conn: &PgConn, lease: &Lease) -> Result<(), DbError> {
    let ttl_text = interval(lease.ttl);
    let rows = short_transaction(conn, RENEW, &renew_params(lease, &ttl_text)).await?;
    if rows == 1 { Ok(()) } else { Err(lost(lease)) }
}

/// Fencing: extends the lease INSIDE the caller's open transaction, right
/// before its COMMIT. The row lock it takes is held until that COMMIT, so no
/// one can take the lease in between; an error (the caller rolls back) when
/// the lease had already expired or changed hands.
pub(crate) async fn fence(conn: &PgConn, lease: &Lease) -> Result<(), DbError> {
    let ttl_text = interval(lease.ttl);
    let rows = conn
        .execute_one(RENEW, &renew_params(lease, &ttl_text))
        .await?;
    if rows == 1 { Ok(()) } else { Err(lost(lease)) }
}

fn renew_params<'a>(
    lease: &'a Lease,
    ttl_text: &'a String,
) -> [(&'a (dyn tokio_postgres::types::ToSql + Sync), Type); 4] {
    [
        (&lease.name, Type::TEXT),
        (&lease.owner, Type::TEXT),
        (&lease.token, Type::INT8),
        (ttl_text, Type::TEXT),
    ]
}

/// Gives the lease up (it expires at once); the token stays, so the next
/// holder's token is higher.
pub(crate) async fn release(conn: &PgConn, lease: &Lease) -> Result<(), DbError> {
    short_transaction(
        conn,
        RELEASE,
        &[
            (&lease.name, Type::TEXT),
            (&lease.owner, Type::TEXT),
            (&lease.token, Type::INT8),
        ],
    )
    .await
    .map(|_| ())
}
