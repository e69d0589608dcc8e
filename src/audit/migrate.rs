//! Versioned migrations of the audit schema, applied by the binary itself.
//!
//! Each migration is an SQL file per dialect under `src/audit/migrations/`,
//! embedded at compile time; a migration, once released, is never edited (a
//! test builds every earlier version from these very files and upgrades it).
//! `dbjanitor_schema_version` holds one row per applied migration.
//!
//! Concurrency: two pods starting at once must not both apply a migration.
//! Each dialect serialises migrations with its own lock, held from reading the
//! version to recording the new one:
//!
//! - PostgreSQL: one transaction (DDL is transactional) under
//!   `pg_advisory_xact_lock` on the key of the lock name `dbjanitor.audit.migrate`;
//!   a failure rolls the whole upgrade back.
//! - SQLite: one `BEGIN IMMEDIATE` transaction (DDL is transactional; the
//!   write lock excludes every other writer).
//! - MySQL/MariaDB: DDL commits implicitly, so there is no transaction to hide
//!   behind. `GET_LOCK` serialises the migrators; every MySQL migration is a
//!   single statement (applied whole or not at all); and its version row is
//!   written with `dirty = 1` *before* the statement and set to 0 after it.
//!   The DDL waits for its metadata lock at most `audit.migrate_lock_wait`
//!   (`lock_wait_timeout`; a warning says what it waits for after a few
//!   seconds). A statement the server refused (that lock wait included) was
//!   not applied: its row is deleted again and the next start retries. Only a
//!   statement whose fate is unknown (the connection or the process died
//!   during it) leaves the row dirty; the next start then looks at the schema
//!   ([`MYSQL_CREATES`]): every object there → the row is marked done; none →
//!   the row is deleted and the step applied again; some → it refuses to
//!   guess and says what to check and which row to fix.

use std::time::Duration;

use chrono::Utc;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{Executor, Row};

use super::{AuditError, Conn};
use crate::db::{Dialect, mysql_lock_name};
use crate::sql::split_statements;

/// One migration: its version, name and SQL per dialect.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, ...: applied in order, each exactly once.
    pub version: u32,
    /// File name without the number, e.g. `create_runs`.
    pub name: &'static str,
    /// PostgreSQL SQL.
    pub postgres: &'static str,
    /// MySQL/MariaDB SQL (a single statement).
    pub mysql: &'static str,
    /// SQLite SQL.
    pub sqlite: &'static str,
}

impl Migration {
    /// The SQL for `dialect`.
    #[must_use]
    pub fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::MySql => self.mysql,
            Dialect::Sqlite => self.sqlite,
        }
    }
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            postgres: include_str!(concat!(
                "migrations/postgres/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
            mysql: include_str!(concat!(
                "migrations/mysql/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
            sqlite: include_str!(concat!(
                "migrations/sqlite/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

/// Every migration, in order. Append only.
pub const MIGRATIONS: [Migration; 4] = [
    migration!(1, "create_runs"),
    migration!(2, "notified"),
    migration!(3, "run_id"),
    migration!(4, "pairs"),
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Name of the lock that serialises migrators (PostgreSQL key, MySQL lock name).
pub const MIGRATION_LOCK: &str = "dbjanitor.audit.migrate";

/// After this long without an answer, a MySQL DDL is said (in a warning) to
/// be waiting for its metadata lock.
const MDL_NOTICE: Duration = Duration::from_secs(2);

/// MySQL/MariaDB `ER_LOCK_WAIT_TIMEOUT`: the DDL never got its metadata lock.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// What each MySQL migration creates, in [`MIGRATIONS`] order: `(table,
/// column)`, `None` for the table itself. After an interrupted migration the
/// schema says whether it was applied (all there), not started (none), or
/// neither.
pub(crate) const MYSQL_CREATES: [&[(&str, Option<&str>)]; MIGRATIONS.len()] = [
    &[("dbjanitor_runs", None)],
    &[
        ("dbjanitor_runs", Some("notified")),
        ("dbjanitor_runs", Some("remaining")),
        ("dbjanitor_runs", Some("batches")),
    ],
    // The unique index comes in the same ALTER TABLE: with the column or not at all.
    &[("dbjanitor_runs", Some("run_id"))],
    &[("dbjanitor_pairs", None)],
];

/// What a migration call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Version found (0: no schema yet).
    pub from: u32,
    /// Version left.
    pub to: u32,
}

pub(super) const VERSION_TABLE_PG: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version integer PRIMARY KEY, name varchar(100) NOT NULL, applied_at timestamptz NOT NULL, \
    dirty boolean NOT NULL DEFAULT false, applied_by varchar(64) NOT NULL)";
const VERSION_TABLE_MYSQL: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, applied_at DATETIME(6) NOT NULL, \
    dirty BOOLEAN NOT NULL DEFAULT FALSE, applied_by VARCHAR(64) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";
const VERSION_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL, \
    dirty INTEGER NOT NULL DEFAULT 0, applied_by TEXT NOT NULL)";

/// The applied versions: (highest version, a dirty version if any).
type Applied = (u32, Option<(u32, String)>);

pub(super) fn applied(rows: Vec<(i64, String, bool)>) -> Applied {
    let mut highest = 0u32;
    let mut dirty = None;
    for (version, name, is_dirty) in rows {
        let version = u32::try_from(version).unwrap_or(u32::MAX);
        highest = highest.max(version);
        if is_dirty {
            dirty = Some((version, name));
        }
    }
    (highest, dirty)
}

const SELECT_VERSIONS: &str = "SELECT version, name, dirty FROM dbjanitor_schema_version";

/// Checks what was found against what this binary knows.
pub(super) fn check(found: &Applied, dialect: Dialect) -> Result<(), AuditError> {
    if let Some((version, name)) = &found.1 {
        return Err(AuditError::Dirty {
            version: *version,
            name: name.clone(),
            dialect,
        });
    }
    if found.0 > SCHEMA_VERSION {
        return Err(AuditError::SchemaTooNew {
            found: found.0,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

pub(super) fn pending(from: u32, target: u32) -> impl Iterator<Item = &'static Migration> {
    MIGRATIONS
        .iter()
        .filter(move |m| m.version > from && m.version <= target)
}

/// Brings the schema on `conn` up to `target` (at most [`SCHEMA_VERSION`]).
pub(super) async fn migrate(
    conn: &mut Conn,
    target: u32,
    lock_wait: Duration,
) -> Result<Migrated, AuditError> {
    let target = target.min(SCHEMA_VERSION);
    match conn {
        Conn::Postgres(c) => {
            super::pg::migrate(c, MIGRATION_LOCK, lock_wait.as_millis().max(1), target).await
        }
        Conn::Sqlite(c, url) => {
            let err = |e: sqlx::Error| AuditError::sql(url, &e);
            // BEGIN IMMEDIATE: the write lock before reading the version.
            c.execute("BEGIN IMMEDIATE").await.map_err(err)?;
            let result = migrate_sqlite(c, url, target).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            c.execute(sqlx::AssertSqlSafe(end.to_owned()))
                .await
                .map_err(err)?;
            result
        }
        Conn::MySql(c, url, schema) => {
            let err = |e: sqlx::Error| AuditError::sql(url, &e);
            let lock = mysql_lock_name(schema, MIGRATION_LOCK);
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(&lock)
                .bind(i64::try_from(lock_wait.as_secs()).unwrap_or(60))
                .fetch_one(&mut *c)
                .await
                .map_err(err)?;
            if got != Some(1) {
                return Err(AuditError::Sql(format!(
                    "another process has been migrating the audit schema for over {}s (lock {lock:?})",
                    lock_wait.as_secs()
                )));
            }
            let result = migrate_mysql(c, url, target, lock_wait).await;
            // On error the caller drops the connection, which releases the lock too.
            sqlx::query("DO RELEASE_LOCK(?)")
                .bind(&lock)
                .execute(&mut *c)
                .await
                .map_err(err)?;
            result
        }
    }
}

async fn migrate_sqlite(
    c: &mut sqlx::SqliteConnection,
    url: &crate::secret::SecretUrl,
    target: u32,
) -> Result<Migrated, AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    c.execute(VERSION_TABLE_SQLITE).await.map_err(err)?;
    let rows: Vec<(i64, String, bool)> = sqlx::query_as(SELECT_VERSIONS)
        .fetch_all(&mut *c)
        .await
        .map_err(err)?;
    let found = applied(rows);
    check(&found, Dialect::Sqlite)?;
    for migration in pending(found.0, target) {
        for statement in split_statements(migration.sqlite, Dialect::Sqlite) {
            c.execute(sqlx::AssertSqlSafe(statement.to_owned()))
                .await
                .map_err(|e| AuditError::migration(migration, url, &e))?;
        }
        sqlx::query(
            "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES (?, ?, ?, 0, ?)",
        )
        .bind(i64::from(migration.version))
        .bind(migration.name)
        .bind(Utc::now())
        .bind(super::VERSION)
        .execute(&mut *c)
        .await
        .map_err(err)?;
    }
    Ok(Migrated {
        from: found.0,
        to: found.0.max(target),
    })
}

async fn migrate_mysql(
    c: &mut sqlx::MySqlConnection,
    url: &crate::secret::SecretUrl,
    target: u32,
    lock_wait: Duration,
) -> Result<Migrated, AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    // The DDL's own bound on its metadata lock (seconds, at least 1).
    sqlx::query("SET SESSION lock_wait_timeout = ?")
        .bind(lock_wait.as_secs().max(1))
        .execute(&mut *c)
        .await
        .map_err(err)?;
    c.execute(VERSION_TABLE_MYSQL).await.map_err(err)?;
    let mut found = mysql_versions(c, url).await?;
    if let Some((version, name)) = found.1.clone() {
        recover_mysql(c, url, version, &name).await?;
        found = mysql_versions(c, url).await?;
    }
    check(&found, Dialect::MySql)?;
    for migration in pending(found.0, target) {
        apply_mysql(c, url, migration, lock_wait).await?;
    }
    Ok(Migrated {
        from: found.0,
        to: found.0.max(target),
    })
}

async fn mysql_versions(
    c: &mut sqlx::MySqlConnection,
    url: &crate::secret::SecretUrl,
) -> Result<Applied, AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    let rows = sqlx::query(SELECT_VERSIONS)
        .fetch_all(&mut *c)
        .await
        .map_err(err)?;
    let mut found_rows = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i32 = row.try_get(0).map_err(err)?;
        let name: String = row.try_get(1).map_err(err)?;
        let dirty: bool = row.try_get(2).map_err(err)?;
        found_rows.push((i64::from(version), name, dirty));
    }
    Ok(applied(found_rows))
}

/// One MySQL migration: the dirty row, the DDL (bounded wait for its
/// metadata lock), the row marked done. A DDL the server refused was not
/// applied (one statement, applied whole or not at all): its row goes again.
async fn apply_mysql(
    c: &mut sqlx::MySqlConnection,
    url: &crate::secret::SecretUrl,
    migration: &Migration,
    lock_wait: Duration,
) -> Result<(), AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES (?, ?, ?, TRUE, ?)",
    )
    .bind(version)
    .bind(migration.name)
    .bind(Utc::now())
    .bind(super::VERSION)
    .execute(&mut *c)
    .await
    .map_err(err)?;
    let ddl_result = {
        // One statement (a unit test checks it): applied whole or not at all.
        let statement = split_statements(migration.mysql, Dialect::MySql).concat();
        let ddl = c.execute(sqlx::AssertSqlSafe(statement));
        tokio::pin!(ddl);
        tokio::select! {
            result = &mut ddl => result,
            () = tokio::time::sleep(MDL_NOTICE) => {
                tracing::warn!(
                    version = migration.version,
                    name = migration.name,
                    wait_s = lock_wait.as_secs(),
                    "audit schema migration waiting for the metadata lock on dbjanitor_runs: another session holds \
                     the table open (an open transaction that read it, e.g. mysqldump --single-transaction)"
                );
                ddl.await
            }
        }
    };
    match ddl_result {
        Ok(_) => {}
        Err(sqlx::Error::Database(db_error)) => {
            // Refused by the server: nothing applied, so nothing is dirty.
            let lock_timeout = db_error
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|e| e.number() == ER_LOCK_WAIT_TIMEOUT);
            sqlx::query("DELETE FROM dbjanitor_schema_version WHERE version = ? AND dirty = TRUE")
                .bind(version)
                .execute(&mut *c)
                .await
                .map_err(err)?;
            if lock_timeout {
                return Err(AuditError::MetadataLock {
                    version: migration.version,
                    name: migration.name,
                    wait: lock_wait,
                });
            }
            return Err(AuditError::migration(
                migration,
                url,
                &sqlx::Error::Database(db_error),
            ));
        }
        // The connection failed during the DDL: its fate is unknown, the row stays dirty.
        Err(e) => return Err(AuditError::migration(migration, url, &e)),
    }
    sqlx::query("UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = ?")
        .bind(version)
        .execute(&mut *c)
        .await
        .map_err(err)?;
    Ok(())
}

/// A dirty row left by an interrupted migration: the schema decides. Every
/// object of the migration there → marked done; none → row deleted (applied
/// again next); some → [`AuditError::Dirty`] for a person to look at.
async fn recover_mysql(
    c: &mut sqlx::MySqlConnection,
    url: &crate::secret::SecretUrl,
    version: u32,
    name: &str,
) -> Result<(), AuditError> {
    let err = |e: sqlx::Error| AuditError::sql(url, &e);
    let dirty = || AuditError::Dirty {
        version,
        name: name.to_owned(),
        dialect: Dialect::MySql,
    };
    let index = usize::try_from(version).unwrap_or(usize::MAX);
    let Some(objects) = index.checked_sub(1).and_then(|i| MYSQL_CREATES.get(i)) else {
        return Err(dirty());
    };
    let mut present = 0usize;
    for (table, column) in objects.iter() {
        let count: i64 = match column {
            None => sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(table)
            .fetch_one(&mut *c)
            .await
            .map_err(err)?,
            Some(column) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
                 AND table_name = ? AND column_name = ?",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&mut *c)
            .await
            .map_err(err)?,
        };
        present += usize::from(count > 0);
    }
    let sql = if present == objects.len() {
        "UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = ?"
    } else if present == 0 {
        "DELETE FROM dbjanitor_schema_version WHERE version = ?"
    } else {
        return Err(dirty());
    };
    sqlx::query(sql)
        .bind(i32::try_from(version).unwrap_or(i32::MAX))
        .execute(&mut *c)
        .await
        .map_err(err)?;
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
    Ok(())
}

/// Like [`current_version`], but 0 when there is no version table yet
/// (`check --connect` on a database dbjanitor never wrote to).
pub(super) async fn version_if_any(conn: &mut Conn) -> Result<u32, AuditError> {
    let exists = match conn {
        Conn::Postgres(c) => c
            .text("SELECT COUNT(*) FROM (SELECT to_regclass('dbjanitor_schema_version') AS t) AS x WHERE t IS NOT NULL")
            .await
            .map_err(|e| AuditError::Sql(e.to_string()))?
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0),
        Conn::MySql(c, url, _) => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name = 'dbjanitor_schema_version'",
        )
        .fetch_one(&mut *c)
        .await
        .map_err(|e| AuditError::sql(url, &e))?,
        Conn::Sqlite(c, url) => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'dbjanitor_schema_version'",
        )
        .fetch_one(&mut *c)
        .await
        .map_err(|e| AuditError::sql(url, &e))?,
    };
    if exists == 0 {
        return Ok(0);
    }
    current_version(conn).await
}

/// Reads the schema version without changing anything (0: no schema).
pub(super) async fn current_version(conn: &mut Conn) -> Result<u32, AuditError> {
    let sql = "SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version";
    let version: i64 = match conn {
        Conn::Postgres(c) => i64::from(super::pg::current_version(c).await?),
        Conn::MySql(c, url, _) => sqlx::query_scalar::<_, i32>(sql)
            .fetch_one(&mut *c)
            .await
            .map(i64::from)
            .map_err(|e| AuditError::sql(url, &e))?,
        Conn::Sqlite(c, url) => sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut *c)
            .await
            .map_err(|e| AuditError::sql(url, &e))?,
    };
    Ok(u32::try_from(version).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_single_statement_on_mysql() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert_eq!(
                split_statements(m.mysql, Dialect::MySql).len(),
                1,
                "MySQL migration {} must be one statement (DDL is not transactional there)",
                m.version
            );
            for dialect in Dialect::ALL {
                assert!(!split_statements(m.sql(dialect), dialect).is_empty());
            }
        }
    }

    #[test]
    fn a_newer_or_dirty_schema_is_refused() {
        assert!(check(&(SCHEMA_VERSION, None), Dialect::Postgres).is_ok());
        let newer = check(&(SCHEMA_VERSION + 1, None), Dialect::Postgres)
            .expect_err("newer schema must be refused")
            .to_string();
        assert!(newer.contains(&format!("version {}", SCHEMA_VERSION + 1)));
        assert!(newer.contains(&format!("knows up to version {SCHEMA_VERSION}")));
        assert!(check(&(1, Some((1, "create_runs".into()))), Dialect::MySql).is_err());
    }
}
