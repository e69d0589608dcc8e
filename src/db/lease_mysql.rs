//! Leases on MySQL/MariaDB: the same `dbjanitor_leases` table and the same
//! acquisition loop as on PostgreSQL (see `lease`), in MySQL's spelling.
//!
//! Why a lease here at all: `GET_LOCK` belongs to one server. On a Galera
//! cluster (MariaDB Galera, Percona XtraDB Cluster) two runs that reach two
//! different nodes both get "their" `GET_LOCK` and fix the same rows. A row
//! in an InnoDB table is replicated, and a write to it is certified
//! cluster-wide at COMMIT: of two transactions that update the lease row on
//! two nodes, one commits and the other fails with a deadlock error.
//!
//! - The clock is the server's, in UTC (`UTC_TIMESTAMP(6)`), so neither the
//!   client's clock nor the session's `time_zone` matter (`DATETIME` has no
//!   zone). On Galera the nodes' clocks should be synchronised (NTP); a skew
//!   shortens or lengthens a lease by that much, the fencing still holds
//!   because it compares tokens, not only times.
//! - `name` is `VARCHAR(191)` in `utf8mb4_bin` (case-sensitive, and within
//!   the 767-byte index limit of older InnoDB row formats); a longer lock
//!   name keeps its first 174 characters, `~` and 16 hex digits of SHA-256
//!   over the full name, so it stays unique ([`lease_key`]).
//! - Each acquisition, renewal and release is a short transaction of its own
//!   (`SET TRANSACTION ISOLATION LEVEL READ COMMITTED` applies to that next
//!   transaction only) with `innodb_lock_wait_timeout` lowered to 2 s for
//!   the session and restored right after, so a holder committing a renewal
//!   delays an acquirer by at most that.
//! - Fencing is an `UPDATE` of the lease row with our token that is not
//!   expired, inside the batch's (or the fix's) transaction right before
//!   COMMIT: a locking read of the newest committed row that keeps it
//!   locked until our COMMIT (no one can take the lease in between), and a
//!   write, so on Galera the row is in our write set and a takeover on
//!   another node makes one of the two COMMITs fail certification. (A bare
//!   `SELECT ... FOR UPDATE` would lock it on one node only.)
//! - The table is created on first use with `CREATE TABLE IF NOT EXISTS`
//!   outside any transaction (it commits implicitly); a role that may not
//!   gets an error naming the DDL to run.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::mysql::MySql;

use super::DbError;
use super::lease::{Lease, LeaseStore};
use super::text::TextConn;

/// The lease table's DDL on MySQL/MariaDB (also in the README).
pub const MYSQL_LEASE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_leases (\
    name VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
    owner VARCHAR(255) NOT NULL, token BIGINT NOT NULL, \
    expires_at DATETIME(6) NOT NULL, acquired_at DATETIME(6) NOT NULL, \
    renewed_at DATETIME(6) NOT NULL) ENGINE=InnoDB";

/// Longest `name` the table's key holds, in characters.
const KEY_LIMIT: usize = 191;

/// The lease row's key for a lock name: the name itself when it fits in
/// [`KEY_LIMIT`] characters, else its first characters, `~` and 16 hex digits
/// of SHA-256 over the full name. The table is per schema (`DATABASE()`), so
/// unlike a `GET_LOCK` name the schema is not part of it.
#[must_use]
pub(crate) fn lease_key(name: &str) -> String {
    if name.chars().count() <= KEY_LIMIT {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = name.chars().take(KEY_LIMIT - 1 - hex.len()).collect();
    format!("{prefix}~{hex}")
}

/// How long a lease statement waits for a row lock another run holds.
const LOCK_WAIT_SECS: u32 = 2;

const EXISTS: &str = "SELECT COUNT(*) FROM information_schema.tables \
    WHERE table_schema = DATABASE() AND table_name = 'dbjanitor_leases'";

const INSERT: &str = "INSERT IGNORE INTO dbjanitor_leases \
    (name, owner, token, expires_at, acquired_at, renewed_at) \
    VALUES (?, ?, 1, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))";

const TAKE_OVER: &str = "UPDATE dbjanitor_leases SET owner = ?, token = token + 1, \
    acquired_at = UTC_TIMESTAMP(6), renewed_at = UTC_TIMESTAMP(6), \
    expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
    WHERE name = ? AND expires_at <= UTC_TIMESTAMP(6)";

const TOKEN: &str = "SELECT token FROM dbjanitor_leases WHERE name = ? AND owner = ?";

const RENEW: &str = "UPDATE dbjanitor_leases \
    SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, renewed_at = UTC_TIMESTAMP(6) \
    WHERE name = ? AND owner = ? AND token = ? AND expires_at > UTC_TIMESTAMP(6)";

const RELEASE: &str = "UPDATE dbjanitor_leases SET expires_at = '1000-01-01 00:00:00' \
    WHERE name = ? AND owner = ? AND token = ?";

/// MySQL/MariaDB leases on the run's pinned connection.
pub(crate) struct MySqlLeases<'a>(pub(crate) &'a mut TextConn<MySql>);

fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).max(1)
}

impl MySqlLeases<'_> {
    /// One bound statement; rows matched (sqlx sets `CLIENT_FOUND_ROWS`).
    async fn exec(
        &mut self,
        query: sqlx::query::Query<'_, MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<u64, DbError> {
        self.0.execute_bound(query).await
    }

    /// Opens a READ COMMITTED transaction of its own with a short lock
    /// wait; [`Self::end_short`] ends it.
    async fn begin_short(&mut self) -> Result<(), DbError> {
        self.0
            .run(&format!(
                "SET @dbjanitor_lock_wait = @@SESSION.innodb_lock_wait_timeout, \
                 SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECS}"
            ))
            .await?;
        self.0
            .run("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
        self.0.run("START TRANSACTION").await
    }

    /// Commits the short transaction when `body` succeeded, else rolls it
    /// back; the session's lock wait is restored either way.
    async fn end_short<T>(&mut self, body: Result<T, DbError>) -> Result<T, DbError> {
        let result = match body {
            Ok(value) => self.0.run("COMMIT").await.map(|()| value),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self.0.run("ROLLBACK").await;
        }
        let restored = self
            .0
            .run("SET SESSION innodb_lock_wait_timeout = @dbjanitor_lock_wait")
            .await;
        let value = result?;
        restored?;
        Ok(value)
    }

    async fn renew_statement(&mut self, lease: &Lease) -> Result<u64, DbError> {
        let key = lease_key(&lease.name);
        self.exec(
            sqlx::query(RENEW)
                .bind(micros(lease.ttl))
                .bind(key)
                .bind(lease.owner.clone())
                .bind(lease.token),
        )
        .await
    }
}

impl LeaseStore for MySqlLeases<'_> {
    async fn ensure_table(&mut self) -> Result<(), DbError> {
        if self.0.fetch_text(EXISTS).await?.as_deref() == Some("1") {
            return Ok(());
        }
        if let Err(e) = self.0.run(MYSQL_LEASE_TABLE_SQL).await {
            return Err(DbError::Sql(format!(
                "the lease table dbjanitor_leases does not exist and cannot be created ({e}); \
                 create it once: {MYSQL_LEASE_TABLE_SQL}, and GRANT SELECT, INSERT, UPDATE on it to dbjanitor's user"
            )));
        }
        Ok(())
    }

    async fn try_take(&mut self, name: &str, owner: &str, ttl: Duration) -> Result<bool, DbError> {
        let key = lease_key(name);
        let owner = owner.to_owned();
        // Take over an expired row first (an exclusive lock at once), insert
        // only when there is none: an INSERT's shared lock on a duplicate
        // followed by an UPDATE would deadlock with a holder's renewal.
        self.begin_short().await?;
        let updated = self
            .exec(
                sqlx::query(TAKE_OVER)
                    .bind(owner.clone())
                    .bind(micros(ttl))
                    .bind(key.clone()),
            )
            .await;
        let taken = match updated {
            Ok(1) => Ok(true),
            Ok(_) => self
                .exec(sqlx::query(INSERT).bind(key).bind(owner).bind(micros(ttl)))
                .await
                .map(|rows| rows == 1),
            Err(e) => Err(e),
        };
        self.end_short(taken).await
    }

    async fn token(&mut self, name: &str, owner: &str) -> Result<Option<i64>, DbError> {
        let row = self
            .0
            .fetch_optional_bound(
                sqlx::query(TOKEN)
                    .bind(lease_key(name))
                    .bind(owner.to_owned()),
            )
            .await?;
        Ok(row.and_then(|row| row.try_get::<i64, _>(0).ok()))
    }

    async fn renew(&mut self, lease: &Lease) -> Result<bool, DbError> {
        self.begin_short().await?;
        let renewed = self.renew_statement(lease).await;
        self.end_short(renewed).await.map(|rows| rows == 1)
    }

    async fn fence(&mut self, lease: &Lease) -> Result<bool, DbError> {
        self.renew_statement(lease).await.map(|rows| rows == 1)
    }

    async fn release(&mut self, lease: &Lease) -> Result<(), DbError> {
        let key = lease_key(&lease.name);
        self.begin_short().await?;
        let released = self
            .exec(
                sqlx::query(RELEASE)
                    .bind(key)
                    .bind(lease.owner.clone())
                    .bind(lease.token),
            )
            .await;
        self.end_short(released).await.map(|_| ())
    }

    fn is_contention(error: &DbError) -> bool {
        // 1205 lock wait timeout; 1213 deadlock, also Galera's certification
        // failure ("WSREP detected deadlock/conflict"), SQLSTATE 40001.
        matches!(error, DbError::Sql(text) | DbError::Timeout(text)
            if text.contains("Lock wait timeout exceeded")
                || text.contains("(code 40001)")
                || text.to_ascii_lowercase().contains("deadlock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lock_names_get_a_unique_key_that_fits() {
        assert_eq!(lease_key("archive"), "archive");
        let long = "x".repeat(300);
        let a = lease_key(&long);
        let b = lease_key(&format!("{long}y"));
        assert_eq!(a.chars().count(), KEY_LIMIT);
        assert_ne!(a, b);
        let exact = "é".repeat(KEY_LIMIT);
        assert_eq!(lease_key(&exact), exact);
    }

    #[test]
    fn lock_waits_and_certification_failures_are_contention() {
        let wait = DbError::Sql(
            "Lock wait timeout exceeded; try restarting transaction (code HY000)".to_owned(),
        );
        let wsrep =
            DbError::Sql("WSREP detected deadlock/conflict and aborted the transaction. Try restarting the transaction (code 40001)".to_owned());
        assert!(MySqlLeases::is_contention(&wait));
        assert!(MySqlLeases::is_contention(&wsrep));
        assert!(!MySqlLeases::is_contention(&DbError::Sql(
            "Table 'x' doesn't exist (code 42S02)".to_owned()
        )));
    }
}
