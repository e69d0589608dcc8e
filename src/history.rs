//! What dbjanitor remembers between runs of a rule.
//!
//! Two features need memory: notifications that fire on a *change* of state
//! (first failure, recovery) and repeat only after `renotify_after`, and
//! `run --due`, which runs a rule only if its schedule ticked since its last
//! run. With `audit:` the audit table keeps it, for one-shot runs (CronJob,
//! systemd timer) and the daemon alike (the daemon reads and writes it under
//! a per-pair claim, so replicas agree); without, the daemon keeps it in
//! memory ([`MemoryHistory`]) and a one-shot run starts with no memory. Both
//! stores implement the same trait.
//!
//! Only real runs are remembered: a dry run changes nothing and is never a
//! state. A `skipped` run (the lock was held by another replica or a timer)
//! is a run for `--due` but not a state: it says nothing about the data. And
//! what the receivers were told is the last notification that was
//! *delivered* ([`Notified`]), not merely attempted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::outcome::{Outcome, RunRecord};

/// The last known state of one (rule, database) pair, from real runs only:
/// a dry run changes nothing, so it neither makes a rule "not due" nor is a
/// state anyone must be told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastState {
    /// Start of the latest real run, whatever its outcome, `skipped`
    /// included: `run --due` asks whether the schedule ticked since.
    pub last_run_at: DateTime<Utc>,
    /// Outcome of the latest real run that looked at the data (not
    /// `skipped`: a run that found the lock held elsewhere says nothing about
    /// the data, so it must not look like a change of state). `None` when
    /// every recorded run was skipped.
    pub state: Option<Outcome>,
    /// The last notification that was delivered about a real run: what the
    /// receivers were last told.
    pub notified: Option<Notified>,
}

/// A delivered notification, as the history remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    /// The outcome it told about.
    pub outcome: Outcome,
    /// Start of the run it was about.
    pub at: DateTime<Utc>,
}

impl LastState {
    /// The state after `record` (notified or not) on top of `previous`, or
    /// `previous` unchanged for a dry run. The daemon's memory folds records
    /// with it; the audit table answers the same questions with queries.
    #[must_use]
    pub fn after(previous: Option<&LastState>, record: &RunRecord, notified: bool) -> Option<Self> {
        if record.dry_run {
            return previous.cloned();
        }
        let state = if record.outcome == Outcome::Skipped {
            previous.and_then(|p| p.state)
        } else {
            Some(record.outcome)
        };
        let notified = if notified {
            Some(Notified {
                outcome: record.outcome,
                at: record.started_at,
            })
        } else {
            previous.and_then(|p| p.notified)
        };
        Some(LastState {
            last_run_at: record.started_at,
            state,
            notified,
        })
    }
}

/// Errors of a history store (the audit database may be down).
///
/// It keeps whether retrying can help: an audit table migrated by a newer
/// dbjanitor, or left half-migrated, stays so until an operator acts, and a
/// daemon that retried it would only fill its log (issue 13.5).
#[derive(Debug, thiserror::Error)]
#[error("run history: {message}")]
pub struct HistoryError {
    message: String,
    needs_operator: bool,
}

impl HistoryError {
    /// A failure that may pass (a connection, a timeout): worth retrying.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            needs_operator: false,
        }
    }

    /// A failure that stays until an operator acts: not worth retrying.
    pub fn needing_operator(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            needs_operator: true,
        }
    }

    /// Retrying cannot help; the message says what the operator must do.
    #[must_use]
    pub fn needs_operator(&self) -> bool {
        self.needs_operator
    }
}

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

impl MemoryHistory {
    /// A history that starts from `state` for (`rule`, `database`): the daemon
    /// judges a backlog of runs against what the audit table said, in order.
    #[must_use]
    pub fn seeded(rule: &str, database: &str, state: Option<LastState>) -> Self {
        let history = Self::default();
        if let (Some(state), Ok(mut states)) = (state, history.states.lock()) {
            states.insert((rule.to_owned(), database.to_owned()), state);
        }
        history
    }
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
            .map_err(|_| HistoryError::new("in-memory history poisoned"))?;
        Ok(states.get(&(rule.to_owned(), database.to_owned())).cloned())
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| HistoryError::new("in-memory history poisoned"))?;
        for (i, record) in records.iter().enumerate() {
            let key = (record.rule.clone(), record.database.clone());
            let was_notified = notified.get(i).copied().unwrap_or(false);
            if let Some(next) = LastState::after(states.get(&key), record, was_notified) {
                states.insert(key, next);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Outcome, dry_run: bool) -> RunRecord {
        let mut r = RunRecord::new("r", "d", dry_run, Utc::now());
        r.outcome = outcome;
        r
    }

    async fn state(history: &MemoryHistory) -> LastState {
        history
            .last_state("r", "d")
            .await
            .expect("state")
            .expect("some")
    }

    #[tokio::test]
    async fn memory_history_keeps_the_last_delivered_notification() {
        let history = MemoryHistory::default();
        let first = run(Outcome::Found, false);
        history
            .record(std::slice::from_ref(&first), &[true])
            .await
            .expect("record");
        let second = run(Outcome::Failed, false);
        history
            .record(std::slice::from_ref(&second), &[false])
            .await
            .expect("record");
        let now = state(&history).await;
        assert_eq!(now.state, Some(Outcome::Failed));
        assert_eq!(now.last_run_at, second.started_at);
        // What the receivers were told is still the found run.
        assert_eq!(
            now.notified,
            Some(Notified {
                outcome: Outcome::Found,
                at: first.started_at
            })
        );
        assert!(
            history
                .last_state("r", "other")
                .await
                .expect("state")
                .is_none()
        );
    }

    #[tokio::test]
    async fn skipped_runs_move_only_the_last_run_time_and_dry_runs_nothing() {
        let history = MemoryHistory::default();
        let found = run(Outcome::Found, false);
        history
            .record(std::slice::from_ref(&found), &[true])
            .await
            .expect("record");
        let skipped = run(Outcome::Skipped, false);
        history
            .record(std::slice::from_ref(&skipped), &[false])
            .await
            .expect("record");
        let now = state(&history).await;
        assert_eq!(now.state, Some(Outcome::Found), "skipped is not a state");
        assert_eq!(now.last_run_at, skipped.started_at, "but it is a run");
        let dry = run(Outcome::WouldFix, true);
        history.record(&[dry], &[true]).await.expect("record");
        assert_eq!(state(&history).await, now, "a dry run changes nothing");
        // Only skipped runs so far: a run, but no state.
        let fresh = MemoryHistory::default();
        fresh.record(&[skipped], &[false]).await.expect("record");
        assert_eq!(state(&fresh).await.state, None);
    }
}
