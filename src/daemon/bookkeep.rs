//! The daemon's bookkeeping of finished runs: judge, record, notify — per
//! (rule, database) pair, off the schedule.
//!
//! Each pair has a backlog worked by one task at a time, so a run is always
//! judged against the history its predecessors left. With an audit table,
//! a batch is judged and **recorded first**, under the pair's claim
//! ([`AuditStore::settle`]), and told afterwards, outside the transaction:
//! a replica that claims the pair next reads the decision even if the
//! message is still on its way, so two replicas never tell one change
//! because the audit database stalled at the COMMIT (the soak's duplicate,
//! issue 9). When the COMMIT's answer is lost, nobody is told until the
//! audit database answers and a new claim shows whether the runs are there
//! (there: the decision stands and is told; absent: judged again against
//! what is there now). The cost, stated in README "Run as a daemon": a
//! process killed between the COMMIT and the delivery loses that message
//! (its row says told; the next reminder comes after `renotify_after`), and
//! a delivery that fails after the COMMIT has its rows' `notified` flag
//! cleared again, so the next run tells it again.

use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{error, info, warn};

use super::tell::{self, Decision, Known, Start};
use super::{
    Backlog, HISTORY_WAIT_TIMEOUTS, RECORD_RETRY_FIRST_WAIT, RECORD_RETRY_FOR,
    RECORD_RETRY_MAX_WAIT, Shared,
};
use crate::audit::{AuditError, AuditStore, RunHistory, Settled, Turn, Unsettled};
use crate::config::Config;
use crate::history::{History, HistoryError, LastState};
use crate::metrics::DaemonMetrics;
use crate::notify;
use crate::outcome::RunRecord;

/// The run history as the daemon uses it: every failed read or write is
/// counted in `dbjanitor_audit_errors_total`.
pub(super) struct Counted<'a> {
    history: &'a RunHistory,
    metrics: &'a DaemonMetrics,
}

impl Counted<'_> {
    fn count<T>(&self, result: Result<T, HistoryError>) -> Result<T, HistoryError> {
        if result.is_err() {
            self.metrics.audit_error(1);
        }
        result
    }
}

impl History for Counted<'_> {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        self.count(self.history.last_state(rule, database).await)
    }

    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        self.count(self.history.last_states(pairs).await)
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        self.count(self.history.record(records, notified).await)
    }
}

/// How long a pair's runs wait, not yet notified, for the run history to be
/// readable again: [`HISTORY_WAIT_TIMEOUTS`] times `audit.timeout`.
pub(super) fn history_wait(config: &Config) -> Duration {
    config
        .audit
        .as_ref()
        .map_or(crate::audit::DEFAULT_TIMEOUT, |a| a.timeout)
        .saturating_mul(HISTORY_WAIT_TIMEOUTS)
}

/// A decision recorded under the claim, with its turn in the pair's tell
/// sequence (none: it tells nothing, or its turn is unknown).
#[derive(Clone, Copy)]
struct Told<'d, 'c> {
    decision: &'d Decision<'c>,
    turn: Option<&'d Turn>,
}

/// The (rule, database) of a batch (every run in it is of the same pair).
fn pair_of(batch: &[RunRecord]) -> Option<(String, String)> {
    batch.first().map(|r| (r.rule.clone(), r.database.clone()))
}

impl Shared {
    /// Adds a finished run to its pair's backlog, starting a worker unless one is busy.
    pub(super) fn enqueue(self: &std::sync::Arc<Self>, record: RunRecord) {
        let key = (record.rule.clone(), record.database.clone());
        let backlog = self.bookkeeping.get(&key).cloned().unwrap_or_default();
        let start = match backlog.lock() {
            Ok(mut backlog) => {
                backlog.records.push(record);
                !std::mem::replace(&mut backlog.busy, true)
            }
            Err(_) => false,
        };
        if start {
            let shared = std::sync::Arc::clone(self);
            self.tracker
                .spawn(tracing::Instrument::in_current_span(async move {
                    shared.work_through(&backlog).await;
                }));
        }
    }

    /// Judges, records and notifies the backlog's runs, batch by batch, until it is empty.
    async fn work_through(&self, backlog: &std::sync::Mutex<Backlog>) {
        loop {
            let mut batch = match backlog.lock() {
                Ok(mut backlog) if backlog.records.is_empty() => {
                    backlog.busy = false;
                    return;
                }
                Ok(mut backlog) => std::mem::take(&mut backlog.records),
                Err(_) => return,
            };
            match self.history.audit() {
                Some(store) => self.bookkeep_claimed(store, &mut batch).await,
                None => self.bookkeep_in_memory(&mut batch).await,
            }
        }
    }

    /// No audit table: the process's memory is the history, and the pair's
    /// backlog (one worker at a time) already serialises read, notify, record.
    async fn bookkeep_in_memory(&self, batch: &mut [RunRecord]) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        let history = self.counted();
        let state = history.last_state(&rule, &database).await.ok().flatten();
        let start = Start::Known(Known { state, since: None });
        let decision = tell::decide(&self.config, batch, start, &notify::host_name(), Utc::now());
        let delivered = decision.deliver(batch).await;
        self.record_until_done(&history, batch, &delivered).await;
    }

    /// Design §3 step 9 across processes: under the pair's claim in the
    /// audit database the runs are judged against the history as it was
    /// before them and recorded with the decision; then, outside the
    /// transaction, told. While the claim cannot be had (audit database down
    /// or stalled), it is retried with backoff for up to
    /// [`Shared::history_wait`] — the runs wait, not yet notified — and then
    /// judged against this process's own last known state of the pair
    /// ([`Shared::without_claim`]). When the COMMIT got no answer, nobody is
    /// told until a new claim shows whether the runs are recorded; that is
    /// retried for up to [`RECORD_RETRY_FOR`].
    async fn bookkeep_claimed(&self, store: &AuditStore, batch: &mut [RunRecord]) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        let host = notify::host_name();
        let started = Instant::now();
        let mut wait = RECORD_RETRY_FIRST_WAIT;
        // A decision whose COMMIT got no answer: recorded or not, unknown.
        let mut unsure: Option<(Decision<'_>, Option<Turn>)> = None;
        loop {
            let attempt = {
                // Held for the whole claim: it is an audit connection.
                let _slot = self.bookkeeping_slot().await;
                let records: &[RunRecord] = batch;
                store
                    .settle(
                        records,
                        (self.claim_wait, self.tell_for),
                        unsure.is_some(),
                        |state, since| {
                            let start = Start::Known(Known {
                                state: state.cloned(),
                                since,
                            });
                            let decision =
                                tell::decide(&self.config, records, start, &host, Utc::now());
                            let flags = decision.notified.clone();
                            (decision, flags)
                        },
                    )
                    .await
            };
            let e = match attempt {
                Ok(Settled::Decided(decision, turn)) => {
                    if unsure.is_some() {
                        info!(
                            runs = batch.len(),
                            "the runs were not recorded (their COMMIT was lost): judged again against the history as it is now"
                        );
                    }
                    let told = Told {
                        decision: &decision,
                        turn: turn.as_ref(),
                    };
                    return self.tell(store, (&rule, &database), batch, told).await;
                }
                Ok(Settled::AlreadyRecorded(now)) => {
                    if let Some((decision, turn)) = unsure.take() {
                        let told = Told {
                            decision: &decision,
                            turn: turn.as_ref(),
                        };
                        self.tell_late(store, (&rule, &database), batch, told, now.as_ref())
                            .await;
                    }
                    return;
                }
                Err(Unsettled::Unsure(e, decision, turn)) => {
                    warn!(error = %e, runs = batch.len(), "the audit database did not confirm the claim's COMMIT: nobody is told until it answers and shows whether the runs are recorded");
                    unsure = Some((decision, turn));
                    e
                }
                Err(Unsettled::NotClaimed(e)) => e,
            };
            self.metrics.audit_error(1);
            let limit = if unsure.is_some() {
                RECORD_RETRY_FOR
            } else {
                self.history_wait
            };
            if e.needs_operator() || self.stop.is_cancelled() || started.elapsed() + wait > limit {
                return self.give_up(store, batch, unsure, &e).await;
            }
            warn!(error = %e, runs = batch.len(), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "cannot claim the pair in the run history; retrying (its runs wait, not yet notified)");
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(RECORD_RETRY_MAX_WAIT);
        }
    }

    /// The claim could not be had in time (or the daemon is stopping).
    /// With a decision whose COMMIT is unconfirmed, it is told as decided and
    /// not recorded again (a second insert could duplicate the rows; a
    /// message told twice is better than one never told). Otherwise the runs
    /// are judged without the claim and recorded afterwards.
    async fn give_up(
        &self,
        store: &AuditStore,
        batch: &mut [RunRecord],
        unsure: Option<(Decision<'_>, Option<Turn>)>,
        e: &AuditError,
    ) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        match unsure {
            Some((decision, turn)) => {
                error!(error = %e, runs = batch.len(), "whether the runs are recorded in the run history is still unknown: telling them as decided, not recording them again");
                let told = Told {
                    decision: &decision,
                    turn: turn.as_ref(),
                };
                self.tell(store, (&rule, &database), batch, told).await;
            }
            None => self.without_claim(batch, e).await,
        }
    }

    /// No claim: the runs are judged against this process's own last known
    /// state of the pair, or told with `change: unknown` if it has none,
    /// then recorded (with retries) with what was delivered.
    async fn without_claim(&self, batch: &mut [RunRecord], e: &AuditError) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        warn!(error = %e, runs = batch.len(), "cannot read the run history: notifying from this process's own last known state of the pair (\"unknown\" if none)");
        let start = match self.known(&rule, &database) {
            Some(known) => Start::Known(known),
            None => Start::Unknown,
        };
        let decision = tell::decide(&self.config, batch, start, &notify::host_name(), Utc::now());
        self.remember(&rule, &database, decision.known.clone());
        let delivered = decision.deliver(batch).await;
        self.record_until_done(&self.counted(), batch, &delivered)
            .await;
    }

    /// A decision whose COMMIT went through though its answer was lost,
    /// found recorded once the audit database answered again. It is told
    /// now, unless another process has meanwhile told a newer state of the
    /// pair (its delivered notification is about a later run): then this
    /// older news is out of date, is not told, and its rows are unmarked.
    async fn tell_late(
        &self,
        store: &AuditStore,
        pair: (&str, &str),
        batch: &mut [RunRecord],
        told: Told<'_, '_>,
        now: Option<&LastState>,
    ) {
        let decision = told.decision;
        let last_told = batch
            .iter()
            .zip(&decision.notified)
            .filter(|(_, told)| **told)
            .map(|(record, _)| record.started_at)
            .max();
        let newer = now
            .and_then(|state| state.notified)
            .is_some_and(|told| last_told.is_some_and(|ours| told.at > ours));
        if !newer {
            info!(
                runs = batch.len(),
                "the runs were recorded though the COMMIT's answer was lost: telling them as decided"
            );
            return self.tell(store, pair, batch, told).await;
        }
        info!(
            runs = batch.len(),
            "the runs were recorded though the COMMIT's answer was lost, and a newer state of the pair was told meanwhile: not telling this older one"
        );
        let none = vec![false; batch.len()];
        self.unmark(store, &decision.undelivered(batch, &none))
            .await;
        if let Some(turn) = told.turn {
            store.done_turn(turn).await;
        }
    }

    /// Clears `notified` of runs decided as told but not delivered, so the
    /// history says what the receivers were really told.
    async fn unmark(&self, store: &AuditStore, run_ids: &[&str]) {
        if run_ids.is_empty() {
            return;
        }
        let result = {
            let _slot = self.bookkeeping_slot().await;
            store.unmark_notified(run_ids).await
        };
        if let Err(e) = result {
            self.metrics.audit_error(1);
            warn!(error = %e, runs = run_ids.len(), "runs whose notification was not delivered stay marked as told in the run history: the next reminder comes after renotify_after");
        }
    }

    /// Delivers a decision recorded under the claim, in its turn: after the
    /// pair's earlier decisions are delivered (or their deadline passed),
    /// so messages about one pair arrive in decision order across
    /// replicas. The rows of runs no notifier delivered get their
    /// `notified` flag cleared, so the history says what the receivers
    /// were really told.
    async fn tell(
        &self,
        store: &AuditStore,
        (rule, database): (&str, &str),
        batch: &mut [RunRecord],
        told: Told<'_, '_>,
    ) {
        let decision = told.decision;
        self.remember(rule, database, decision.known.clone());
        if let Some(turn) = told.turn {
            store.wait_turn(turn, &self.stop).await;
        }
        let delivered = decision.deliver(batch).await;
        if let Some(turn) = told.turn {
            store.done_turn(turn).await;
        }
        self.unmark(store, &decision.undelivered(batch, &delivered))
            .await;
    }

    pub(super) fn counted(&self) -> Counted<'_> {
        Counted {
            history: self.history.as_ref(),
            metrics: self.metrics.as_ref(),
        }
    }

    /// This process's last known state of a pair.
    fn known(&self, rule: &str, database: &str) -> Option<Known> {
        let known = self.known.lock().ok()?;
        known.get(&(rule.to_owned(), database.to_owned())).cloned()
    }

    fn remember(&self, rule: &str, database: &str, state: Known) {
        if state.state.is_none() {
            return;
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert((rule.to_owned(), database.to_owned()), state);
        }
    }

    async fn bookkeeping_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        std::sync::Arc::clone(&self.bookkeeping_slots)
            .acquire_owned()
            .await
            .ok()
    }

    /// Records `batch`, retrying with backoff for up to [`RECORD_RETRY_FOR`]
    /// while the run history does not take it (a stalled or restarting audit
    /// database), so that a short outage loses no audit row. Meanwhile this
    /// pair's later runs wait in its backlog, not yet notified: they are then
    /// judged against a complete history, and an unchanged state is still told
    /// once. Other pairs are not held up: no bookkeeping slot is kept while
    /// waiting. After a signal, one more attempt is made, then it gives up.
    async fn record_until_done(
        &self,
        history: &Counted<'_>,
        batch: &[RunRecord],
        notified: &[bool],
    ) {
        let give_up = Instant::now() + RECORD_RETRY_FOR;
        let mut wait = RECORD_RETRY_FIRST_WAIT;
        loop {
            let result = {
                let _slot = self.bookkeeping_slot().await;
                history.record(batch, notified).await
            };
            let Err(e) = result else { return };
            if e.needs_operator() {
                // A newer dbjanitor migrated the audit table, or a migration
                // was left half done: retrying cannot help.
                error!(error = %e, runs = batch.len(), "the runs could not be recorded in the run history, and retrying cannot help until an operator acts");
                return;
            }
            if self.stop.is_cancelled() || Instant::now() + wait > give_up {
                error!(error = %e, runs = batch.len(), "the runs could not be recorded in the run history (retried for up to {}s)", RECORD_RETRY_FOR.as_secs());
                return;
            }
            warn!(error = %e, runs = batch.len(), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "the run history did not take the runs; retrying (this pair's later runs wait)");
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(RECORD_RETRY_MAX_WAIT);
        }
    }
}
