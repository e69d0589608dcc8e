//! [`Migrator`] for PostgreSQL: the whole upgrade is one transaction (DDL is
//! transactional there) under `pg_advisory_xact_lock`, sent through the
//! unnamed statement so it works behind PgBouncer in transaction mode.

use std::time::Duration;

use chrono::Utc;
use tokio_postgres::types::Type;

use super::{MIGRATION_LOCK, Migration, Migrator, VersionRow};
use crate::audit::{AuditError, VERSION};
use crate::db::pgconn::PgConn;
use crate::db::{DbError, Dialect, postgres_lock_key};
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version integer PRIMARY KEY, name varchar(100) NOT NULL, applied_at timestamptz NOT NULL, \
    dirty boolean NOT NULL DEFAULT false, applied_by varchar(64) NOT NULL)";

fn sql_err(e: DbError) -> AuditError {
    AuditError::Sql(e.to_string())
}

/// A PostgreSQL connection migrating, waiting at most `lock_wait` for the
/// other migrator and for its table locks (`lock_timeout`).
pub(super) struct Migrate<'c> {
    c: &'c PgConn,
    lock_wait: Duration,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(c: &'c PgConn, lock_wait: Duration) -> Self {
        Self { c, lock_wait }
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    /// BEGIN (READ COMMITTED), `SET LOCAL lock_timeout`, the transaction-scoped
    /// advisory lock (safe behind a pooler), the version table.
    async fn lock(&mut self) -> Result<(), AuditError> {
        self.c
            .batch("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
            .await
            .map_err(sql_err)?;
        let locked = self
            .c
            .batch(&format!(
                "SET LOCAL lock_timeout = {}; SELECT pg_advisory_xact_lock({}); {VERSION_TABLE}",
                self.lock_wait.as_millis().max(1),
                postgres_lock_key(MIGRATION_LOCK)
            ))
            .await
            .map_err(sql_err);
        if locked.is_err() {
            let _ = self.c.batch("ROLLBACK").await;
        }
        locked
    }

    async fn versions(&mut self) -> Result<Vec<VersionRow>, AuditError> {
        let rows = self
            .c
            .query_one_stmt(
                "SELECT version, name::text, dirty FROM dbjanitor_schema_version",
                &[],
            )
            .await
            .map_err(sql_err)?;
        let decode = |e: tokio_postgres::Error| AuditError::Sql(e.to_string());
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let version: i32 = row.try_get(0).map_err(decode)?;
            let name: String = row.try_get(1).map_err(decode)?;
            let dirty: bool = row.try_get(2).map_err(decode)?;
            found.push((i64::from(version), name, dirty));
        }
        Ok(found)
    }

    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError> {
        for statement in split_statements(migration.postgres, Dialect::Postgres) {
            self.c
                .execute_one(statement, &[])
                .await
                .map_err(|e| AuditError::migration_text(migration, e.to_string()))?;
        }
        let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
        let now = Utc::now();
        self.c
            .execute_one(
                "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES ($1, $2, $3, false, $4)",
                &[
                    (&version, Type::INT4),
                    (&migration.name, Type::TEXT),
                    (&now, Type::TIMESTAMPTZ),
                    (&VERSION, Type::TEXT),
                ],
            )
            .await
            .map_err(sql_err)?;
        Ok(())
    }

    /// COMMIT, or ROLLBACK (its own failure ignored: the caller drops the
    /// connection after an error, which rolls back too).
    async fn unlock(&mut self, ok: bool) -> Result<(), AuditError> {
        if ok {
            self.c.batch("COMMIT").await.map_err(sql_err)
        } else {
            let _ = self.c.batch("ROLLBACK").await;
            Ok(())
        }
    }
}

/// The schema version; 0 when there is no version table (or no row) yet.
pub(super) async fn version_if_any(c: &PgConn) -> Result<i64, AuditError> {
    let exists = c
        .text("SELECT COUNT(*) FROM (SELECT to_regclass('dbjanitor_schema_version') AS t) AS x WHERE t IS NOT NULL")
        .await
        .map_err(sql_err)?
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(0);
    if exists == 0 {
        return Ok(0);
    }
    let version = c
        .text("SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version")
        .await
        .map_err(sql_err)?;
    Ok(version.and_then(|v| v.parse().ok()).unwrap_or(0))
}
