//! [`Migrator`] for SQLite: the whole upgrade is one `BEGIN IMMEDIATE`
//! transaction (DDL is transactional; the write lock excludes every other
//! writer, so it is also the migration lock).

use chrono::Utc;
use sqlx::{Executor, SqliteConnection};

use super::{Migration, Migrator, VersionRow};
use crate::audit::{AuditError, VERSION};
use crate::db::Dialect;
use crate::secret::SecretUrl;
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL, \
    dirty INTEGER NOT NULL DEFAULT 0, applied_by TEXT NOT NULL)";

/// An SQLite connection migrating.
pub(super) struct Migrate<'c> {
    c: &'c mut SqliteConnection,
    url: &'c SecretUrl,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(c: &'c mut SqliteConnection, url: &'c SecretUrl) -> Self {
        Self { c, url }
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// `BEGIN IMMEDIATE`: the write lock before reading the version.
    async fn lock(&mut self) -> Result<(), AuditError> {
        let url = self.url;
        let err = |e: sqlx::Error| AuditError::sql(url, &e);
        self.c.execute("BEGIN IMMEDIATE").await.map_err(err)?;
        self.c.execute(VERSION_TABLE).await.map_err(err)?;
        Ok(())
    }

    async fn versions(&mut self) -> Result<Vec<VersionRow>, AuditError> {
        let url = self.url;
        sqlx::query_as("SELECT version, name, dirty FROM dbjanitor_schema_version")
            .fetch_all(&mut *self.c)
            .await
            .map_err(|e| AuditError::sql(url, &e))
    }

    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError> {
        let url = self.url;
        for statement in split_statements(migration.sqlite, Dialect::Sqlite) {
            self.c
                .execute(sqlx::AssertSqlSafe(statement.to_owned()))
                .await
                .map_err(|e| AuditError::migration(migration, url, &e))?;
        }
        sqlx::query(
            "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES (?, ?, ?, 0, ?)",
        )
        .bind(i64::from(migration.version))
        .bind(migration.name)
        .bind(Utc::now())
        .bind(VERSION)
        .execute(&mut *self.c)
        .await
        .map_err(|e| AuditError::sql(url, &e))?;
        Ok(())
    }

    async fn unlock(&mut self, ok: bool) -> Result<(), AuditError> {
        let end = if ok { "COMMIT" } else { "ROLLBACK" };
        let url = self.url;
        self.c
            .execute(end)
            .await
            .map(drop)
            .map_err(|e| AuditError::sql(url, &e))
    }
}

/// The schema version; 0 when there is no version table (or no row) yet.
pub(super) async fn version_if_any(
    c: &mut SqliteConnection,
    url: &SecretUrl,
) -> Result<i64, AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'dbjanitor_schema_version'",
    )
    .fetch_one(&mut *c)
    .await
    .map_err(err)?;
    if exists == 0 {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version")
        .fetch_one(&mut *c)
        .await
        .map_err(err)
}
