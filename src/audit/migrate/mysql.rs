//! [`Migrator`] for MySQL/MariaDB, where DDL commits implicitly: `GET_LOCK`
//! serialises migrators, each migration is one statement, and its version row
//! is written dirty before the statement and marked done after it, so an
//! interrupted migration can be settled from the schema
//! ([`Migrator::recover`]; see the module doc of `migrate`).

use std::time::Duration;

use super::{MIGRATION_LOCK, MIGRATIONS, Migration, Migrator, record_version};
use crate::audit::{AuditError, Conn};
use crate::db::typed::{Failed, Value};
use crate::db::{DbError, Dialect, mysql_lock_name};
use crate::sql::split_statements;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbjanitor_schema_version (\
    version INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, applied_at DATETIME(6) NOT NULL, \
    dirty BOOLEAN NOT NULL DEFAULT FALSE, applied_by VARCHAR(64) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// After this long without an answer, a MySQL DDL is said (in a warning) to
/// be waiting for its metadata lock.
const MDL_NOTICE: Duration = Duration::from_secs(2);

/// MySQL/MariaDB `ER_LOCK_WAIT_TIMEOUT`: the DDL never got its metadata lock.
const ER_LOCK_WAIT_TIMEOUT: &str = "1205";

/// 1 when the table `?` exists in the current schema, else 0.
pub(super) const TABLE_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?";

/// 1 when the column `?` of the table `?` exists in the current schema, else 0.
const COLUMN_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
    AND table_name = ? AND column_name = ?";

/// An interrupted migration that the schema shows complete: marked done.
const MARK_DONE: &str = "UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = ?";

/// An interrupted migration that the schema shows not started: applied again.
const FORGET: &str = "DELETE FROM dbjanitor_schema_version WHERE version = ?";

/// A migration whose DDL the server refused: nothing applied, nothing dirty.
const FORGET_DIRTY: &str =
    "DELETE FROM dbjanitor_schema_version WHERE version = ? AND dirty = TRUE";

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
    c: &'c mut Conn,
    lock: String,
    lock_wait: Duration,
}

impl<'c> Migrate<'c> {
    pub(super) fn new(c: &'c mut Conn, lock_wait: Duration) -> Self {
        let lock = mysql_lock_name(c.schema(), MIGRATION_LOCK);
        Self { c, lock, lock_wait }
    }

    /// `lock_wait` in whole seconds, as the server's settings take it.
    fn wait_secs(&self) -> i64 {
        i64::try_from(self.lock_wait.as_secs()).unwrap_or(60)
    }
}

impl Migrator for Migrate<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn conn(&mut self) -> &mut Conn {
        self.c
    }

    /// `GET_LOCK`, the DDL's own bound on its metadata lock
    /// (`lock_wait_timeout`, seconds, at least 1), the version table.
    async fn lock(&mut self) -> Result<(), AuditError> {
        let params: [Value<'_>; 2] = [self.lock.as_str().into(), self.wait_secs().into()];
        let got: Option<i64> = match self.c.query_first("SELECT GET_LOCK(?, ?)", &params).await? {
            Some(row) => row.get(0)?,
            None => None,
        };
        if got != Some(1) {
            return Err(AuditError::Sql(format!(
                "another process has been migrating the audit schema for over {}s (lock {:?})",
                self.lock_wait.as_secs(),
                self.lock
            )));
        }
        let wait = self.wait_secs().max(1);
        self.c
            .execute("SET SESSION lock_wait_timeout = ?", &[wait.into()])
            .await?;
        self.c.batch(VERSION_TABLE).await?;
        Ok(())
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
            MARK_DONE
        } else if present == 0 {
            FORGET
        } else {
            return Err(dirty());
        };
        self.c.execute(sql, &[i64::from(version).into()]).await?;
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
        record_version(self.c, migration, true).await?;
        match self.ddl(migration).await {
            Ok(()) => {}
            Err(Failed::Refused(error, code)) => {
                return Err(self.refused(migration, &error, code.as_deref()).await);
            }
            // The connection failed during the DDL: its fate is unknown, the row stays dirty.
            Err(Failed::Lost(error)) => {
                return Err(AuditError::migration_text(migration, error.to_string()));
            }
        }
        let version = i64::from(migration.version);
        self.c.execute(MARK_DONE, &[version.into()]).await?;
        Ok(())
    }

    /// `RELEASE_LOCK` (after an error too; dropping the connection would
    /// release it as well).
    async fn unlock(&mut self, _ok: bool) -> Result<(), AuditError> {
        self.c
            .execute("DO RELEASE_LOCK(?)", &[self.lock.as_str().into()])
            .await?;
        Ok(())
    }
}

impl Migrate<'_> {
    /// The migration's one statement, with a warning when it waits longer
    /// than [`MDL_NOTICE`] (for its metadata lock, most likely).
    async fn ddl(&mut self, migration: &Migration) -> Result<(), Failed> {
        // One statement (a unit test checks it): applied whole or not at all.
        let statement = split_statements(migration.mysql, Dialect::MySql).concat();
        let wait_s = self.lock_wait.as_secs();
        let ddl = self.c.batch_or_refused(&statement);
        tokio::pin!(ddl);
        tokio::select! {
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
        }
    }

    /// The server refused the DDL (`error`, its error number `code`):
    /// nothing applied, so nothing is dirty (the row is deleted); the error
    /// to return.
    async fn refused(
        &mut self,
        migration: &'static Migration,
        error: &DbError,
        code: Option<&str>,
    ) -> AuditError {
        let version = i64::from(migration.version);
        if let Err(e) = self.c.execute(FORGET_DIRTY, &[version.into()]).await {
            return e.into();
        }
        if code == Some(ER_LOCK_WAIT_TIMEOUT) {
            return AuditError::MetadataLock {
                version: migration.version,
                name: migration.name,
                wait: self.lock_wait,
            };
        }
        AuditError::migration_text(migration, error.to_string())
    }

    /// How many of `objects` (tables, or columns) the schema holds.
    async fn present(&mut self, objects: &[(&str, Option<&str>)]) -> Result<usize, AuditError> {
        let mut present = 0usize;
        for (table, column) in objects {
            let row = match column {
                None => self.c.query_first(TABLE_EXISTS, &[(*table).into()]).await?,
                Some(column) => {
                    let params: [Value<'_>; 2] = [(*table).into(), (*column).into()];
                    self.c.query_first(COLUMN_EXISTS, &params).await?
                }
            };
            let count: i64 = match row {
                Some(row) => row.get(0)?,
                None => 0,
            };
            present += usize::from(count > 0);
        }
        Ok(present)
    }
}
