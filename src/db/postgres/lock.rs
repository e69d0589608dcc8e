//! The PostgreSQL session's locks: what it holds ([`Held`]), advisory locks
//! polled until `lock.wait` (a transaction per attempt, or on the session),
//! and leases (kind `lease`, or `auto` behind a pooler; see `db/lease.rs`).

use std::time::{Duration, Instant};

use super::PgSession;
use crate::db::lease::{self, Lease, PgLeases};
use crate::db::{DbError, postgres_schema_lock_key};

/// How often a waiting lock is retried.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// The shortest lease.
const MIN_LEASE: Duration = Duration::from_secs(3);

/// The lock currently held on this session.
pub(super) enum Held {
    None,
    /// A session advisory lock with this key.
    Advisory(i64),
    /// A lease.
    Lease(Lease),
}

impl PgSession {
    /// The lease length: renewed before every batch, so three statement
    /// timeouts leave room for a batch and its pause.
    fn lease_ttl(&self) -> Duration {
        (self.timeout * 3).max(MIN_LEASE)
    }

    pub(super) fn key(&self, lock_name: &str) -> i64 {
        postgres_schema_lock_key(&self.schemas, lock_name)
    }

    /// Takes a lease for `lock_name` (polling for `wait`).
    pub(super) async fn take_lease(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> Result<bool, DbError> {
        let ttl = self.lease_ttl();
        match lease::acquire(&mut PgLeases(&self.conn), lock_name, ttl, wait).await? {
            Some(held) => {
                self.held = Held::Lease(held);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) async fn drop_lease(&mut self) -> Result<(), DbError> {
        if let Held::Lease(held) = std::mem::replace(&mut self.held, Held::None) {
            lease::release(&mut PgLeases(&self.conn), &held).await?;
        }
        Ok(())
    }

    /// The wait for the lock, polled with `try_sql`, each attempt in a
    /// transaction of its own (`in_transaction`) or on the session.
    pub(super) async fn poll_lock(
        &mut self,
        try_sql: &str,
        wait: Duration,
        in_transaction: bool,
    ) -> Result<bool, DbError> {
        let deadline = Instant::now() + wait;
        loop {
            let granted = if in_transaction {
                let granted = self.open_transaction(&format!("; {try_sql}")).await?;
                if granted.as_deref() != Some("t") {
                    self.end_transaction(false).await?;
                }
                granted
            } else {
                self.conn.text(try_sql).await?
            };
            if granted.as_deref() == Some("t") {
                return Ok(true);
            }
            if Instant::now() + LOCK_POLL > deadline {
                return Ok(false);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}
