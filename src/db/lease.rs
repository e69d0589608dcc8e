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
//!
//! One acquisition loop and one notion of "lost" serve every dialect; what
//! differs (the DDL, the upsert, how a lock wait is spelled, the clock
//! function) sits behind [`LeaseStore`]: [`PgLeases`] here, and
//! `lease_mysql::MySqlLeases` for MySQL/MariaDB (where the lease is the
//! answer for Galera, whose `GET_LOCK` is node-local).

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::DbError;
use super::pgconn::PgConn;

/// The lease table's DDL on PostgreSQL (also in the README).
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

/// What one dialect must provide for the shared lease logic. Every method
/// except [`LeaseStore::fence`] runs in a short transaction of its own;
/// `fence` runs inside the caller's open transaction.
pub(crate) trait LeaseStore {
    /// Creates the lease table if it is missing (an error naming the DDL to
    /// run when the role may not).
    async fn ensure_table(&mut self) -> Result<(), DbError>;

    /// One attempt to take `name` for `owner`: inserts the row or takes it
    /// over when expired (token + 1). `Ok(true)` when taken.
    async fn try_take(&mut self, name: &str, owner: &str, ttl: Duration) -> Result<bool, DbError>;

    /// The token of `name` when `owner` holds it.
    async fn token(&mut self, name: &str, owner: &str) -> Result<Option<i64>, DbError>;

    /// Extends `lease` when it is still ours and not expired; `Ok(false)` when lost.
    async fn renew(&mut self, lease: &Lease) -> Result<bool, DbError>;

    /// [`LeaseStore::renew`] inside the caller's transaction, keeping the
    /// lease row locked until that transaction ends.
    async fn fence(&mut self, lease: &Lease) -> Result<bool, DbError>;

    /// Makes the lease expire at once (the token stays).
    async fn release(&mut self, lease: &Lease) -> Result<(), DbError>;

    /// Whether an error of `try_take` means "someone else is busy with the
    /// row right now" (a lock wait timed out, a deadlock, a certification
    /// conflict): then the attempt counts as "held" and is retried.
    fn is_contention(error: &DbError) -> bool;
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

/// Takes the lease `name` for `ttl`, retrying for `wait`; `None` when another
/// holder keeps it.
pub(crate) async fn acquire<S: LeaseStore>(
    store: &mut S,
    name: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<Lease>, DbError> {
    store.ensure_table().await?;
    let owner = owner();
    let deadline = Instant::now() + wait;
    loop {
        match store.try_take(name, &owner, ttl).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) if S::is_contention(&e) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() + POLL > deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
    let token = store
        .token(name, &owner)
        .await?
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

/// Attempts of a renewal or release that meets contention (an acquirer
/// busy with the row) before it gives up.
const RETRIES: u32 = 5;

/// Extends the lease in a transaction of its own; an error when it was lost.
/// Contention with a waiting acquirer is retried: only the row can say
/// whether the lease is still ours.
pub(crate) async fn renew<S: LeaseStore>(store: &mut S, lease: &Lease) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        match store.renew(lease).await {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(lost(lease)),
            Err(e) if S::is_contention(&e) && attempt < RETRIES => attempt += 1,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Fencing: extends the lease INSIDE the caller's open transaction, right
/// before its COMMIT. The row lock it takes is held until that COMMIT, so no
/// one can take the lease in between; an error (the caller rolls back) when
/// the lease had already expired or changed hands.
pub(crate) async fn fence<S: LeaseStore>(store: &mut S, lease: &Lease) -> Result<(), DbError> {
    if store.fence(lease).await? {
        Ok(())
    } else {
        Err(lost(lease))
    }
}

/// Gives the lease up (it expires at once); the token stays, so the next
/// holder's token is higher.
pub(crate) async fn release<S: LeaseStore>(store: &mut S, lease: &Lease) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        match store.release(lease).await {
            Err(e) if S::is_contention(&e) && attempt < RETRIES => attempt += 1,
            other => return other,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// PostgreSQL leases on a tokio-postgres connection.
pub(crate) struct PgLeases<'a>(pub(crate) &'a PgConn);

fn interval(ttl: Duration) -> String {
    format!("{} milliseconds", ttl.as_millis().max(1))
}

/// Runs one statement with parameters in its own READ COMMITTED transaction
/// with a short lock timeout; returns the rows it affected.
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

impl LeaseStore for PgLeases<'_> {
    async fn ensure_table(&mut self) -> Result<(), DbError> {
        let conn = self.0;
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

    async fn try_take(&mut self, name: &str, owner: &str, ttl: Duration) -> Result<bool, DbError> {
        let ttl_text = interval(ttl);
        let rows = short_transaction(
            self.0,
            ACQUIRE,
            &[
                (&name, Type::TEXT),
                (&owner, Type::TEXT),
                (&ttl_text, Type::TEXT),
            ],
        )
        .await?;
        Ok(rows == 1)
    }

    async fn token(&mut self, name: &str, owner: &str) -> Result<Option<i64>, DbError> {
        let rows = self
            .0
            .query_one_stmt(TOKEN, &[(&name, Type::TEXT), (&owner, Type::TEXT)])
            .await?;
        Ok(rows.first().and_then(|row| row.try_get::<_, i64>(0).ok()))
    }

    async fn renew(&mut self, lease: &Lease) -> Result<bool, DbError> {
        let ttl_text = interval(lease.ttl);
        let rows = short_transaction(self.0, RENEW, &renew_params(lease, &ttl_text)).await?;
        Ok(rows == 1)
    }

    async fn fence(&mut self, lease: &Lease) -> Result<bool, DbError> {
        let ttl_text = interval(lease.ttl);
        let rows = self
            .0
            .execute_one(RENEW, &renew_params(lease, &ttl_text))
            .await?;
        Ok(rows == 1)
    }

    async fn release(&mut self, lease: &Lease) -> Result<(), DbError> {
        short_transaction(
            self.0,
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

    fn is_contention(error: &DbError) -> bool {
        // Another holder is committing a renewal right now (lock_timeout).
        matches!(error, DbError::Sql(text) if text.contains("(code 55P03)"))
    }
}
