//! Taking a run back from its images, inside a transaction the caller opened
//! under the rule's lock: every row whose current state is still its
//! after-image (or still absent) gets its before-image back; rows changed
//! since are conflicts. The undo keeps images of its own, under its own run
//! id, so it can be undone in turn.

use serde::Serialize;

use crate::db::{DbError, Dialect, Session};

use super::sql::{self, Filter};
use super::{Backup, Images};

/// Where a run's images are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Located {
    /// The rule that made them.
    pub rule: String,
    /// The table they are of.
    pub table: String,
    /// How many rows the run changed (images kept).
    pub rows: u64,
}

/// Finds a run's images in one database; `Ok(None)` when it has none (or no
/// images table).
pub(crate) async fn locate<S: Session>(
    session: &mut S,
    images: &Images,
    run: &str,
) -> Result<Option<Located>, DbError> {
    let own = match session.own(&sql::locate(images, run)).await {
        Ok(own) => own,
        Err(DbError::Sql(text))
            if text.contains("does not exist")
                || text.contains("no such table")
                || text.contains("doesn't exist") =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let Some(row) = own.rows.into_iter().next() else {
        return Ok(None);
    };
    let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    Ok(Some(Located {
        rule: cell(0),
        table: cell(1),
        rows: cell(2).parse().unwrap_or(0),
    }))
}

/// One row of `dbjanitor changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The key, as JSON text.
    pub key: String,
    /// The row before the run, as JSON text; `None`: absent (inserted by the run).
    pub before: Option<String>,
    /// The row after the run; `None`: absent (deleted by the run).
    pub after: Option<String>,
}

/// Every image of a run, in the order they were taken.
pub(crate) async fn changes<S: Session>(
    session: &mut S,
    images: &Images,
    run: &str,
) -> Result<Vec<Change>, DbError> {
    let own = session.own(&sql::list(images, run)).await?;
    Ok(own
        .rows
        .into_iter()
        .map(|row| {
            let cell = |i: usize| row.get(i).cloned().flatten();
            Change {
                key: cell(1).unwrap_or_default(),
                before: cell(2),
                after: cell(3),
            }
        })
        .collect())
}

/// What an undo did (or, refused, would not do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Restored {
    /// Rows updated back to their before-image.
    pub updated: u64,
    /// Rows the run deleted, inserted again.
    pub inserted: u64,
    /// Rows the run inserted (an undo of an undo), deleted again.
    pub deleted: u64,
    /// Keys (JSON) of rows changed since the run: not restored.
    pub conflicts: Vec<String>,
    /// `true` when conflicts stopped the whole undo (nothing restored).
    pub refused: bool,
    /// Images the undo kept of its own (rows it changed).
    pub kept: u64,
}

impl Restored {
    /// Rows restored in all.
    #[must_use]
    pub(crate) fn total(&self) -> u64 {
        self.updated + self.inserted + self.deleted
    }
}

/// Restores run `run` in the open transaction; the undo's images are kept
/// under `undo_run`. With conflicts and not `only_unchanged`, restores nothing.
pub(crate) async fn restore<S: Session>(
    session: &mut S,
    dialect: Dialect,
    backup: &Backup,
    run: &str,
    undo_run: &str,
    only_unchanged: bool,
) -> Result<Restored, DbError> {
    if dialect == Dialect::MySql {
        // Out of the session's READ ONLY transaction into a read-write one
        // (see `backup::before`), before anything is locked or written.
        session.execute("DO 0").await?;
    }
    if let Some(lock) = sql::lock_rows(dialect, backup, run) {
        session.own(&lock).await?;
    }
    let cols = sql::columns(session, dialect, &backup.table).await?;
    let found = sql::pinned(
        session,
        dialect,
        &sql::conflicts(dialect, backup, &cols, run),
    )
    .await?;
    let mut restored = Restored::default();
    let mut except = Vec::new();
    for row in found.rows {
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        except.push(cell(0));
        restored.conflicts.push(cell(1));
    }
    if !restored.conflicts.is_empty() && !only_unchanged {
        restored.refused = true;
        return Ok(restored);
    }
    let filter = Filter::Restore(run, &except);
    sql::pinned(
        session,
        dialect,
        &sql::undo_before(dialect, backup, &cols, undo_run, &filter),
    )
    .await?;
    restored.deleted = sql::pinned(
        session,
        dialect,
        &sql::restore_delete(dialect, backup, &filter),
    )
    .await?
    .rows_affected;
    restored.updated = sql::pinned(
        session,
        dialect,
        &sql::restore_update(dialect, backup, &cols, &filter),
    )
    .await?
    .rows_affected;
    restored.inserted = sql::pinned(
        session,
        dialect,
        &sql::restore_insert(dialect, backup, &cols, &filter),
    )
    .await?
    .rows_affected;
    restored.kept = super::settle(session, dialect, backup, &cols, (undo_run, 0))
        .await?
        .changed;
    Ok(restored)
}
