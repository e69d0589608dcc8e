//! The steps every mode shares: running one rule on a session and disposing
//! of it, each statement under its timeout and the run's cancellation, detect,
//! the guard, the fix with its before/after images, verify, and the session lock.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    CLIENT_GRACE, FixProgress, PendingCommit, Run, StepError, backlog_hint, describe_error, fail,
    guard, session_reusable_after,
};
use crate::db::{CommitOutcome, DbError, Detection, Dialect, Session};
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::rule::{BatchSize, Mode};

impl Run<'_> {
    /// Runs the steps on `session` and disposes of it, or, with `keep`,
    /// hands it back when the rule ended with no step failing (every
    /// transaction ended by the engine, every lock released) and its SQL
    /// cannot have left session state of its own. After any error, timeout,
    /// cancellation or lost COMMIT reply (the state of the session unknown)
    /// it is dropped, never reused.
    pub(super) async fn on<S: Session>(
        &self,
        session: Result<S, DbError>,
        record: &mut RunRecord,
        keep: bool,
    ) -> Option<S> {
        let mut session = match session {
            Ok(session) => session,
            Err(e) => {
                fail(record, Reason::Connect, &e.to_string());
                return None;
            }
        };
        if let Some(backup) = &self.rule.backup
            && let Err(e) = self
                .step(
                    self.rule.timeout,
                    crate::backup::prepare(&mut session, self.dialect, &backup.images),
                )
                .await
        {
            let (reason, what) = describe_error(&e);
            session.abort().await;
            fail(record, reason, &format!("{what}; nothing was changed"));
            return None;
        }
        let result = match (self.rule.mode, &self.rule.batch) {
            (_, Some(batch)) => self.batched(&mut session, batch, record).await,
            (Mode::Autocommit, None) => self.autocommit(&mut session, record).await,
            (Mode::Transactional, None) => self.transactional(&mut session, record).await,
        };
        match result {
            Ok(()) if keep && session_reusable_after(self.rule, self.dialect) => {
                return Some(session);
            }
            Ok(()) => session.close().await,
            Err(StepError::Commit(cause, pending)) => {
                let bound = session.abandon_bound();
                let outcome = session.abort_after_commit().await;
                self.commit_reply_lost(record, &cause, pending, outcome);
                if !bound.is_zero() && record.outcome == Outcome::Failed {
                    let error = record.error.take().unwrap_or_default();
                    record.error = Some(format!(
                        "{error}; the connection was dropped, and the server ends that session and releases its locks within {}",
                        humantime::format_duration(bound)
                    ));
                }
            }
            Err(error) => {
                if matches!(record.outcome, Outcome::GuardTripped | Outcome::WouldFix)
                    && let Some(message) = record.message.take()
                {
                    // Decided to roll back, but the ROLLBACK itself did not complete.
                    record.message = Some(format!(
                        "{message} — the ROLLBACK did not complete (see error)"
                    ));
                }
                let dropped = self.dropped(session.abandon_bound(), record);
                session.abort().await;
                let (reason, what) = describe_error(&error);
                fail(record, reason, &format!("{what}; {dropped}"));
            }
        }
        None
    }

    /// What dropping the connection after a failure means, truthfully: the
    /// server rolls back what was open within the session's bound; what a
    /// mode that commits as it goes already committed stays committed.
    pub(super) fn dropped(&self, bound: Duration, record: &RunRecord) -> String {
        let committed = self.commits_as_it_goes() && record.changed.is_some();
        match (bound.is_zero(), committed) {
            (true, false) => "the connection was closed; SQLite rolls back the open transaction and releases its lock as it closes".to_owned(),
            (true, true) => "the connection was closed; what was committed before (changed) stays committed".to_owned(),
            (false, false) => format!(
                "the connection was dropped; the server rolls back the open transaction and releases its locks within {}",
                humantime::format_duration(bound)
            ),
            (false, true) => format!(
                "the connection was dropped; what was committed before (changed) stays committed; the server releases its locks within {}",
                humantime::format_duration(bound)
            ),
        }
    }

    /// Reports a COMMIT whose reply was lost from what the server confirmed.
    pub(super) fn commit_reply_lost(
        &self,
        record: &mut RunRecord,
        cause: &StepError,
        pending: PendingCommit,
        outcome: CommitOutcome,
    ) {
        let (reason, what) = describe_error(cause);
        let (subject, rows) = match pending {
            PendingCommit::Transaction => (
                "the transaction".to_owned(),
                record.changed.unwrap_or_default(),
            ),
            PendingCommit::Batch { number, rows } => (format!("batch {number}"), rows),
        };
        match (outcome, pending) {
            (CommitOutcome::Committed, PendingCommit::Transaction) => {
                record.outcome = Outcome::Fixed;
                record.reason = None;
                record.message = Some(format!(
                    "the COMMIT reply was lost ({what}); the server confirmed afterwards that the transaction committed"
                ));
            }
            (CommitOutcome::Committed, PendingCommit::Batch { number, rows }) => {
                record.changed = Some(record.changed.unwrap_or_default().saturating_add(rows));
                record.batches = Some(number);
                fail(
                    record,
                    reason,
                    &format!(
                        "the COMMIT reply of batch {number} was lost ({what}); the server confirmed afterwards that it committed; the run stopped there"
                    ),
                );
            }
            (CommitOutcome::RolledBack, _) => fail(
                record,
                reason,
                &format!(
                    "COMMIT of {subject} failed ({what}); the server confirmed afterwards that {subject} rolled back"
                ),
            ),
            (CommitOutcome::Unknown(why), _) => {
                let before = match pending {
                    PendingCommit::Transaction => String::new(),
                    PendingCommit::Batch { number, .. } => {
                        format!("; the {} batches before it are committed", number - 1)
                    }
                };
                fail(
                    record,
                    Reason::CommitUnknown,
                    &format!(
                        "COMMIT of {subject} got no reply ({what}); whether its {rows} changed rows are committed is unknown: {why}. Run detect by hand (or `dbjanitor run --dry-run`) to see what is left{before}"
                    ),
                );
            }
        }
    }

    pub(super) fn skipped(&self, record: &mut RunRecord) {
        record.outcome = Outcome::Skipped;
        record.reason = Some(Reason::LockHeld);
        record.message = Some(match self.dialect {
            Dialect::Sqlite => "the SQLite database is locked by another writer".to_owned(),
            _ => format!("lock {:?} is held by another run", self.rule.lock.name),
        });
    }

    pub(super) fn commits_as_it_goes(&self) -> bool {
        self.rule.mode == Mode::Autocommit || self.rule.batch.is_some()
    }

    /// Runs `future` under the client-side timeout and the cancellation token.
    pub(super) async fn step<T>(
        &self,
        limit: Duration,
        future: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, StepError> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(StepError::Cancelled),
            result = tokio::time::timeout(limit.saturating_add(CLIENT_GRACE), future) => match result {
                Ok(inner) => inner.map_err(StepError::Db),
                Err(_) => Err(StepError::Timeout(limit)),
            },
        }
    }

    /// A COMMIT: not cancellable (cancelling it would only make its outcome
    /// unknown); any failure becomes [`StepError::Commit`].
    pub(super) async fn commit_step(
        &self,
        pending: PendingCommit,
        future: impl Future<Output = Result<(), DbError>>,
    ) -> Result<(), StepError> {
        match tokio::time::timeout(self.rule.timeout.saturating_add(CLIENT_GRACE), future).await {
            Ok(Ok(())) => Ok(()),
            // A refusal is an answer: nothing of the transaction is committed.
            Ok(Err(e @ DbError::CommitRefused(_))) => Err(StepError::Db(e)),
            Ok(Err(e)) => Err(StepError::Commit(Box::new(StepError::Db(e)), pending)),
            Err(_) => Err(StepError::Commit(
                Box::new(StepError::Timeout(self.rule.timeout)),
                pending,
            )),
        }
    }

    pub(super) fn detect_sql(&self) -> &str {
        // Validated at load time: every target database has detect SQL.
        self.rule
            .detect
            .for_dialect(self.dialect)
            .unwrap_or_default()
    }

    pub(super) fn fix_statements(&self) -> Vec<&str> {
        self.rule
            .fix
            .as_ref()
            .map(|fix| fix.statements(self.dialect))
            .unwrap_or_default()
    }

    /// Rows detect reads at most: for a rule with a fix, one more than
    /// `max_rows`, enough to know the guard trips; a report-only rule counts all.
    pub(super) fn detect_limit(&self) -> Option<u64> {
        self.rule
            .fix
            .as_ref()
            .map(|_| self.rule.max_rows.saturating_add(1))
    }

    pub(super) async fn detect<S: Session>(
        &self,
        session: &mut S,
        keep: usize,
    ) -> Result<Detection, StepError> {
        self.step(
            self.rule.timeout,
            session.detect(self.detect_sql(), keep, self.detect_limit()),
        )
        .await
    }

    /// Runs the fix's statements in order into `progress`. Only
    /// data-modifying statements count; the fix stops early (and returns
    /// `false`) once one statement changed more than `max_rows`.
    pub(super) async fn run_fix<S: Session>(
        &self,
        session: &mut S,
        progress: &mut FixProgress,
    ) -> Result<bool, StepError> {
        let size = self
            .rule
            .batch
            .as_ref()
            .and_then(|b| b.size)
            .map(|_| self.batch_size.load(Ordering::Relaxed));
        let window = self
            .window
            .lock()
            .map(|window| window.clone())
            .unwrap_or_default();
        for statement in self.fix_statements() {
            let mut statement = match size {
                Some(size) => Cow::Owned(BatchSize::substitute(statement, size)),
                None => Cow::Borrowed(statement),
            };
            if let Some(window) = &window {
                statement = Cow::Owned(window.substitute(&statement));
            }
            let executed = self
                .step(self.rule.timeout, session.execute(&statement))
                .await?;
            progress.statements += 1;
            if executed.modifies_data {
                progress.modified = true;
                progress.changed = progress.changed.max(executed.rows);
                if executed.rows > self.rule.max_rows {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The capture of images for `batch` (0: the transaction of a
    /// transactional rule), when the rule declares `backup:`.
    pub(super) fn capture<'c>(
        &'c self,
        run_id: &'c str,
        batch: u64,
    ) -> Option<crate::backup::Capture<'c>> {
        self.rule
            .backup
            .as_ref()
            .map(|backup| crate::backup::Capture {
                backup,
                dialect: self.dialect,
                run_id,
                rule: &self.rule.name,
                batch,
                detect: self.detect_sql(),
                window: None,
            })
    }

    /// Before the fix: the before-images of the detected rows (`backup:`);
    /// with `batch.key`, of the detected rows in this batch's key window.
    pub(super) async fn images_before<S: Session>(
        &self,
        session: &mut S,
        record: &RunRecord,
        batch: u64,
    ) -> Result<(), StepError> {
        // Keyset batches: this batch's window (set by `next_window`).
        let keys = self.window.lock().ok().and_then(|window| window.clone());
        let column = self.rule.batch.as_ref().and_then(|b| b.key.as_ref());
        if let Some(mut capture) = self.capture(&record.run_id, batch) {
            capture.window = column
                .zip(keys.as_ref())
                .map(|(key, keys)| crate::backup::Window {
                    column: &key.column,
                    keys,
                });
            self.step(self.rule.timeout, crate::backup::before(session, &capture))
                .await?;
        }
        Ok(())
    }

    /// After the fix: the after-images, and the guard: a fix that changed
    /// more rows (`changed`, its largest statement) than the images show
    /// changed touched rows detect did not return. Returns `false` when the
    /// guard tripped (the caller rolls back).
    pub(super) async fn images_after<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
        batch: u64,
        changed: u64,
    ) -> Result<bool, StepError> {
        let run_id = record.run_id.clone();
        let Some(capture) = self.capture(&run_id, batch) else {
            return Ok(true);
        };
        let kept = self
            .step(self.rule.timeout, crate::backup::after(session, &capture))
            .await?;
        record.kept = Some(record.kept.unwrap_or(0).saturating_add(kept.changed));
        if changed > kept.changed {
            let keyset = self.rule.batch.as_ref().is_some_and(|b| b.key.is_some());
            let window = if keyset {
                " in this batch's key window"
            } else {
                ""
            };
            guard(
                record,
                Reason::FixChangedUndetectedRows,
                format!(
                    "the fix changed {changed} rows but only {} of the {} rows detect returned{window} in {} changed: it touched rows detect did not return{window} (or set rows to the values they had); rolled back",
                    kept.changed, kept.captured, capture.backup.table
                ),
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// Steps 3–4 shared by every mode: detect, then decide whether the fix may
    /// run. Returns `false` when the run is already decided.
    pub(super) async fn detect_and_guard<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        let detection = self.detect(session, Sample::MAX_ROWS).await?;
        record.detected = Some(detection.count);
        record.detected_is_lower_bound = !detection.complete;
        record.sample = detection.sample;
        if detection.count == 0 {
            record.outcome = Outcome::Clean;
            return Ok(false);
        }
        if self.rule.fix.is_none() {
            record.outcome = Outcome::Found;
            record.message = Some(format!(
                "{} rows found; the rule has no fix (report only)",
                detection.count
            ));
            return Ok(false);
        }
        if detection.count > self.rule.max_rows {
            let found = if detection.complete {
                format!("detect found {} rows", detection.count)
            } else {
                format!(
                    "detect found more than {} rows (it stopped reading at {})",
                    self.rule.max_rows, detection.count
                )
            };
            guard(
                record,
                Reason::DetectOverMaxRows,
                format!(
                    "{found}, more than max_rows {}; the fix was not run. {}",
                    self.rule.max_rows,
                    backlog_hint(
                        &self.rule.name,
                        detection.complete.then_some(detection.count)
                    )
                ),
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// Verification: detect again; any row left → `verify_failed`, with the
    /// rows that remained as the sample. Returns whether it passed.
    pub(super) async fn verify<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
        consequence: &str,
    ) -> Result<bool, StepError> {
        if !self.rule.verify {
            return Ok(true);
        }
        let after = self.detect(session, Sample::MAX_ROWS).await?;
        record.remaining = Some(after.count);
        if after.count == 0 {
            return Ok(true);
        }
        let found = if after.complete {
            format!("{} rows", after.count)
        } else {
            format!("more than {} rows", self.rule.max_rows)
        };
        record.sample = after.sample;
        record.sample.after_fix = true;
        guard(
            record,
            Reason::VerifyFailed,
            format!(
                "detect still found {found} after the fix (the sample shows rows that remained); {consequence}"
            ),
        );
        Ok(false)
    }

    /// Takes the session lock and sets the session timeout; `false` when skipped.
    pub(super) async fn lock_session<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        let lock = &self.rule.lock;
        if !self
            .step(
                lock.wait.saturating_add(self.rule.timeout),
                session.lock_session(&lock.name, lock.wait),
            )
            .await?
        {
            self.skipped(record);
            return Ok(false);
        }
        self.step(
            self.rule.timeout,
            session.set_statement_timeout(self.rule.timeout, false),
        )
        .await?;
        Ok(true)
    }

    pub(super) async fn unlock_session<S: Session>(
        &self,
        session: &mut S,
    ) -> Result<(), StepError> {
        self.step(
            self.rule.timeout,
            session.unlock_session(&self.rule.lock.name),
        )
        .await
    }
}
