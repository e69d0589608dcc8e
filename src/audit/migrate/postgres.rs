//! [`Migrator`] for PostgreSQL: the whole upgrade is one transaction (DDL is
//! transactional there) under `pg_advisory_xact_lock`, sent through the
//! unnamed statement or the simple protocol (nothing named is prepared), so
//! it works behind PgBouncer in transaction mode.

use std::time::Duration;

use super::{MIGRATION_LOCK, Migration, Migrator, record_version};
use crate::audit::{AuditError, Conn};
use crate::db::{Dialect, millis, postgres_lock_key};
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version integer PRIMARY KEY, name varchar(100) NOT NULL, applied_at timestamptz NOT NULL, \
    dirty boolean NOT NULL DEFAULT false, applied_by varchar(64) NOT NULL)";

/// 1 when the table `?` exists (in the search path), else 0.
pub(super) const TABLE_EXISTS: &str =
    "SELECT COUNT(*) FROM (SELECT to_regclass(?) AS t) AS x WHERE t IS NOT NULL";

/// A PostgreSQL connection migrating, waiting at most `lock_wait` for the
/// other migrator and for its table locks (`lock_timeout`).
pub(super) struct Migrate<'c> {
    c: &'c mut Conn,
    lock_wait: Duration,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(c: &'c mut Conn, lock_wait: Duration) -> Self {
        Self { c, lock_wait }
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn conn(&mut self) -> &mut Conn {
        self.c
    }

    /// BEGIN (READ COMMITTED), `SET LOCAL lock_timeout`, the transaction-scoped
    /// advisory lock (safe behind a pooler), the version table.
    async fn lock(&mut self) -> Result<(), AuditError> {
        self.c
            .batch("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
            .await?;
        let locked = self
            .c
            .batch(&format!(
                "SET LOCAL lock_timeout = {}; SELECT pg_advisory_xact_lock({}); {VERSION_TABLE}",
                millis(self.lock_wait),
                postgres_lock_key(MIGRATION_LOCK)
            ))
            .await;
        if locked.is_err() {
            let _ = self.c.batch("ROLLBACK").await;
        }
        Ok(locked?)
    }

    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError> {
        for statement in split_statements(migration.postgres, Dialect::Postgres) {
            self.c
                .batch(statement)
                .await
                .map_err(|e| AuditError::migration_text(migration, e.to_string()))?;
        }
        record_version(self.c, migration, false).await
    }

    /// COMMIT, or ROLLBACK (its own failure ignored: the caller drops the
    /// connection after an error, which rolls back too).
    async fn unlock(&mut self, ok: bool) -> Result<(), AuditError> {
        if ok {
            Ok(self.c.batch("COMMIT").await?)
        } else {
            let _ = self.c.batch("ROLLBACK").await;
            Ok(())
        }
    }
}
