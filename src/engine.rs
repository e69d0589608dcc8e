//! One rule run, step by step (design §3), and a whole plan of them.
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

use crate::db::{
    ConnectSettings, DbError, Detection, Dialect, MySqlSession, PgSession, Session, SqliteSession,
};
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::plan::{Plan, Target};
use crate::rule::{Batch, BatchSize, Mode, Rule};
use crate::sql::is_ddl;

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

/// Runs every target of `plan`, `jobs` at a time, and returns the records in
/// plan order. Targets sharing a (database, lock name) run one after another,
/// so rules that share a lock do not skip each other within one process.
pub async fn run_plan(
    plan: &Plan,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Vec<RunRecord> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
    for (index, target) in plan.targets.iter().enumerate() {
        let group = *group_of.entry(target.lock_key()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    let mut finished: Vec<(usize, RunRecord)> = futures_util::stream::iter(groups)
        .map(|group| async move {
            let mut records = Vec::with_capacity(group.len());
            for index in group {
                records.push((
                    index,
                    run_target(&plan.targets[index], options, cancel).await,
                ));
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

/// Runs one rule on one database and returns what happened. Never panics and
/// never returns an error: failures are a [`Outcome::Failed`] record.
pub async fn run_target(
    target: &Target,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> RunRecord {
    let rule = &target.rule;
    let database = &target.database;
    let span = info_span!("rule", rule = %rule.name, database = %database.name);
    async {
        let started = Instant::now();
        let mut record = RunRecord::new(&rule.name, &database.name, options.dry_run, Utc::now());
        let settings = ConnectSettings {
            timeout: rule.timeout,
            lock_wait: rule.lock.wait,
        };
        let run = Run {
            rule,
            dialect: database.dialect,
            dry_run: options.dry_run,
            cancel,
            batch_size: AtomicU64::new(rule.batch.and_then(|b| b.size).map_or(0, |s| s.initial)),
        };
        match database.dialect {
            Dialect::Postgres => {
                run.on(PgSession::connect(database, &settings).await, &mut record)
                    .await
            }
            Dialect::MySql => {
                run.on(
                    MySqlSession::connect(database, &settings).await,
                    &mut record,
                )
                .await
            }
            Dialect::Sqlite => {
                run.on(
                    SqliteSession::connect(database, &settings).await,
                    &mut record,
                )
                .await
            }
        }
        record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log_record(&record);
        record
    }
    .instrument(span)
    .await
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
}

impl From<DbError> for StepError {
    fn from(e: DbError) -> Self {
        StepError::Db(e)
    }
}

/// One run of one rule: the parts of the target the steps need.
struct Run<'a> {
    rule: &'a Rule,
    dialect: Dialect,
    dry_run: bool,
    cancel: &'a CancellationToken,
    /// The `{batch_size}` of the next batch (rules with `batch.size` only).
    batch_size: AtomicU64,
}

impl Run<'_> {
    /// Runs the steps on a fresh session and always disposes of it.
    async fn on<S: Session>(&self, session: Result<S, DbError>, record: &mut RunRecord) {
        let mut session = match session {
            Ok(session) => session,
            Err(e) => {
                fail(record, Reason::Connect, &e.to_string());
                return;
            }
        };
        let result = match (self.rule.mode, self.rule.batch) {
            (_, Some(batch)) => self.batched(&mut session, batch, record).await,
            (Mode::Autocommit, None) => self.autocommit(&mut session, record).await,
            (Mode::Transactional, None) => self.transactional(&mut session, record).await,
        };
        match result {
            Ok(()) => session.close().await,
            Err(error) => {
                // Dropping the connection makes the server roll back and release the locks.
                session.abort().await;
                let rolled_back = if record.changed.is_some() && self.commits_as_it_goes() {
                    "the connection was closed; statements already committed stay committed"
                } else {
                    "the connection was closed, so the server rolled back"
                };
                match error {
                    StepError::Db(e @ DbError::Timeout(_)) => {
                        fail(record, Reason::Timeout, &format!("{e}; {rolled_back}"));
                    }
                    StepError::Db(e) => {
                        fail(record, Reason::SqlError, &format!("{e}; {rolled_back}"));
                    }
                    StepError::Timeout(limit) => fail(
                        record,
                        Reason::Timeout,
                        &format!(
                            "a statement ran longer than {}; {rolled_back}",
                            humantime::format_duration(limit)
                        ),
                    ),
                    StepError::Cancelled => fail(
                        record,
                        Reason::Cancelled,
                        &format!("cancelled before the run finished; {rolled_back}"),
                    ),
                }
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
            result = tokio::time::timeout(limit + CLIENT_GRACE, future) => match result {
                Ok(inner) => inner.map_err(StepError::Db),
                Err(_) => Err(StepError::Timeout(limit)),
            },
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

    async fn detect<S: Session>(
        &self,
        session: &mut S,
        keep: usize,
    ) -> Result<Detection, StepError> {
        self.step(self.rule.timeout, session.detect(self.detect_sql(), keep))
            .await
    }

    /// Runs the fix's statements in order; returns the rows changed by its
    /// data statements (DDL "rows affected" are rows copied, not changed).
    async fn run_fix<S: Session>(&self, session: &mut S) -> Result<u64, StepError> {
        let mut changed = 0u64;
        let size = self.rule.batch.and_then(|b| b.size).map(|_| self.batch_size.load(Ordering::Relaxed));
        for statement in self.fix_statements() {
            let statement = match size {
                Some(size) => Cow::Owned(BatchSize::substitute(statement, size)),
                None => Cow::Borrowed(statement),
            };
            let affected = self
                .step(self.rule.timeout, session.execute(&statement))
                .await?;
            if !is_ddl(&statement, self.dialect) {
                changed = changed.saturating_add(affected);
            }
        }
        Ok(changed)
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
            guard(
                record,
                Reason::DetectOverMaxRows,
                format!(
                    "detect found {} rows, more than max_rows {}; the fix was not run",
                    detection.count, self.rule.max_rows
                ),
            );
            return Ok(false);
        }
        Ok(true)
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
                lock.wait + self.rule.timeout,
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
        self.step(self.rule.timeout, session.finish_locked(commit, &lock.name))
            .await?;
        if commit {
            record.outcome = Outcome::Fixed;
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
        let changed = self.run_fix(session).await?;
        record.changed = Some(changed);
        if changed > self.rule.max_rows {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "the fix changed {changed} rows, more than max_rows {}; rolled back",
                    self.rule.max_rows
                ),
            );
            return Ok(false);
        }
        if self.rule.verify {
            let remaining = self.detect(session, 0).await?.count;
            record.remaining = Some(remaining);
            if remaining > 0 {
                guard(
                    record,
                    Reason::VerifyFailed,
                    format!("detect still found {remaining} rows after the fix; rolled back"),
                );
                return Ok(false);
            }
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
        let changed = self.run_fix(session).await?;
        record.changed = Some(changed);
        if changed > self.rule.max_rows {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "the fix changed {changed} rows, more than max_rows {}; autocommit mode: the change is already committed",
                    self.rule.max_rows
                ),
            );
            return Ok(());
        }
        self.verify_after_commit(
            session,
            record,
            "autocommit mode: the fix is already committed",
        )
        .await
    }

    /// Batch mode: a session lock; the fix repeated, each batch its own
    /// transaction (or none in autocommit mode), until a batch changes 0 rows.
    async fn batched<S: Session>(
        &self,
        session: &mut S,
        batch: Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.lock_session(session, record).await? {
            return Ok(());
        }
        if self.detect_and_guard(session, record).await? {
            if self.dry_run {
                self.batch_dry_run(session, record).await?;
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
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if self.rule.mode == Mode::Autocommit {
            would_fix_without_running(record);
            return Ok(());
        }
        self.step(self.rule.timeout, session.begin()).await?;
        let changed = self.run_fix(session).await?;
        self.step(self.rule.timeout, session.rollback()).await?;
        record.changed = Some(changed);
        record.batches = Some(1);
        if changed > self.rule.max_rows {
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

    async fn batch_steps<S: Session>(
        &self,
        session: &mut S,
        batch: Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        let transactional = self.rule.mode == Mode::Transactional;
        let mut total = 0u64;
        let mut batches = 0u64;
        let mut last = 0u64;
        let mut progress = Progress::new();
        while batches < batch.max_batches {
            if batches > 0 {
                tokio::select! {
                    () = self.cancel.cancelled() => return Err(StepError::Cancelled),
                    () = tokio::time::sleep(batch.pause) => {}
                }
            }
            let began = Instant::now();
            if transactional {
                self.step(self.rule.timeout, session.begin()).await?;
            }
            last = self.run_fix(session).await?;
            if total.saturating_add(last) > self.rule.max_rows {
                if transactional {
                    self.step(self.rule.timeout, session.rollback()).await?;
                }
                record.batches = Some(batches);
                record.changed = Some(total);
                guard(
                    record,
                    Reason::FixOverMaxRows,
                    format!(
                        "batch {} would bring the rows changed to {}, more than max_rows {}; that batch was {}; the {batches} before it stay committed",
                        batches + 1,
                        total.saturating_add(last),
                        self.rule.max_rows,
                        if transactional {
                            "rolled back"
                        } else {
                            "already committed (autocommit)"
                        },
                    ),
                );
                return Ok(());
            }
            if transactional {
                self.step(self.rule.timeout, session.commit()).await?;
            }
            total += last;
            batches += 1;
            record.changed = Some(total);
            record.batches = Some(batches);
            self.adapt_batch_size(batch, began.elapsed(), last);
            progress.batch_done(batches, total, self.batch_size.load(Ordering::Relaxed));
            if last == 0 {
                break;
            }
        }
        if last > 0 {
            record.outcome = Outcome::Fixed;
            record.reason = Some(Reason::MaxBatchesReached);
            record.message = Some(format!(
                "stopped after max_batches ({}) with rows still changing; the next run continues",
                batch.max_batches
            ));
            return Ok(());
        }
        self.verify_after_commit(session, record, "batches are committed as they go")
            .await
    }

    /// After a batch of `changed` rows whose transaction took `took`: the size
    /// of the next one (`batch.target`), logged at debug level.
    fn adapt_batch_size(&self, batch: Batch, took: Duration, changed: u64) {
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

    /// Verification for modes that cannot roll back: a guard, not an undo.
    async fn verify_after_commit<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
        why: &str,
    ) -> Result<(), StepError> {
        if self.rule.verify {
            let remaining = self.detect(session, 0).await?.count;
            record.remaining = Some(remaining);
            if remaining > 0 {
                guard(
                    record,
                    Reason::VerifyFailed,
                    format!("detect still found {remaining} rows after the fix; {why}"),
                );
                return Ok(());
            }
        }
        record.outcome = Outcome::Fixed;
        Ok(())
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
                lock.wait + self.rule.timeout,
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

    fn batch_done(&mut self, batches: u64, rows: u64, batch_size: u64) {
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
            "batch run in progress"
        );
    }
}

fn fail(record: &mut RunRecord, reason: Reason, error: &str) {
    record.outcome = Outcome::Failed;
    record.reason = Some(reason);
    record.error = Some(error.to_owned());
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
