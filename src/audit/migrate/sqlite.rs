//! [`Migrator`] for SQLite: the whole upgrade is one `BEGIN IMMEDIATE`
//! transaction (DDL is transactional; the write lock excludes every other
//! writer, so it is also the migration lock).

use super::{Migration, Migrator, record_version};
use crate::audit::{AuditError, Conn};
use crate::db::Dialect;
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL, \
    dirty INTEGER NOT NULL DEFAULT 0, applied_by TEXT NOT NULL)";

/// 1 when the table `?` exists, else 0.
pub(super) const TABLE_EXISTS: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?";

/// An SQLite connection migrating.
pub(super) struct Migrate<'c> {
    c: &'c mut Conn,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(c: &'c mut Conn) -> Self {
        Self { c }
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn conn(&mut self) -> &mut Conn {
        self.c
    }

    /// `BEGIN IMMEDIATE`: the write lock before reading the version.
    async fn lock(&mut self) -> Result<(), AuditError> {
        self.c.batch("BEGIN IMMEDIATE").await?;
        self.c.batch(VERSION_TABLE).await?;
        Ok(())
    }

    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError> {
        for statement in split_statements(migration.sqlite, Dialect::Sqlite) {
            self.c
                .batch(statement)
                .await
                .map_err(|e| AuditError::migration_text(migration, e.to_string()))?;
        }
        record_version(self.c, migration, false).await
    }

    async fn unlock(&mut self, ok: bool) -> Result<(), AuditError> {
        Ok(self.c.batch(if ok { "COMMIT" } else { "ROLLBACK" }).await?)
    }
}
