//! One rule run, step by step (docs/architecture.md §3), and a whole plan of them.
//!
//! The engine is written once, generically over [`Session`]; each backend
//! supplies its own locks and transaction statements. Every statement runs
//! under a client-side timeout (the rule's `timeout` plus a small grace, so the
//! server-side limit normally fires first with a clean error) and can be
//! cancelled. On *any* error, timeout or cancellation the connection is
//! dropped rather than reused: the server then rolls back whatever was open
//! and releases every lock the connection held. Nothing is ever left half
//! done on a connection that someone else might use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::db::replica::{GateError, LagGate, Verdict};
use crate::db::{AnySession, CommitOutcome, ConnectSettings, DbError, Detection, Dialect, Session};
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::plan::{Plan, Target};
use crate::rule::{Batch, BatchKey, BatchSize, KeyWindow, Mode, Rule};

/// Extra time the client gives a statement beyond the server-side timeout.
const CLIENT_GRACE: Duration = Duration::from_secs(2);

/// How often a long batch run logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How a run is carried out.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Run the fix and roll it back.
    pub dry_run: bool,
    /// How many (rule, database) pairs run at once.
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            jobs: 4,
        }
    }
}

/// Runs every target of `plan` and returns the records in plan order. The
/// targets of one database run one after another, in plan order, on one
/// connection (issue 11: a fleet of databases pays one connection set-up per
/// database, not per rule); `jobs` databases run at once. Rules sharing a
/// lock therefore never skip each other within one process. A connection is
/// reused only after a rule that ended with nothing in doubt (see
/// [`Run::on`]), and only once its backend confirmed nothing of that rule is
/// left on it ([`AnySession::reset`]); otherwise the next rule opens its own.
pub async fn run_plan(
    plan: &Plan,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Vec<RunRecord> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (index, target) in plan.targets.iter().enumerate() {
        let group = *group_of
            .entry(target.database.name.as_str())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[group].push(index);
    }
    let mut finished: Vec<(usize, RunRecord)> = futures_util::stream::iter(groups)
        .map(|group| async move {
            let mut records = Vec::with_capacity(group.len());
            let mut session = None;
            let mut unreachable: Option<(String, String)> = None;
            for index in group {
                let target = &plan.targets[index];
                if let Some((rule, error)) = &unreachable {
                    records.push((index, not_attempted(target, options, rule, error)));
                    continue;
                }
                let (record, kept) =
                    run_target_on(target, options, cancel, session.take(), true).await;
                if record.reason == Some(Reason::Connect)
                    && let Some(error) = &record.error
                {
                    // One dead database is one problem: its later rules are
                    // not tried (each would wait out its own connect timeout
                    // and log the same error again).
                    unreachable = Some((record.rule.clone(), error.clone()));
                }
                records.push((index, record));
                session = kept;
            }
            if let Some(session) = session {
                session.close().await;
            }
            records
        })
        .buffer_unordered(options.jobs.max(1))
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    finished.sort_by_key(|(index, _)| *index);
    finished.into_iter().map(|(_, record)| record).collect()
}

/// The record of a rule not tried because its database could not be reached
/// by `rule`, earlier in the same run: `failed` (reason `connect`) with that
/// observed error, and saying it was not tried.
fn not_attempted(target: &Target, options: &RunOptions, rule: &str, error: &str) -> RunRecord {
    let mut record = RunRecord::new(
        &target.rule.name,
        &target.database.name,
        options.dry_run,
        Utc::now(),
    );
    fail(
        &mut record,
        Reason::Connect,
        &format!("{error} (not tried: the connection for rule {rule} failed just before)"),
    );
    info!(rule = %record.rule, database = %record.database, run_id = %record.run_id, "not tried: the database was unreachable for an earlier rule of this run");
    record
}

/// Runs one rule on one database and returns what happened. Never panics and
/// never returns an error: failures are a [`Outcome::Failed`] record.
pub async fn run_target(
    target: &Target,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> RunRecord {
    run_target_on(target, options, cancel, None, false).await.0
}

/// [`run_target`] on `reused` (a session of an earlier rule on the same
/// database) when it can be reset, else on a new one. With `keep`, the
/// session comes back for the next rule when this rule left it reusable.
async fn run_target_on(
    target: &Target,
    options: &RunOptions,
    cancel: &CancellationToken,
    reused: Option<AnySession>,
    keep: bool,
) -> (RunRecord, Option<AnySession>) {
    let rule = &target.rule;
    let database = &target.database;
    let mut record = RunRecord::new(&rule.name, &database.name, options.dry_run, Utc::now());
    // Every log line of the run carries its id, as the report and the audit row do.
    let span =
        info_span!("rule", rule = %rule.name, database = %database.name, run_id = %record.run_id);
    async {
        let started = Instant::now();
        let settings = ConnectSettings {
            timeout: rule.timeout,
            lock_wait: rule.lock.wait,
        };
        let run = Run {
            rule,
            dialect: database.dialect,
            database,
            dry_run: options.dry_run,
            cancel,
            batch_size: AtomicU64::new(
                rule.batch
                    .as_ref()
                    .and_then(|b| b.size)
                    .map_or(0, |s| s.initial),
            ),
            window: std::sync::Mutex::new(None),
        };
        let session = match reused {
            Some(mut session) => match run.step(rule.timeout, session.reset(&settings)).await {
                Ok(true) => {
                    debug!("reusing the connection of the previous rule on this database");
                    Ok(session)
                }
                Ok(false) | Err(_) => {
                    debug!("the previous rule's connection cannot be reused; opening a new one");
                    session.abort().await;
                    crate::db::open(database, &settings).await
                }
            },
            None => crate::db::open(database, &settings).await,
        };
        let kept = run.on(session, &mut record, keep).await;
        if record.reason == Some(Reason::Connect)
            && let Some(error) = &mut record.error
        {
            *error = crate::db::name_endpoint(error, database);
        }
        record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log_record(&record);
        (record, kept)
    }
    .instrument(span)
    .await
}

/// Whether a rule's SQL leaves its session fit for the next rule: none of
/// its statements may set session state of its own.
fn session_reusable_after(rule: &Rule, dialect: Dialect) -> bool {
    let detect = rule.detect.for_dialect(dialect).unwrap_or_default();
    let fix = rule
        .fix
        .as_ref()
        .map(|fix| fix.statements(dialect))
        .unwrap_or_default();
    !std::iter::once(detect)
        .chain(fix)
        .any(|sql| crate::db::may_leave_session_state(sql, dialect))
}

fn log_record(record: &RunRecord) {
    let reason = record.reason.map(|r| r.as_str()).unwrap_or("");
    match record.outcome {
        Outcome::Failed => warn!(
            outcome = %record.outcome,
            reason,
            error = record.error.as_deref().unwrap_or(""),
            duration_ms = record.duration_ms,
            "rule failed"
        ),
        Outcome::GuardTripped => warn!(
            outcome = %record.outcome,
            reason,
            detected = record.detected,
            changed = record.changed,
            "guard tripped"
        ),
        _ => info!(
            outcome = %record.outcome,
            detected = record.detected,
            changed = record.changed,
            dry_run = record.dry_run,
            duration_ms = record.duration_ms,
            "rule finished"
        ),
    }
}

/// Why a step did not complete.
enum StepError {
    Db(DbError),
    Timeout(Duration),
    Cancelled,
    /// COMMIT got no (successful) reply: what the server did is found out by
    /// [`Session::abort_after_commit`].
    Commit(Box<StepError>, PendingCommit),
}

/// What a COMMIT without a reply would have committed, for the report.
#[derive(Debug, Clone, Copy)]
enum PendingCommit {
    /// The transaction of a transactional rule.
    Transaction,
    /// Batch `number` (1-based) of a batch rule, with its rows.
    Batch { number: u64, rows: u64 },
}

impl From<DbError> for StepError {
    fn from(e: DbError) -> Self {
        StepError::Db(e)
    }
}

/// How far a fix got: what its data-modifying statements changed.
#[derive(Debug, Clone, Copy, Default)]
struct FixProgress {
    /// Statements that finished.
    statements: usize,
    /// The largest rows affected of one data-modifying statement: the rows
    /// the fix changed (two UPDATEs over the same rows change them once).
    changed: u64,
    /// Whether any data-modifying statement ran.
    modified: bool,
}

/// One run of one rule: the parts of the target the steps need.
struct Run<'a> {
    rule: &'a Rule,
    dialect: Dialect,
    /// The database, for what a batch run reads besides it (its replicas).
    database: &'a crate::db::DatabaseConfig,
    dry_run: bool,
    cancel: &'a CancellationToken,
    /// The `{batch_size}` of the next batch (rules with `batch.size` only).
    batch_size: AtomicU64,
    /// The keys of the current batch's window (rules with `batch.key` only).
    window: std::sync::Mutex<Option<KeyWindow>>,
}

impl Run<'_> {
    /// Runs the steps on `session` and disposes of it, or, with `keep`,
    /// hands it back when the rule ended with no step failing (every
    /// transaction ended by the engine, every lock released) and its SQL
    /// cannot have left session state of its own. After any error, timeout,
    /// cancellation or lost COMMIT reply (the state of the session unknown)
    /// it is dropped, never reused.
    async fn on<S: Session>(
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
    fn dropped(&self, bound: Duration, record: &RunRecord) -> String {
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
    fn commit_reply_lost(
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

    fn skipped(&self, record: &mut RunRecord) {
        record.outcome = Outcome::Skipped;
        record.reason = Some(Reason::LockHeld);
        record.message = Some(match self.dialect {
            Dialect::Sqlite => "the SQLite database is locked by another writer".to_owned(),
            _ => format!("lock {:?} is held by another run", self.rule.lock.name),
        });
    }

    fn commits_as_it_goes(&self) -> bool {
        self.rule.mode == Mode::Autocommit || self.rule.batch.is_some()
    }

    /// Runs `future` under the client-side timeout and the cancellation token.
    async fn step<T>(
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
    async fn commit_step(
        &self,
        pending: PendingCommit,
        future: impl Future<Output = Result<(), DbError>>,
    ) -> Result<(), StepError> {
        match tokio::time::timeout(self.rule.timeout.saturating_add(CLIENT_GRACE), future).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StepError::Commit(Box::new(StepError::Db(e)), pending)),
            Err(_) => Err(StepError::Commit(
                Box::new(StepError::Timeout(self.rule.timeout)),
                pending,
            )),
        }
    }

    fn detect_sql(&self) -> &str {
        // Validated at load time: every target database has detect SQL.
        self.rule
            .detect
            .for_dialect(self.dialect)
            .unwrap_or_default()
    }

    fn fix_statements(&self) -> Vec<&str> {
        self.rule
            .fix
            .as_ref()
            .map(|fix| fix.statements(self.dialect))
            .unwrap_or_default()
    }

    /// Rows detect reads at most: for a rule with a fix, one more than
    /// `max_rows`, enough to know the guard trips; a report-only rule counts all.
    fn detect_limit(&self) -> Option<u64> {
        self.rule
            .fix
            .as_ref()
            .map(|_| self.rule.max_rows.saturating_add(1))
    }

    async fn detect<S: Session>(
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
    async fn run_fix<S: Session>(
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
    fn capture<'c>(&'c self, run_id: &'c str, batch: u64) -> Option<crate::backup::Capture<'c>> {
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
            })
    }

    /// Before the fix: the before-images of the detected rows (`backup:`).
    async fn images_before<S: Session>(
        &self,
        session: &mut S,
        record: &RunRecord,
        batch: u64,
    ) -> Result<(), StepError> {
        if let Some(capture) = self.capture(&record.run_id, batch) {
            self.step(self.rule.timeout, crate::backup::before(session, &capture))
                .await?;
        }
        Ok(())
    }

    /// After the fix: the after-images, and the guard: a fix that changed
    /// more rows (`changed`, its largest statement) than the images show
    /// changed touched rows detect did not return. Returns `false` when the
    /// guard tripped (the caller rolls back).
    async fn images_after<S: Session>(
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
            guard(
                record,
                Reason::FixChangedUndetectedRows,
                format!(
                    "the fix changed {changed} rows but only {} of the {} rows detect returned in {} changed: it touched rows detect did not return (or set rows to the values they had); rolled back",
                    kept.changed, kept.captured, capture.backup.table
                ),
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// Steps 3–4 shared by every mode: detect, then decide whether the fix may
    /// run. Returns `false` when the run is already decided.
    async fn detect_and_guard<S: Session>(
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
    async fn verify<S: Session>(
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

    /// Transactional mode: everything in one transaction under a transaction lock.
    async fn transactional<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        let lock = &self.rule.lock;
        if !self
            .step(
                lock.wait.saturating_add(self.rule.timeout),
                session.begin_locked(&lock.name, lock.wait),
            )
            .await?
        {
            self.skipped(record);
            return Ok(());
        }
        self.step(
            self.rule.timeout,
            session.set_statement_timeout(self.rule.timeout, true),
        )
        .await?;
        let commit = self.transactional_steps(session, record).await?;
        if commit {
            self.commit_step(
                PendingCommit::Transaction,
                session.finish_locked(true, &lock.name),
            )
            .await?;
            record.outcome = Outcome::Fixed;
        } else {
            self.step(self.rule.timeout, session.finish_locked(false, &lock.name))
                .await?;
        }
        Ok(())
    }

    /// Steps 3–7 inside the transaction; returns whether to commit.
    async fn transactional_steps<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        if !self.detect_and_guard(session, record).await? {
            return Ok(false);
        }
        self.images_before(session, record, 0).await?;
        let mut progress = FixProgress::default();
        let within = self.run_fix(session, &mut progress).await?;
        record.changed = Some(progress.changed);
        if within
            && !self
                .images_after(session, record, 0, progress.changed)
                .await?
        {
            return Ok(false);
        }
        if !within {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "a fix statement changed {} rows, more than max_rows {}; rolled back. {}",
                    progress.changed,
                    self.rule.max_rows,
                    backlog_hint(&self.rule.name, None)
                ),
            );
            return Ok(false);
        }
        if !self.verify(session, record, "rolled back").await? {
            return Ok(false);
        }
        if self.dry_run {
            record.outcome = Outcome::WouldFix;
            record.message =
                Some("dry-run: the fix ran inside the transaction and was rolled back".to_owned());
            return Ok(false);
        }
        Ok(true)
    }

    /// Autocommit mode: a session lock, no transaction around the fix.
    async fn autocommit<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.lock_session(session, record).await? {
            return Ok(());
        }
        self.autocommit_steps(session, record).await?;
        self.unlock_session(session).await
    }

    async fn autocommit_steps<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.detect_and_guard(session, record).await? {
            return Ok(());
        }
        if self.dry_run {
            would_fix_without_running(record);
            return Ok(());
        }
        let mut progress = FixProgress::default();
        let result = self.run_fix(session, &mut progress).await;
        if progress.statements > 0 {
            // Each statement committed as it finished, whatever comes next.
            record.changed = Some(progress.changed);
        }
        if let Err(error) = result {
            let total = self.fix_statements().len();
            record.message = Some(format!(
                "autocommit mode: {} of the fix's {total} statements finished and are committed ({} rows changed); the failing statement and those after it did not commit",
                progress.statements, progress.changed
            ));
            return Err(error);
        }
        if progress.changed > self.rule.max_rows {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "a fix statement changed {} rows, more than max_rows {}; autocommit mode: the change is already committed{}",
                    progress.changed,
                    self.rule.max_rows,
                    self.statements_not_run(&progress),
                ),
            );
            return Ok(());
        }
        if self
            .verify(
                session,
                record,
                "autocommit mode: the fix is already committed",
            )
            .await?
        {
            record.outcome = Outcome::Fixed;
        }
        Ok(())
    }

    /// "; the N statements after it were not run", when the fix stopped early.
    fn statements_not_run(&self, progress: &FixProgress) -> String {
        let left = self
            .fix_statements()
            .len()
            .saturating_sub(progress.statements);
        if left == 0 {
            String::new()
        } else {
            format!("; the {left} statements after it were not run")
        }
    }

    /// Batch mode: a session lock; the fix repeated, each batch its own
    /// transaction (or none in autocommit mode), until a batch changes 0 rows.
    async fn batched<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.lock_session(session, record).await? {
            return Ok(());
        }
        if self.detect_and_guard(session, record).await? {
            if self.dry_run {
                self.batch_dry_run(session, batch, record).await?;
            } else {
                self.batch_steps(session, batch, record).await?;
            }
        }
        self.unlock_session(session).await
    }

    /// Dry-run of a batch rule: the first batch, rolled back.
    async fn batch_dry_run<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if self.rule.mode == Mode::Autocommit {
            would_fix_without_running(record);
            return Ok(());
        }
        if let Some(key) = &batch.key
            && self.next_window(session, key, &mut None).await?.is_none()
        {
            record.changed = Some(0);
            record.batches = Some(0);
            record.outcome = Outcome::WouldFix;
            record.message = Some(format!(
                "dry-run: no detected row has a {} (batch.key), so no batch would run",
                key.column
            ));
            return Ok(());
        }
        self.step(self.rule.timeout, session.begin()).await?;
        self.images_before(session, record, 1).await?;
        let mut progress = FixProgress::default();
        let within = self.run_fix(session, &mut progress).await?;
        let images_agree = !within
            || self
                .images_after(session, record, 1, progress.changed)
                .await?;
        self.step(self.rule.timeout, session.rollback()).await?;
        let changed = progress.changed;
        record.changed = Some(changed);
        record.batches = Some(1);
        if !images_agree {
            return Ok(());
        }
        if !within {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "the first batch changed {changed} rows, more than max_rows {}; rolled back",
                    self.rule.max_rows
                ),
            );
            return Ok(());
        }
        record.outcome = Outcome::WouldFix;
        record.message = Some(format!(
            "dry-run: ran the first batch only ({changed} rows) and rolled it back; later batches were not run"
        ));
        Ok(())
    }

    /// Sleeps `pause` between batches. A pause longer than the rule's timeout
    /// is cut into slices with a cheap statement between them, so the
    /// server's idle limit (set from the timeout) does not end the session.
    async fn pause<S: Session>(&self, session: &mut S, pause: Duration) -> Result<(), StepError> {
        let mut left = pause;
        while !left.is_zero() {
            let slice = left.min(self.rule.timeout);
            tokio::select! {
                () = self.cancel.cancelled() => return Err(StepError::Cancelled),
                () = tokio::time::sleep(slice) => {}
            }
            left = left.saturating_sub(slice);
            if !left.is_zero() {
                self.step(
                    self.rule.timeout,
                    session.set_statement_timeout(self.rule.timeout, false),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// One batch; returns the rows it changed, or `None` when it tripped
    /// `max_rows` (the record then says what stays committed).
    async fn one_batch<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
        done: (u64, u64),
    ) -> Result<Option<u64>, StepError> {
        let (batches, total) = done;
        let transactional = self.rule.mode == Mode::Transactional;
        if transactional {
            self.step(self.rule.timeout, session.begin()).await?;
            self.images_before(session, record, batches + 1).await?;
        }
        let mut progress = FixProgress::default();
        let result = self.run_fix(session, &mut progress).await;
        if !transactional && progress.statements > 0 {
            // Autocommit: the statements that finished are committed.
            record.changed = Some(total.saturating_add(progress.changed));
            record.batches = Some(batches + 1);
        }
        let within = result?;
        let last = progress.changed;
        let reached = total.saturating_add(last);
        let kept_before = record.kept;
        if within
            && transactional
            && !self
                .images_after(session, record, batches + 1, last)
                .await?
        {
            self.step(self.rule.timeout, session.rollback()).await?;
            record.kept = kept_before;
            record.changed = Some(total);
            record.batches = Some(batches);
            if let Some(message) = record.message.take() {
                record.message = Some(format!(
                    "batch {}: {message}; the {batches} batches before it stay committed ({total} rows)",
                    batches + 1
                ));
            }
            return Ok(None);
        }
        if within && reached <= self.rule.max_rows {
            if transactional {
                let pending = PendingCommit::Batch {
                    number: batches + 1,
                    rows: last,
                };
                self.commit_step(pending, session.commit()).await?;
            }
            return Ok(Some(last));
        }
        let what = if transactional {
            record.kept = kept_before;
            self.step(self.rule.timeout, session.rollback()).await?;
            record.changed = Some(total);
            record.batches = Some(batches);
            format!(
                "that batch was rolled back; the {batches} batches before it stay committed ({total} rows)"
            )
        } else {
            record.changed = Some(reached);
            record.batches = Some(batches + 1);
            format!(
                "autocommit: that batch is already committed, so {} batches committed {reached} rows{}",
                batches + 1,
                self.statements_not_run(&progress)
            )
        };
        guard(
            record,
            Reason::FixOverMaxRows,
            format!(
                "batch {} brought the rows changed to {reached}, more than max_rows {}; {what}",
                batches + 1,
                self.rule.max_rows,
            ),
        );
        Ok(None)
    }

    async fn batch_steps<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        let mut total = 0u64;
        let mut batches = 0u64;
        let mut done = false;
        let mut after = None;
        let mut progress = Progress::new();
        let mut lag = batch.lag.map(|limits| {
            record.lag_waited_ms = Some(0);
            LagGate::new(self.database, limits)
        });
        while batches < batch.max_batches {
            if batches > 0 {
                self.pause(session, batch.pause).await?;
                if self
                    .replica_lag_stops(session, lag.as_mut(), record)
                    .await?
                {
                    return Ok(());
                }
            }
            let began = Instant::now();
            // Keyset: the window of this batch; none left means done.
            let window = match &batch.key {
                Some(key) => match self.next_window(session, key, &mut after).await? {
                    Some(rows) => Some(rows),
                    None => {
                        done = true;
                        break;
                    }
                },
                None => None,
            };
            let size = self.batch_size.load(Ordering::Relaxed);
            let Some(last) = self.one_batch(session, record, (batches, total)).await? else {
                return Ok(());
            };
            total = total.saturating_add(last);
            batches += 1;
            record.changed = Some(total);
            record.batches = Some(batches);
            self.adapt_batch_size(batch, began.elapsed(), window.unwrap_or(last));
            progress.batch_done(
                (batches, total),
                self.batch_size.load(Ordering::Relaxed),
                record.lag_waited_ms,
            );
            // Without a key, a batch that changes nothing is the last; with
            // one, a window shorter than the size is.
            done = window.map_or(last == 0, |rows| rows < size);
            if done {
                break;
            }
        }
        if !done {
            record.outcome = Outcome::Fixed;
            record.reason = Some(Reason::MaxBatchesReached);
            record.message = Some(format!(
                "stopped after max_batches ({}) with rows still changing; the next run continues",
                batch.max_batches
            ));
            return Ok(());
        }
        if self
            .verify(session, record, "batches are committed as they go")
            .await?
        {
            record.outcome = Outcome::Fixed;
        }
        Ok(())
    }

    /// `batch.max_replica_lag`: waits before the next batch while replicas
    /// lag (see [`LagGate`]); `true` when the run stops here because it has
    /// waited `max_lag_wait` in all: outcome `fixed`, reason
    /// `replica_lag_wait_exceeded`, with what the batches committed.
    async fn replica_lag_stops<S: Session>(
        &self,
        session: &mut S,
        gate: Option<&mut LagGate>,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        let Some(gate) = gate else {
            return Ok(false);
        };
        let verdict = gate.wait(session, self.cancel, self.rule.timeout).await;
        record.lag_waited_ms = Some(u64::try_from(gate.waited().as_millis()).unwrap_or(u64::MAX));
        let why = match verdict {
            Ok(Verdict::Go) => return Ok(false),
            Ok(Verdict::Stop(why)) => why,
            Err(GateError::Cancelled) => return Err(StepError::Cancelled),
            Err(GateError::Timeout(limit)) => return Err(StepError::Timeout(limit)),
            Err(GateError::Db(e)) => return Err(StepError::Db(e)),
        };
        let limits = gate.limits();
        record.outcome = Outcome::Fixed;
        record.reason = Some(Reason::ReplicaLagWaitExceeded);
        record.message = Some(format!(
            "stopped after {} batches ({} rows committed): replica lag stayed over max_replica_lag {} until the run had waited max_lag_wait {} in all ({why}); the next run continues",
            record.batches.unwrap_or_default(),
            record.changed.unwrap_or_default(),
            humantime::format_duration(limits.max_lag),
            humantime::format_duration(limits.max_wait),
        ));
        Ok(true)
    }

    /// After a batch of `changed` rows whose transaction took `took`: the size
    /// of the next one (`batch.target`), logged at debug level.
    fn adapt_batch_size(&self, batch: &Batch, took: Duration, changed: u64) {
        let Some(size) = batch.size else {
            return;
        };
        let current = self.batch_size.load(Ordering::Relaxed);
        // A short batch (the last one) says nothing about the time per row.
        let next = if changed < current {
            current
        } else {
            size.next(current, took)
        };
        self.batch_size.store(next, Ordering::Relaxed);
        debug!(
            batch_size = current,
            changed,
            took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            next_batch_size = next,
            "batch committed"
        );
    }

    /// Keyset batches: reads the window of the next batch (the next
    /// `{batch_size}` detected rows after `after` in key order) through the
    /// read-only detect path, stores its keys for the fix, moves `after` to
    /// its last key and returns its rows; `None` when no row is left.
    async fn next_window<S: Session>(
        &self,
        session: &mut S,
        key: &BatchKey,
        after: &mut Option<String>,
    ) -> Result<Option<u64>, StepError> {
        let detect = self
            .rule
            .detect
            .statements(self.dialect)
            .first()
            .copied()
            .unwrap_or_default();
        let size = self.batch_size.load(Ordering::Relaxed);
        let sql = key.window_sql(detect, size, after.as_deref());
        let found = self
            .step(self.rule.timeout, session.detect(&sql, 1, Some(1)))
            .await?;
        let cell = |i: usize| {
            found
                .sample
                .rows
                .first()
                .and_then(|row| row.get(i).cloned().flatten())
        };
        let rows = cell(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let window = match (rows, cell(0), cell(1)) {
            (0, _, _) => None,
            (_, Some(first), Some(last)) if !clipped(&first) && !clipped(&last) => {
                Some(KeyWindow {
                    first: BatchKey::literal(&first, self.dialect),
                    last: BatchKey::literal(&last, self.dialect),
                })
            }
            _ => {
                return Err(StepError::Db(DbError::Sql(format!(
                    "batch.key {}: the window of the next batch has no usable first and last key (a key longer than {} characters?)",
                    key.column,
                    Sample::MAX_CELL_CHARS
                ))));
            }
        };
        *after = window.as_ref().map(|w| w.last.clone());
        if let Ok(mut slot) = self.window.lock() {
            slot.clone_from(&window);
        }
        Ok(window.map(|_| rows))
    }

    /// Takes the session lock and sets the session timeout; `false` when skipped.
    async fn lock_session<S: Session>(
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

    async fn unlock_session<S: Session>(&self, session: &mut S) -> Result<(), StepError> {
        self.step(
            self.rule.timeout,
            session.unlock_session(&self.rule.lock.name),
        )
        .await
    }
}

/// The reason and wording of a failed step.
fn describe_error(error: &StepError) -> (Reason, String) {
    match error {
        StepError::Db(e @ DbError::Timeout(_)) => (Reason::Timeout, e.to_string()),
        StepError::Db(e @ DbError::Connect(_)) => (Reason::Connect, e.to_string()),
        StepError::Db(DbError::Unsafe(e)) => (Reason::UnsafeSql, e.clone()),
        StepError::Db(DbError::TransactionEnded(e)) => (Reason::TransactionEnded, e.clone()),
        StepError::Db(e @ DbError::Sql(_)) => (Reason::SqlError, e.to_string()),
        StepError::Timeout(limit) => (
            Reason::Timeout,
            format!(
                "a statement ran longer than {}",
                humantime::format_duration(*limit)
            ),
        ),
        StepError::Cancelled => (
            Reason::Cancelled,
            "cancelled before the run finished".to_owned(),
        ),
        StepError::Commit(cause, _) => describe_error(cause),
    }
}

/// Progress of a long batch run: one log line every [`PROGRESS_EVERY`].
struct Progress {
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_log: now,
        }
    }

    fn batch_done(
        &mut self,
        (batches, rows): (u64, u64),
        batch_size: u64,
        lag_waited_ms: Option<u64>,
    ) {
        if self.last_log.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_log = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = rows as f64 / seconds.max(1e-3);
        info!(
            batches,
            rows,
            rows_per_second = rate.round(),
            batch_size,
            lag_waited_ms,
            "batch run in progress"
        );
    }
}

/// Whether a sample cell was cut short (and so is not the value itself).
fn clipped(cell: &str) -> bool {
    cell.ends_with('…') && cell.chars().count() >= Sample::MAX_CELL_CHARS
}

fn fail(record: &mut RunRecord, reason: Reason, error: &str) {
    record.outcome = Outcome::Failed;
    record.reason = Some(reason);
    record.error = Some(error.to_owned());
}

/// What to do next when `max_rows` stops a fix (issue 12.2): a guard message
/// is read at 3 a.m., so it names the commands that clear a known backlog.
/// `rows` is what detect found, when it read them all; a fix statement that
/// changed too much is no measure of the backlog, so it gets `N`.
fn backlog_hint(rule: &str, rows: Option<u64>) -> String {
    let n = rows.map_or_else(|| "N".to_owned(), |rows| rows.to_string());
    format!(
        "If these rows are an expected backlog, review them with `dbjanitor run {rule} --dry-run --max-rows {n}`, \
         then fix them once with `dbjanitor run {rule} --max-rows {n}`; otherwise find out why so many"
    )
}

fn guard(record: &mut RunRecord, reason: Reason, message: String) {
    record.outcome = Outcome::GuardTripped;
    record.reason = Some(reason);
    record.message = Some(message);
}

fn would_fix_without_running(record: &mut RunRecord) {
    record.outcome = Outcome::WouldFix;
    record.reason = Some(Reason::AutocommitDryRun);
    record.message = Some(
        "dry-run: autocommit mode cannot roll back, so the fix was not executed; `changed` is unknown".to_owned(),
    );
}
