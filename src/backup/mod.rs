//! Before- and after-images of the rows a fix changes (issue 14), so that a
//! run can be listed (`dbjanitor changes`) and taken back (`dbjanitor undo`).
//!
//! A rule declares `backup: {table, key}`. In the fix's own transaction (so
//! the images and the change commit together, or neither), after detect and
//! before the fix, [`before`] copies the current rows of `table` whose key
//! detect returns into dbjanitor's images table, locking them; after the fix
//! [`after`] stores the same keys' rows as they are now (NULL for a deleted
//! row), drops the images of rows the fix did not change and returns the
//! counts the engine's guard compares with the fix's rows affected.
//!
//! Every image is built **on the server** (`INSERT ... SELECT`): no row data
//! streams through dbjanitor, and no value is converted by a driver. Per
//! engine (see `sql`): PostgreSQL stores `to_json(row)` in a `json` column
//! and restores through `json_populate_record`, under pinned `TimeZone`,
//! `extra_float_digits`, `IntervalStyle` and `bytea_output`, so the same
//! values always render to the same text. SQLite and MySQL/MariaDB build a
//! JSON object of each column's value in an exact text form (hex for bytes),
//! MySQL/MariaDB under a pinned `time_zone`.
//!
//! Detect's SQL runs a second time here, as a subquery (`WHERE (key) IN
//! (SELECT key FROM (detect) d)`): it is the rule's own read-only query,
//! which already ran once in this transaction, so the keys never leave the
//! server either. In keyset batches (`batch.key`) the subquery keeps only the
//! rows of the batch's window (`d.key BETWEEN first AND last`), so each
//! batch copies and locks its own rows, not every detected row again.

pub(crate) mod sql;
pub(crate) mod undo;

use std::time::Duration;

use crate::db::{DbError, Dialect, Session};
use crate::rule::KeyWindow;

/// Where images are kept and for how long (`images:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The images table in each target database (default `dbjanitor_images`).
    pub table: String,
    /// Images older than this are deleted before each run that keeps images
    /// (default 90 days): an undo is for surprises found within weeks.
    pub keep: Duration,
}

/// The default name of the images table.
pub(crate) const DEFAULT_TABLE: &str = "dbjanitor_images";

/// The default retention of images.
pub(crate) const DEFAULT_KEEP: Duration = Duration::from_hours(90 * 24);

impl Default for Images {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            keep: DEFAULT_KEEP,
        }
    }
}

/// A rule's `backup:`: the one table its fix updates or deletes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The table (optionally `schema.table`), a plain identifier checked at load.
    pub table: String,
    /// Its key columns; detect must return columns of these names.
    pub key: Vec<String>,
    /// Where the images go.
    pub images: Images,
}

/// Whether `name` is a plain SQL identifier dbjanitor may write into SQL
/// unquoted, so it means what it means in `psql`/`mariadb`/`sqlite3`
/// (optionally one `schema.` prefix when `qualified`).
#[must_use]
pub(crate) fn valid_identifier(name: &str, qualified: bool) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    match name.split_once('.') {
        Some((schema, table)) if qualified => part(schema) && part(table),
        Some(_) => false,
        None => part(name),
    }
}

/// What one capture kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Rows of `table` whose key detect returned (images taken).
    pub captured: u64,
    /// Of those, rows the fix changed (kept; the others are dropped).
    pub changed: u64,
}

/// One capture: the run, the batch and the rule's SQL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Capture<'a> {
    /// The rule's backup declaration.
    pub backup: &'a Backup,
    /// The engine.
    pub dialect: Dialect,
    /// The run's id.
    pub run_id: &'a str,
    /// The rule's name.
    pub rule: &'a str,
    /// The batch number (0 for a transactional rule).
    pub batch: u64,
    /// Detect's SQL for this dialect.
    pub detect: &'a str,
    /// Keyset batches (`batch.key`): only the detected rows of this batch's
    /// window are captured, not every detected row again in every batch.
    pub window: Option<Window<'a>>,
}

/// The key window of one keyset batch, as [`Capture::window`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'a> {
    /// `batch.key`: a column of detect's result.
    pub column: &'a str,
    /// Its first and last key in this batch, as SQL literals.
    pub keys: &'a KeyWindow,
}

/// Creates the images table if it is missing and deletes images older than
/// `keep`, in a transaction of its own, before the fix's transaction.
pub(crate) async fn prepare<S: Session>(
    session: &mut S,
    dialect: Dialect,
    images: &Images,
) -> Result<(), DbError> {
    session
        .own(&sql::prepare(dialect, images))
        .await
        .map(|_| ())
        .map_err(|e| {
            context(
                &format!("backup: cannot prepare the images table {}", images.table),
                e,
            )
        })
}

/// Before the fix: the current rows of the detected keys, locked.
pub(crate) async fn before<S: Session>(
    session: &mut S,
    capture: &Capture<'_>,
) -> Result<u64, DbError> {
    let own = async {
        if capture.dialect == Dialect::MySql {
            // A MySQL/MariaDB session runs detect in a READ ONLY transaction
            // and turns it read-write at the first fix statement (a ROLLBACK
            // and a new transaction, which would drop images taken before).
            // A no-op statement through the fix's path makes that switch now.
            session.execute("DO 0").await?;
        }
        let cols = image_columns(session, capture).await?;
        sql::pinned(session, capture.dialect, &sql::before(capture, &cols)).await
    }
    .await
    .map_err(|e| {
            context(
                &format!(
                    "backup: the before-images could not be taken (detect must return the key columns {:?} of {}); nothing was changed",
                    capture.backup.key, capture.backup.table
                ),
                e,
            )
        })?;
    Ok(own.rows_affected)
}

/// After the fix: the after-images of the same keys; drops the images of
/// rows the fix left as they were.
pub(crate) async fn after<S: Session>(
    session: &mut S,
    capture: &Capture<'_>,
) -> Result<Kept, DbError> {
    async {
        let cols = image_columns(session, capture).await?;
        settle(
            session,
            capture.dialect,
            capture.backup,
            &cols,
            (capture.run_id, capture.batch),
        )
        .await
    }
    .await
    .map_err(|e| context("backup: the after-images could not be taken", e))
}

/// Takes the after-images of one batch of a run (a fix's, or an undo's),
/// counts them and drops those equal to their before-image.
pub(crate) async fn settle<S: Session>(
    session: &mut S,
    dialect: Dialect,
    backup: &Backup,
    cols: &[sql::Col],
    (run, batch): (&str, u64),
) -> Result<Kept, DbError> {
    sql::pinned(
        session,
        dialect,
        &sql::after(dialect, backup, cols, &sql::Filter::Batch(run, batch)),
    )
    .await?;
    let counts = session
        .own(&sql::counts(dialect, backup, run, batch))
        .await?;
    let number = |i: usize| {
        counts
            .rows
            .first()
            .and_then(|r| r.get(i).cloned().flatten())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let kept = Kept {
        captured: number(0),
        changed: number(1),
    };
    session
        .own(&sql::drop_unchanged(dialect, backup, run, batch))
        .await?;
    Ok(kept)
}

/// The columns an image is built from.
async fn image_columns<S: Session>(
    session: &mut S,
    capture: &Capture<'_>,
) -> Result<Vec<sql::Col>, DbError> {
    sql::columns(session, capture.dialect, &capture.backup.table).await
}

/// `error` with a sentence in front, keeping its kind.
pub(crate) fn context(what: &str, error: DbError) -> DbError {
    match error {
        DbError::Sql(e) => DbError::Sql(format!("{what}: {e}")),
        DbError::Timeout(e) => DbError::Timeout(format!("{what}: {e}")),
        DbError::Connect(e) => DbError::Connect(format!("{what}: {e}")),
        DbError::Unsafe(e) => DbError::Unsafe(format!("{what}: {e}")),
        DbError::TransactionEnded(e) => DbError::TransactionEnded(format!("{what}: {e}")),
        DbError::CommitRefused(e) => DbError::CommitRefused(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain() {
        assert!(valid_identifier("op_ha_work", false));
        assert!(valid_identifier("public.op_ha_work", true));
        assert!(!valid_identifier("public.op_ha_work", false));
        assert!(!valid_identifier("a.b.c", true));
        assert!(!valid_identifier("x; DROP TABLE y", true));
        assert!(!valid_identifier("1abc", false));
        assert!(!valid_identifier("", false));
        assert!(!valid_identifier("\"Quoted\"", false));
    }
}
