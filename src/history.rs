//! What dbjanitor remembers between runs of a rule.
//!
//! Two features need memory: notifications that fire on a *change* of state
//! (first failure, recovery) and repeat only after `renotify_after`, and
//! `run --due`, which runs a rule only if its schedule ticked since its last
//! run. The daemon keeps this in memory ([`MemoryHistory`]); one-shot runs
//! (CronJob, systemd timer) keep it in the audit table, which implements the
//! same trait. Without either, every run starts with no memory.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::outcome::{Outcome, RunRecord};

/// The last known state of one (rule, database) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastState {
    /// Outcome of the latest recorded run.
    pub outcome: Outcome,
    /// When that run started.
    pub started_at: DateTime<Utc>,
    /// When a notification was last sent for this pair, whatever its outcome.
    pub last_notified_at: Option<DateTime<Utc>>,
}

/// Errors of a history store (the audit database may be down).
#[derive(Debug, thiserror::Error)]
#[error("run history: {0}")]
pub struct HistoryError(pub String);

/// A store of past runs.
pub trait History: Send + Sync {
    /// The last state of `rule` on `database`, if it ever ran.
    fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> impl Future<Output = Result<Option<LastState>, HistoryError>> + Send;

    /// [`History::last_state`] for many pairs at once, in order. Stores that
    /// pay per connection (the audit table) answer them all on one.
    fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<Option<LastState>>, HistoryError>> + Send {
        async move {
            let mut states = Vec::with_capacity(pairs.len());
            for (rule, database) in pairs {
                states.push(self.last_state(rule, database).await?);
            }
            Ok(states)
        }
    }

    /// Records finished runs; `notified[i]` says whether a notification was
    /// sent for `records[i]`.
    fn record(
        &self,
        records: &[RunRecord],
        notified: &[bool],
    ) -> impl Future<Output = Result<(), HistoryError>> + Send;
}

/// History kept in the process: the daemon's memory, and tests.
#[derive(Debug, Default)]
pub struct MemoryHistory {
    states: Mutex<HashMap<(String, String), LastState>>,
}

impl History for MemoryHistory {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        let states = self
            .states
            .lock()
            .map_err(|_| HistoryError("in-memory history poisoned".to_owned()))?;
        Ok(states.get(&(rule.to_owned(), database.to_owned())).cloned())
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| HistoryError("in-memory history poisoned".to_owned()))?;
        for (i, record) in records.iter().enumerate() {
            let key = (record.rule.clone(), record.database.clone());
            let previous_notified = states.get(&key).and_then(|s| s.last_notified_at);
            let was_notified = notified.get(i).copied().unwrap_or(false);
            states.insert(
                key,
                LastState {
                    outcome: record.outcome,
                    started_at: record.started_at,
                    last_notified_at: if was_notified {
                        Some(record.started_at)
                    } else {
                        previous_notified
                    },
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_history_keeps_the_last_notification_time() {
        let history = MemoryHistory::default();
        let mut first = RunRecord::new("r", "d", false, Utc::now());
        first.outcome = Outcome::Failed;
        history
            .record(&[first.clone()], &[true])
            .await
            .expect("record");
        let mut second = RunRecord::new("r", "d", false, Utc::now());
        second.outcome = Outcome::Failed;
        history
            .record(&[second.clone()], &[false])
            .await
            .expect("record");
        let state = history
            .last_state("r", "d")
            .await
            .expect("state")
            .expect("some");
        assert_eq!(state.outcome, Outcome::Failed);
        assert_eq!(state.started_at, second.started_at);
        assert_eq!(state.last_notified_at, Some(first.started_at));
        assert!(
            history
                .last_state("r", "other")
                .await
                .expect("state")
                .is_none()
        );
    }
}
