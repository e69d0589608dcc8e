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

mod batch;
mod modes;
mod steps;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::db::{AnySession, ConnectSettings, DbError, Dialect, Session};
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::plan::{Plan, Target};
use crate::rule::{KeyWindow, Rule};

/// Extra time the client gives a statement beyond the server-side timeout.
const CLIENT_GRACE: Duration = Duration::from_secs(2);

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
    let reason = record
        .reason
        .map(crate::outcome::Reason::as_str)
        .unwrap_or("");
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

/// The reason and wording of a failed step.
fn describe_error(error: &StepError) -> (Reason, String) {
    match error {
        StepError::Db(e @ DbError::Timeout(_)) => (Reason::Timeout, e.to_string()),
        StepError::Db(e @ DbError::Connect(_)) => (Reason::Connect, e.to_string()),
        StepError::Db(DbError::Unsafe(e)) => (Reason::UnsafeSql, e.clone()),
        StepError::Db(DbError::TransactionEnded(e)) => (Reason::TransactionEnded, e.clone()),
        StepError::Db(e @ (DbError::Sql(_) | DbError::CommitRefused(_))) => {
            (Reason::SqlError, e.to_string())
        }
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
