//! MySQL/MariaDB locks of a session: `GET_LOCK` on the pinned connection,
//! or the lease in `dbjanitor_leases` (kind `lease`, and `auto` on a Galera
//! node), fenced right before COMMIT.
//!
//! Why apart from `mysql.rs`: which lock a session holds, how it is taken,
//! released and checked before COMMIT is one concern; the session's
//! transaction and detect handling is another.

use std::time::Duration;

use sqlx::mysql::MySql;

use super::super::lease;
use super::super::lease_mysql::MySqlLeases;
use super::super::lock::LockKind;
use super::super::text::TextConn;
use super::super::{DbError, mysql_lock_name};
use super::{MySqlSession, Txn};

/// The shortest lease.
const MIN_LEASE: Duration = Duration::from_secs(3);

impl MySqlSession {
    pub(super) async fn get_lock(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> Result<bool, DbError> {
        let name = quote(&mysql_lock_name(&self.schema, lock_name));
        // GET_LOCK takes whole seconds on every server version; a negative value would
        // wait forever on MySQL, so the wait is never negative.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        match self
            .text
            .fetch_text(&format!("SELECT GET_LOCK({name}, {seconds})"))
            .await?
            .as_deref()
        {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            other => Err(DbError::Sql(format!(
                "GET_LOCK returned {other:?} (an error, or a Galera cluster where GET_LOCK is unsupported)"
            ))),
        }
    }

    pub(super) async fn release_lock(&mut self, lock_name: &str) -> Result<(), DbError> {
        if let Some(held) = self.lease.take() {
            return lease::release(&mut MySqlLeases(&mut self.text), &held).await;
        }
        let name = quote(&mysql_lock_name(&self.schema, lock_name));
        self.text.run(&format!("DO RELEASE_LOCK({name})")).await
    }

    /// The lock kind in use (after `auto` was resolved).
    #[must_use]
    pub fn lock_kind(&self) -> LockKind {
        self.kind
    }

    /// The lease length: renewed before every batch, so three statement
    /// timeouts leave room for a batch and its pause.
    pub(super) fn lease_ttl(&self) -> Duration {
        (self.timeout * 3).max(MIN_LEASE)
    }

    /// `GET_LOCK`, or the lease with kind `lease`.
    pub(super) async fn take_lock(
        &mut self,
        lock_name: &str,
        wait: Duration,
    ) -> Result<bool, DbError> {
        if self.kind != LockKind::Lease {
            return self.get_lock(lock_name, wait).await;
        }
        let ttl = self.lease_ttl();
        match lease::acquire(&mut MySqlLeases(&mut self.text), lock_name, ttl, wait).await? {
            Some(held) => {
                self.lease = Some(held);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Fencing (a lease must still be ours, checked and extended inside the
    /// transaction that is about to commit), then COMMIT.
    pub(super) async fn fenced_commit(&mut self) -> Result<(), DbError> {
        self.commit_sent = false;
        if self.txn == Txn::ReadWrite
            && let Some(held) = &self.lease
            && let Err(lost) = lease::fence(&mut MySqlLeases(&mut self.text), held).await
        {
            // COMMIT is never sent; the acknowledged ROLLBACK makes the
            // rollback observed, not assumed (else the connection's close
            // rolls it back: it cannot commit without COMMIT).
            if self.text.run("ROLLBACK").await.is_ok() {
                self.txn = Txn::None;
            }
            return Err(lost);
        }
        self.commit_sent = true;
        self.text.run("COMMIT").await?;
        self.txn = Txn::None;
        Ok(())
    }
}

/// Whether the server is a Galera node with replication on (`wsrep_on`),
/// where `GET_LOCK` holds on that node only. A server without the variable
/// (MySQL, MariaDB without Galera support) is not.
pub(super) async fn galera_node(text: &mut TextConn<MySql>) -> Result<bool, DbError> {
    let rows = text
        .detect("SHOW SESSION VARIABLES LIKE 'wsrep_on'", 1, None)
        .await?;
    Ok(rows
        .sample
        .rows
        .first()
        .and_then(|row| row.get(1).cloned().flatten())
        .is_some_and(|value| value.eq_ignore_ascii_case("ON")))
}

/// Quotes a string literal for MySQL (our own lock names only).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}
