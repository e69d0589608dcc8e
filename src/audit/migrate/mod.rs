//! Versioned migrations of the audit schema, applied by the binary itself,
//! shaped like sqlx's migrations: plain SQL files per dialect, one generic
//! loop ([`run`]) over a small per-dialect trait ([`Migrator`]).
//!
//! Each migration is an SQL file per dialect under `src/audit/migrations/`,
//! embedded at compile time; a migration, once released, is never edited (a
//! test builds every earlier version from these very files and upgrades it).
//! `dbjanitor_schema_version` holds one row per applied migration.
//!
//! Concurrency: two pods starting at once must not both apply a migration.
//! Each dialect serialises migrations with its own lock, held from reading the
//! version to recording the new one ([`Migrator::lock`] to
//! [`Migrator::unlock`]):
//!
//! - PostgreSQL (`postgres.rs`): one transaction (DDL is transactional) under
//!   `pg_advisory_xact_lock` on the key of the lock name `dbjanitor.audit.migrate`;
//!   a failure rolls the whole upgrade back.
//! - SQLite (`sqlite.rs`): one `BEGIN IMMEDIATE` transaction (DDL is
//!   transactional; the write lock excludes every other writer).
//! - MySQL/MariaDB (`mysql.rs`): DDL commits implicitly, so there is no
//!   transaction to hide behind. `GET_LOCK` serialises the migrators; every
//!   MySQL migration is a single statement (applied whole or not at all); and
//!   its version row is written with `dirty = 1` *before* the statement and
//!   set to 0 after it. The DDL waits for its metadata lock at most
//!   `audit.migrate_lock_wait` (`lock_wait_timeout`; a warning says what it
//!   waits for after a few seconds). A statement the server refused (that
//!   lock wait included) was not applied: its row is deleted again and the
//!   next start retries. Only a statement whose fate is unknown (the
//!   connection or the process died during it) leaves the row dirty; the next
//!   start then looks at the schema ([`Migrator::recover`]): every object
//!   there → the row is marked done; none → the row is deleted and the step
//!   applied again; some → it refuses to guess and says what to check and
//!   which row to fix.

mod mysql;
mod postgres;
mod sqlite;

use std::time::Duration;

use chrono::Utc;

use super::{AuditError, Conn, VERSION};
use crate::db::Dialect;
use crate::db::typed::Value;

/// One migration: its version, name and SQL per dialect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
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
    /// The SQL for `dialect` (the tests check every migration splits).
    #[cfg(test)]
    fn sql(&self, dialect: Dialect) -> &'static str {
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
                "../migrations/postgres/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
            mysql: include_str!(concat!(
                "../migrations/mysql/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
            sqlite: include_str!(concat!(
                "../migrations/sqlite/000",
                $version,
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

/// Every migration, in order. Append only.
pub(crate) const MIGRATIONS: [Migration; 5] = [
    migration!(1, "create_runs"),
    migration!(2, "notified"),
    migration!(3, "run_id"),
    migration!(4, "pairs"),
    migration!(5, "tell_seq"),
];

/// The schema version this binary writes and reads.
#[allow(clippy::cast_possible_truncation)] // 5 migrations: a const that cannot truncate
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Name of the lock that serialises migrators (PostgreSQL key, MySQL lock name).
pub(crate) const MIGRATION_LOCK: &str = "dbjanitor.audit.migrate";

/// What a migration call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Version found (0: no schema yet).
    pub from: u32,
    /// Version left.
    pub to: u32,
}

/// One row of `dbjanitor_schema_version`: (version, name, dirty).
type VersionRow = (i64, String, bool);

/// The applied versions: (highest version, a dirty version if any).
type Applied = (u32, Option<(u32, String)>);

/// Every row of the version table.
const VERSIONS: &str = "SELECT version, name, dirty FROM dbjanitor_schema_version";

/// One row of the version table (`dirty` bound: MySQL writes it dirty first).
const RECORD: &str = "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) \
    VALUES (?, ?, ?, ?, ?)";

/// The highest applied version (0 with no row).
const HIGHEST: &str = "SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version";

/// What the one migration loop ([`run`]) needs from a dialect.
pub(super) trait Migrator {
    /// The dialect (named in [`AuditError::Dirty`]).
    fn dialect(&self) -> Dialect;

    /// The connection migrating.
    fn conn(&mut self) -> &mut Conn;

    /// Takes the migration lock (opening the transaction where DDL is
    /// transactional) and creates the version table if it is missing.
    async fn lock(&mut self) -> Result<(), AuditError>;

    /// Every row of the version table.
    async fn versions(&mut self) -> Result<Vec<VersionRow>, AuditError> {
        let rows = self.conn().query(VERSIONS, &[]).await?;
        rows.iter()
            .map(|row| -> Result<VersionRow, AuditError> {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .collect()
    }

    /// A dirty row was found (an interrupted migration): settles it from the
    /// schema where the dialect can; `Ok(true)` when the rows changed.
    async fn recover(&mut self, _version: u32, _name: &str) -> Result<bool, AuditError> {
        Ok(false)
    }

    /// Applies one migration and records it in the version table.
    async fn apply(&mut self, migration: &'static Migration) -> Result<(), AuditError>;

    /// Ends what [`Migrator::lock`] began: commits (`ok`) or rolls back, and
    /// releases the lock.
    async fn unlock(&mut self, ok: bool) -> Result<(), AuditError>;
}

/// Brings the schema on `conn` up to `target` (at most [`SCHEMA_VERSION`]).
pub(super) async fn migrate(
    conn: &mut Conn,
    target: u32,
    lock_wait: Duration,
) -> Result<Migrated, AuditError> {
    let target = target.min(SCHEMA_VERSION);
    match conn.dialect() {
        Dialect::Postgres => run(&mut postgres::Migrate::new(conn, lock_wait), target).await,
        Dialect::Sqlite => run(&mut sqlite::Migrate::new(conn), target).await,
        Dialect::MySql => run(&mut mysql::Migrate::new(conn, lock_wait), target).await,
    }
}

/// Writes `migration`'s row into the version table.
async fn record_version(
    conn: &mut Conn,
    migration: &Migration,
    dirty: bool,
) -> Result<(), AuditError> {
    let params: [Value<'_>; 5] = [
        i64::from(migration.version).into(),
        migration.name.into(),
        Utc::now().into(),
        dirty.into(),
        VERSION.into(),
    ];
    conn.execute(RECORD, &params).await?;
    Ok(())
}

/// The migration loop: lock, read the versions (settling an interrupted
/// migration where the dialect can), refuse a newer or dirty schema, apply
/// each pending migration in order, unlock. After an error the lock is
/// released (or the transaction rolled back) and the error returned; the
/// caller drops the connection too.
async fn run<M: Migrator>(m: &mut M, target: u32) -> Result<Migrated, AuditError> {
    m.lock().await?;
    let result = steps(m, target).await;
    let ok = result.is_ok();
    let end = m.unlock(ok).await;
    let migrated = result?;
    end?;
    Ok(migrated)
}

async fn steps<M: Migrator>(m: &mut M, target: u32) -> Result<Migrated, AuditError> {
    let mut found = applied(m.versions().await?);
    if let Some((version, name)) = found.1.clone()
        && m.recover(version, &name).await?
    {
        found = applied(m.versions().await?);
    }
    check(&found, m.dialect())?;
    for migration in pending(found.0, target) {
        m.apply(migration).await?;
    }
    Ok(Migrated {
        from: found.0,
        to: found.0.max(target),
    })
}

fn applied(rows: Vec<VersionRow>) -> Applied {
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

/// Checks what was found against what this binary knows.
fn check(found: &Applied, dialect: Dialect) -> Result<(), AuditError> {
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

fn pending(from: u32, target: u32) -> impl Iterator<Item = &'static Migration> {
    MIGRATIONS
        .iter()
        .filter(move |m| m.version > from && m.version <= target)
}

/// The schema version, but 0 when there is no version table yet (`check
/// --connect` on a database dbjanitor never wrote to); changes nothing.
pub(super) async fn version_if_any(conn: &mut Conn) -> Result<u32, AuditError> {
    let exists = match conn.dialect() {
        Dialect::Postgres => postgres::TABLE_EXISTS,
        Dialect::MySql => mysql::TABLE_EXISTS,
        Dialect::Sqlite => sqlite::TABLE_EXISTS,
    };
    if first_int(conn, exists, "dbjanitor_schema_version").await? == 0 {
        return Ok(0);
    }
    let version = match conn.query_first(HIGHEST, &[]).await? {
        Some(row) => row.get::<i64>(0)?,
        None => 0,
    };
    Ok(u32::try_from(version).unwrap_or(0))
}

/// The first column of the first row of `sql` (one text parameter), 0 for no row.
async fn first_int(conn: &mut Conn, sql: &'static str, text: &str) -> Result<i64, AuditError> {
    Ok(match conn.query_first(sql, &[text.into()]).await? {
        Some(row) => row.get(0)?,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::split_statements;

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

    #[test]
    fn the_highest_version_and_a_dirty_row_are_found() {
        let rows = vec![
            (1, "create_runs".to_owned(), false),
            (3, "run_id".to_owned(), true),
            (2, "notified".to_owned(), false),
        ];
        assert_eq!(applied(rows), (3, Some((3, "run_id".to_owned()))));
        assert_eq!(applied(Vec::new()), (0, None));
        let names: Vec<u32> = pending(1, 3).map(|m| m.version).collect();
        assert_eq!(names, [2, 3]);
    }
}
