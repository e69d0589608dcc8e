//! [`Migrator`] for MySQL/MariaDB, where DDL commits implicitly: `GET_LOCK`
//! serialises migrators, each migration is one statement, and its version row
//! is written dirty before the statement and marked done after it, so an
//! interrupted migration can be settled from the schema
//! ([`Migrator::recover`]; see the module doc of `migrate`).

use std::time::Duration;

use chrono::Utc;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{Executor, MySqlConnection, Row};

use super::{MIGRATION_LOCK, MIGRATIONS, Migration, Migrator, VersionRow};
use crate::audit::{AuditError, VERSION};
use crate::db::{Dialect, mysql_lock_name};
use crate::secret::SecretUrl;
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, applied_at DATETIME(6) NOT NULL, \
    dirty BOOLEAN NOT NULL DEFAULT FALSE, applied_by VARCHAR(64) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// After this long without an answer, a MySQL DDL is said (in a warning) to
/// be waiting for its metadata lock.
const MDL_NOTICE: Duration = Duration::from_secs(2);

/// MySQL/MariaDB `ER_LOCK_WAIT_TIMEOUT`: the DDL never got its metadata lock.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// What each MySQL migration creates, in [`MIGRATIONS`] order: `(table,
/// column)`, `None` for the table itself. After an interrupted migration the
/// schema says whether it was applied (all there), not started (none), or
/// neither.
const CREATES: [&[(&str, Option<&str>)]; MIGRATIONS.len()] = [
    &[("dbjanitor_runs", None)],
    &[
        ("dbjanitor_runs", Some("notified")),
        ("dbjanitor_runs", Some("remaining")),
        ("dbjanitor_runs", Some("batches")),
    ],
    // The unique index comes in the same ALTER TABLE: with the column or not at all.
    &[("dbjanitor_runs", Some("run_id"))],
    &[("dbjanitor_pairs", None)],
    &[
        ("dbjanitor_pairs", Some("told_seq")),
        ("dbjanitor_pairs", Some("delivered_seq")),
        ("dbjanitor_pairs", Some("delivering_until")),
    ],
];

/// A MySQL/MariaDB connection migrating, waiting at most `lock_wait` for the
/// other migrator (`GET_LOCK`) and for each DDL's metadata lock.
pub(super) struct Migrate<'c> {
    c: &'c mut MySqlConnection,
    url: &'c SecretUrl,
    lock: String,
    lock_wait: Duration,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(
        c: &'c mut MySqlConnection,
        url: &'c SecretUrl,
        schema: &str,
        lock_wait: Duration,
    ) -> Self {
        Self {
            c,
            url,
            lock: mysql_lock_name(schema, MIGRATION_LOCK),
            lock_wait,
        }
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    /// `GET_LOCK`, the DDL's own bound on its metadata lock
    /// (`lock_wait_timeout`, seconds, at least 1), the version table.
    async fn lock(&mut self) -> Result<(), AuditError> {
        let url = self.url;
        let err = |e: sqlx::Error| AuditError::sql(url, &e);
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&self.lock)
            .bind(i64::try_from(self.lock_wait.as_secs()).unwrap_or(60))
            .fetch_one(&mut *self.c)
            .await
            .map_err(err)?;
        if got != Some(1) {
            return Err(AuditError::Sql(format!(
                "another process has been migrating the audit schema for over {}s (lock {:?})",
                self.lock_wait.as_secs(),
                self.lock
            )));
        }
        sqlx::query("SET SESSION lock_wait_timeout = ?")
            .bind(self.lock_wait.as_secs().max(1))
            .execute(&mut *self.c)
            .await
            .map_err(err)?;
        self.c.execute(VERSION_TABLE).await.map_err(err)?;
        Ok(())
    }

    async fn versions(&mut self) -> Result<Vec<VersionRow>, AuditError> {
        let url = self.url;
        let err = |e: sqlx::Error| AuditError::sql(url, &e);
        let rows = sqlx::query("SELECT version, name, dirty FROM dbjanitor_schema_version")
            .fetch_all(&mut *self.c)
            .await
            .map_err(err)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let version: i32 = row.try_get(0).map_err(err)?;
            let name: String = row.try_get(1).map_err(err)?;
            let dirty: bool = row.try_get(2).map_err(err)?;
            found.push((i64::from(version), name, dirty));
        }
        Ok(found)
    }

    /// A dirty row left by an interrupted migration: the schema decides.
    /// Every object of the migration there → marked done; none → row deleted
    /// (applied again next); some → [`AuditError::Dirty`] for a person.
    async fn recover(&mut self, version: u32, name: &str) -> Result<bool, AuditError> {
        let dirty = || AuditError::Dirty {
            version,
            name: name.to_owned(),
            dialect: Dialect::MySql,
        };
        let index = usize::try_from(version).unwrap_or(usize::MAX);
        let Some(objects) = index.checked_sub(1).and_then(|i| CREATES.get(i)) else {
            return Err(dirty());
        };
        let present = self.present(objects).await?;
        let sql = if present == objects.len() {
            "UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = ?"
        } else if present == 0 {
            "DELETE FROM dbjanitor_schema_version WHERE version = ?"
        } else {
            return Err(dirty());
        };
        let url = self.url;
        sqlx::query(sql)
            .bind(i32::try_from(version).unwrap_or(i32::MAX))
            .execute(&mut *self.c)
            .await
            .map_err(|e| AuditError::sql(url, &e))?;
        tracing::warn!(
            version,
            name,
            applied = present > 0,
            "audit schema migration had been interrupted; the schema shows it {}",
            if present > 0 {
                "completed: marked done"
            } else {
                "not started: applying it again"
            }
        );
        Ok(true)
    }

    /// The dirty row, the DDL (bounded wait for its metadata lock), the row
    /// marked done. A DDL the server refused was not applied (one statement,
    /// applied whole or not at all): its row goes again.
    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError> {
        let url = self.url;
        let err = |e: sqlx::Error| AuditError::sql(url, &e);
        let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
        sqlx::query(
            "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES (?, ?, ?, TRUE, ?)",
        )
        .bind(version)
        .bind(migration.name)
        .bind(Utc::now())
        .bind(VERSION)
        .execute(&mut *self.c)
        .await
        .map_err(err)?;
        match self.ddl(migration).await {
            Ok(()) => {}
            Err(sqlx::Error::Database(db_error)) => {
                return Err(self.refused(migration, version, db_error).await);
            }
            // The connection failed during the DDL: its fate is unknown, the row stays dirty.
            Err(e) => return Err(AuditError::migration(migration, url, &e)),
        }
        sqlx::query("UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = ?")
            .bind(version)
            .execute(&mut *self.c)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// `RELEASE_LOCK` (after an error too; dropping the connection would
    /// release it as well).
    async fn unlock(&mut self, _ok: bool) -> Result<(), AuditError> {
        let url = self.url;
        sqlx::query("DO RELEASE_LOCK(?)")
            .bind(&self.lock)
            .execute(&mut *self.c)
            .await
            .map(drop)
            .map_err(|e| AuditError::sql(url, &e))
    }
}

impl Migrate<'_> {
    /// The migration's one statement, with a warning when it waits longer
    /// than [`MDL_NOTICE`] (for its metadata lock, most likely).
    async fn ddl(&mut self, migration: &Migration) -> Result<(), sqlx::Error> {
        // One statement (a unit test checks it): applied whole or not at all.
        let statement = split_statements(migration.mysql, Dialect::MySql).concat();
        let wait_s = self.lock_wait.as_secs();
        let ddl = self.c.execute(sqlx::AssertSqlSafe(statement));
        tokio::pin!(ddl);
        let result = tokio::select! {
            result = &mut ddl => result,
            () = tokio::time::sleep(MDL_NOTICE) => {
                tracing::warn!(
                    version = migration.version,
                    name = migration.name,
                    wait_s,
                    "audit schema migration waiting for the metadata lock on dbjanitor_runs: another session holds \
                     the table open (an open transaction that read it, e.g. mysqldump --single-transaction)"
                );
                ddl.await
            }
        };
        result.map(drop)
    }

    /// The server refused the DDL: nothing applied, so nothing is dirty (the
    /// row is deleted); the error to return.
    async fn refused(
        &mut self,
        migration: &'static Migration,
        version: i32,
        db_error: Box<dyn sqlx::error::DatabaseError>,
    ) -> AuditError {
        let lock_timeout = db_error
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| e.number() == ER_LOCK_WAIT_TIMEOUT);
        if let Err(e) =
            sqlx::query("DELETE FROM dbjanitor_schema_version WHERE version = ? AND dirty = TRUE")
                .bind(version)
                .execute(&mut *self.c)
                .await
        {
            return AuditError::sql(self.url, &e);
        }
        if lock_timeout {
            return AuditError::MetadataLock {
                version: migration.version,
                name: migration.name,
                wait: self.lock_wait,
            };
        }
        AuditError::migration(migration, self.url, &sqlx::Error::Database(db_error))
    }

    /// How many of `objects` (tables, or columns) the schema holds.
    async fn present(&mut self, objects: &[(&str, Option<&str>)]) -> Result<usize, AuditError> {
        let url = self.url;
        let err = |e: sqlx::Error| AuditError::sql(url, &e);
        let mut present = 0usize;
        for (table, column) in objects {
            let count: i64 = match column {
                None => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                )
                .bind(table)
                .fetch_one(&mut *self.c)
                .await
                .map_err(err)?,
                Some(column) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
                     AND table_name = ? AND column_name = ?",
                )
                .bind(table)
                .bind(column)
                .fetch_one(&mut *self.c)
                .await
                .map_err(err)?,
            };
            present += usize::from(count > 0);
        }
        Ok(present)
    }
}

/// The schema version; 0 when there is no version table (or no row) yet.
pub(super) async fn version_if_any(
    c: &mut MySqlConnection,
    url: &SecretUrl,
) -> Result<i64, AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
         AND table_name = 'dbjanitor_schema_version'",
    )
    .fetch_one(&mut *c)
    .await
    .map_err(err)?;
    if exists == 0 {
        return Ok(0);
    }
    sqlx::query_scalar::<_, i32>("SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version")
        .fetch_one(&mut *c)
        .await
        .map(i64::from)
        .map_err(err)
}
