//! The audit table as the [`History`] that `run --due`, notifications and
//! the daemon read and write, and [`RunHistory`]: where a process keeps its
//! run history (the audit table, or memory without one).
//!
//! Why apart from the store: `History` is the seam the engine's callers see;
//! this adapter is the only place that turns [`AuditError`]s into
//! `HistoryError`s (keeping whether an operator must act).

use super::conn::finish;
use super::read::last_state;
use super::{AuditError, AuditStore};
use crate::history::{History, HistoryError, LastState};
use crate::outcome::RunRecord;

/// The audit table as run history: the last non-dry run of a pair (a dry run
/// changes nothing, so it neither makes a rule "not due" nor counts as a
/// state for notifications), and the last run that sent a notification.
impl History for AuditStore {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        Ok(self.last_states(&[(rule, database)]).await?.pop().flatten())
    }

    /// One connection for every pair: `run --due` and notifications ask for
    /// all the pairs of a run at once.
    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        self.migrate().await?;
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            let mut states = Vec::with_capacity(pairs.len());
            for (rule, database) in pairs {
                states.push(last_state(&mut conn, rule, database).await?);
            }
            Ok::<_, AuditError>(states)
        })
        .await;
        Ok(finish(conn, result, self.timeout).await?)
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        Ok(self.record_runs(records, notified).await?)
    }
}

/// Where a process keeps its run history: the audit table when the config
/// has one (it survives restarts and is shared by every replica and by
/// `run --due`), else memory.
#[derive(Debug)]
pub enum RunHistory {
    /// The audit table.
    Audit(AuditStore),
    /// In-process memory (no `audit:` in the config).
    Memory(crate::history::MemoryHistory),
}

impl RunHistory {
    /// The audit store, if that is where history goes.
    #[must_use]
    pub fn audit(&self) -> Option<&AuditStore> {
        match self {
            RunHistory::Audit(store) => Some(store),
            RunHistory::Memory(_) => None,
        }
    }
}

impl History for RunHistory {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        match self {
            RunHistory::Audit(store) => store.last_state(rule, database).await,
            RunHistory::Memory(memory) => memory.last_state(rule, database).await,
        }
    }

    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        match self {
            RunHistory::Audit(store) => store.last_states(pairs).await,
            RunHistory::Memory(memory) => memory.last_states(pairs).await,
        }
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        match self {
            RunHistory::Audit(store) => store.record(records, notified).await,
            RunHistory::Memory(memory) => memory.record(records, notified).await,
        }
    }
}
