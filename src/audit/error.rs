//! Why the audit history could not be used: one typed error for every audit
//! operation, so callers can tell "a person must act" (a schema too new, a
//! half-applied migration: exit 2) from "try again later" (connect, timeout,
//! SQL) without reading message texts.

use std::time::Duration;

use super::VERSION;
use super::migrate::Migration;
use crate::db::{DbError, Dialect};
use crate::history::HistoryError;

/// Why the audit history could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The schema was written by a newer dbjanitor.
    #[error(
        "the audit schema in the database is version {found}, but this dbjanitor ({VERSION}) knows up to version {known}: \
         a newer dbjanitor has upgraded it. Run that version (or newer) instead; nothing was run"
    )]
    SchemaTooNew {
        /// Version found in `dbjanitor_schema_version`.
        found: u32,
        /// [`super::SCHEMA_VERSION`].
        known: u32,
    },
    /// A MySQL migration was interrupted between its DDL and its bookkeeping.
    #[error(
        "audit schema migration {version} ({name}) was interrupted on {dialect} (DDL there commits implicitly, so it may be half applied). \
         Compare dbjanitor_runs with src/audit/migrations/{dialect}/{version:04}_{name}.sql, then either \
         `UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = {version}` if it is applied, or \
         `DELETE FROM dbjanitor_schema_version WHERE version = {version}` to have it applied again; nothing was run"
    )]
    Dirty {
        /// The interrupted migration.
        version: u32,
        /// Its name.
        name: String,
        /// The dialect it ran on.
        dialect: Dialect,
    },
    /// A migration statement failed (rolled back, except on MySQL: see [`AuditError::Dirty`]).
    #[error("audit schema migration {version} ({name}) failed: {error}")]
    Migration {
        /// The migration.
        version: u32,
        /// Its name.
        name: &'static str,
        /// The server's message, scrubbed of secrets.
        error: String,
    },
    /// The audit database could not be reached.
    #[error("cannot connect to the audit database: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("audit database: {0}")]
    Sql(String),
    /// An operation took longer than its bound (`audit.timeout`, or the
    /// migration's own bound).
    #[error("audit database: no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A MySQL/MariaDB migration could not get the metadata lock of its DDL:
    /// nothing was applied, the next start tries again.
    #[error(
        "audit schema migration {version} ({name}) could not get the metadata lock on dbjanitor_runs within {}: \
         another session holds the table open (an open transaction that read it, e.g. mysqldump --single-transaction). \
         Nothing was applied; the next run tries again",
        humantime::format_duration(*.wait)
    )]
    MetadataLock {
        /// The migration.
        version: u32,
        /// Its name.
        name: &'static str,
        /// How long it waited (`audit.migrate_lock_wait`).
        wait: Duration,
    },
}

impl AuditError {
    /// Whether a person must act before dbjanitor may run against this
    /// database: retrying cannot help (exit status 2, like a config error).
    #[must_use]
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            AuditError::SchemaTooNew { .. } | AuditError::Dirty { .. }
        )
    }

    /// A failed statement of `migration` whose message is already scrubbed.
    pub(crate) fn migration_text(migration: &Migration, error: String) -> Self {
        AuditError::Migration {
            version: migration.version,
            name: migration.name,
            error,
        }
    }
}

/// A `db` error (its text already scrubbed): a failed connection attempt
/// stays one, anything else is a failed statement.
impl From<DbError> for AuditError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Connect(text) => AuditError::Connect(text),
            DbError::Sql(text)
            | DbError::Timeout(text)
            | DbError::Unsafe(text)
            | DbError::TransactionEnded(text)
            | DbError::CommitRefused(text) => AuditError::Sql(text),
        }
    }
}

impl From<AuditError> for HistoryError {
    fn from(e: AuditError) -> Self {
        if e.needs_operator() {
            HistoryError::needing_operator(e.to_string())
        } else {
            HistoryError::new(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::SCHEMA_VERSION;

    #[test]
    fn history_errors_keep_whether_an_operator_must_act() {
        let too_new = AuditError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            known: SCHEMA_VERSION,
        };
        let history = HistoryError::from(too_new);
        assert!(history.needs_operator(), "{history}");
        assert!(history.to_string().contains("run history: "), "{history}");
        let passing = HistoryError::from(AuditError::Sql("connection refused".to_owned()));
        assert!(!passing.needs_operator(), "{passing}");
    }
}
