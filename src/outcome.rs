//! What one (rule, database) run produced.
//!
//! A [`RunRecord`] is the single currency every later stage reads: the report
//! prints it, the exit status is computed from it, notifiers and the audit
//! table store it. It carries counts and at most a handful of sample rows,
//! never the full result of a detect query.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The end state of one rule run on one database (docs/architecture.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Detect found no rows.
    Clean,
    /// A rule without a fix found rows: report only, nothing changed.
    Found,
    /// The fix ran, verification passed, the change is committed.
    Fixed,
    /// Dry run: the fix ran inside a transaction that was rolled back.
    WouldFix,
    /// The lock was held elsewhere: nothing ran.
    Skipped,
    /// A guard stopped the fix: rolled back (or never run).
    GuardTripped,
    /// An SQL, connection, timeout or cancellation error: rolled back.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order reports group them.
    pub const ALL: [Outcome; 7] = [
        Outcome::Clean,
        Outcome::Found,
        Outcome::Fixed,
        Outcome::WouldFix,
        Outcome::Skipped,
        Outcome::GuardTripped,
        Outcome::Failed,
    ];

    /// The snake_case name used in YAML, JSON and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Found => "found",
            Outcome::Fixed => "fixed",
            Outcome::WouldFix => "would_fix",
            Outcome::Skipped => "skipped",
            Outcome::GuardTripped => "guard_tripped",
            Outcome::Failed => "failed",
        }
    }

    /// The outcomes notified when a rule does not say (`notify_on`): all but
    /// `clean` and `skipped`, which are the normal state of a healthy system.
    /// This is "news" in README "Outcomes and exit status".
    #[must_use]
    pub fn notified_by_default(self) -> bool {
        !matches!(self, Outcome::Clean | Outcome::Skipped)
    }

    /// A run that did what it is for: it looked at the data, and every row it
    /// found is either fixed or reported by a rule that only reports. Moves
    /// `last_success_timestamp_seconds` and the audit table's last success.
    /// `would_fix` is not one: it only comes from a dry run, and a dry run
    /// never counts as a success (see [`RunRecord::is_success`]).
    #[must_use]
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Clean | Outcome::Found | Outcome::Fixed)
    }

    /// Something is wrong or left undone: rows found and not fixed, a guard
    /// that stopped the fix, an error. Once receivers were told about one, an
    /// outcome [`Outcome::is_in_order`] is news (`recovered`).
    #[must_use]
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            Outcome::Found | Outcome::WouldFix | Outcome::GuardTripped | Outcome::Failed
        )
    }

    /// The data is in order now: nothing found, or all of it fixed.
    #[must_use]
    pub fn is_in_order(self) -> bool {
        matches!(self, Outcome::Clean | Outcome::Fixed)
    }

    /// Says something about the data, so it replaces the pair's last state
    /// (for notifications and `previous_outcome`). `skipped` does not: the
    /// lock was held elsewhere and nothing looked at the data. (A dry run is
    /// never a state either, whatever its outcome.)
    #[must_use]
    pub fn is_state(self) -> bool {
        self != Outcome::Skipped
    }

    /// How bad an outcome is, for ordering a digest and picking its headline:
    /// failed, guard_tripped, found, would_fix, fixed, skipped, clean.
    #[must_use]
    pub fn severity(self) -> u8 {
        match self {
            Outcome::Failed => 6,
            Outcome::GuardTripped => 5,
            Outcome::Found => 4,
            Outcome::WouldFix => 3,
            Outcome::Fixed => 2,
            Outcome::Skipped => 1,
            Outcome::Clean => 0,
        }
    }
}

/// The outcomes for which `keep` is true as an SQL list, `('clean', 'found')`:
/// the audit's tests check its hand-written IN-lists against it, so that the
/// audit table's queries select what these methods decide.
#[cfg(test)]
#[must_use]
pub(crate) fn sql_list(keep: fn(Outcome) -> bool) -> String {
    let names: Vec<String> = Outcome::ALL
        .into_iter()
        .filter(|o| keep(*o))
        .map(|o| format!("'{}'", o.as_str()))
        .collect();
    format!("({})", names.join(", "))
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run ended the way it did, in a form machines can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The advisory lock (or SQLite write lock) was held by someone else.
    LockHeld,
    /// Detect found more rows than `max_rows`.
    DetectOverMaxRows,
    /// The fix changed more rows than `max_rows`.
    FixOverMaxRows,
    /// Detect still found rows after the fix.
    VerifyFailed,
    /// A statement exceeded the rule's `timeout`.
    Timeout,
    /// The run was cancelled (shutdown) before it finished.
    Cancelled,
    /// Could not connect to the database.
    Connect,
    /// The database returned an error.
    SqlError,
    /// Autocommit mode: the fix was not executed in dry-run.
    AutocommitDryRun,
    /// Batch mode: `max_batches` was reached while batches still changed rows.
    MaxBatchesReached,
    /// dbjanitor or the server refused SQL that could escape the guards (a
    /// detect that writes or is not one query, a fix statement that would end
    /// its transaction) before it changed anything.
    UnsafeSql,
    /// A fix statement ended the transaction it ran in: what ran before it
    /// may be committed.
    TransactionEnded,
    /// COMMIT got no reply and the server could not say afterwards whether it
    /// took effect.
    CommitUnknown,
    /// A rule with `backup:` changed more rows than the images show changed:
    /// the fix touched rows detect did not return (issue 14); rolled back.
    FixChangedUndetectedRows,
    /// Batch mode with `max_replica_lag`: replicas stayed behind (or
    /// unreadable) until the run had waited `max_lag_wait`; it stopped
    /// between batches with what it had committed (outcome `fixed`).
    ReplicaLagWaitExceeded,
}

impl Reason {
    /// The snake_case name used in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LockHeld => "lock_held",
            Reason::DetectOverMaxRows => "detect_over_max_rows",
            Reason::FixOverMaxRows => "fix_over_max_rows",
            Reason::VerifyFailed => "verify_failed",
            Reason::Timeout => "timeout",
            Reason::Cancelled => "cancelled",
            Reason::Connect => "connect",
            Reason::SqlError => "sql_error",
            Reason::AutocommitDryRun => "autocommit_dry_run",
            Reason::MaxBatchesReached => "max_batches_reached",
            Reason::UnsafeSql => "unsafe_sql",
            Reason::TransactionEnded => "transaction_ended",
            Reason::CommitUnknown => "commit_unknown",
            Reason::FixChangedUndetectedRows => "fix_changed_undetected_rows",
            Reason::ReplicaLagWaitExceeded => "replica_lag_wait_exceeded",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A few rows of a detect result, rendered as text whatever their SQL types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Column names, in result order.
    pub columns: Vec<String>,
    /// At most [`Sample::MAX_ROWS`] rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// `true` when the rows are those verification still found after the
    /// fix (`verify_failed`), not the rows detect found before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_fix: bool,
}

impl Sample {
    /// How many rows a report keeps, however many detect found.
    pub const MAX_ROWS: usize = 5;
    /// Longest cell text kept; longer values are cut with an ellipsis.
    pub const MAX_CELL_CHARS: usize = 200;

    /// Whether no row was kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The record of one (rule, database) run: the report, the notifications and
/// the audit table are all written from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id: a UUIDv7 (time-ordered, unique across hosts without
    /// coordination), the same in the report, the notifications and the
    /// audit row, so an operator can follow one run through all three.
    #[serde(default)]
    pub run_id: String,
    /// Rule name.
    pub rule: String,
    /// Database name from the config (never its URL).
    pub database: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Machine-readable reason for outcomes other than the plain ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Human explanation of the reason or the outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The database error, with secrets masked, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rows detect found (before any fix), when detect ran.
    pub detected: Option<u64>,
    /// `true` when detect stopped reading once the `max_rows` guard was
    /// certain to trip: `detected` is then a lower bound (`max_rows + 1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detected_is_lower_bound: bool,
    /// Rows the fix changed (rows affected); in dry-run, what it would change.
    pub changed: Option<u64>,
    /// Rows detect still found after the fix, when verification ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Rows whose before- and after-images the run kept (rules with
    /// `backup:`); in dry-run, how many it would keep.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kept: Option<u64>,
    /// Number of batches run (batch mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<u64>,
    /// How long the run waited between batches for replica lag, in all
    /// (rules with `batch.max_replica_lag` only; 0 when it never waited).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lag_waited_ms: Option<u64>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Wall time of the whole run, lock included.
    pub duration_ms: u64,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// A few detected rows.
    #[serde(skip_serializing_if = "Sample::is_empty", default)]
    pub sample: Sample,
    /// Notification failures attached after delivery (never changes the outcome).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notify_errors: Vec<String>,
}

impl RunRecord {
    /// A record with no counts yet and a fresh run id, for the engine to
    /// fill in.
    #[must_use]
    pub fn new(rule: &str, database: &str, dry_run: bool, started_at: DateTime<Utc>) -> Self {
        Self {
            run_id: new_run_id(),
            rule: rule.to_owned(),
            database: database.to_owned(),
            outcome: Outcome::Failed,
            reason: None,
            message: None,
            error: None,
            detected: None,
            detected_is_lower_bound: false,
            changed: None,
            remaining: None,
            kept: None,
            batches: None,
            lag_waited_ms: None,
            dry_run,
            duration_ms: 0,
            started_at,
            sample: Sample::default(),
            notify_errors: Vec::new(),
        }
    }
}

impl RunRecord {
    /// A real run (not a dry run) whose outcome [`Outcome::is_success`]. The
    /// one test for "success" that metrics, `--metrics-file` and the audit
    /// table's last success all follow.
    #[must_use]
    pub fn is_success(&self) -> bool {
        !self.dry_run && self.outcome.is_success()
    }
}

/// A new run id: a UUIDv7 in its hyphenated text form (36 characters).
///
/// Why UUIDv7 (crate `uuid`): its first 48 bits are the Unix time in
/// milliseconds, so ids sort in start order like the audit rows; the other 74
/// bits are random, so two hosts never need to agree on anything to produce
/// distinct ids; and every database and tool reads the text form.
#[must_use]
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// The exit status for a set of records (README "Outcomes and exit status"): failed beats guard
/// tripped beats success.
#[must_use]
pub fn exit_status(records: &[RunRecord]) -> u8 {
    if records.iter().any(|r| r.outcome == Outcome::Failed) {
        crate::exit::RULE_FAILED
    } else if records.iter().any(|r| r.outcome == Outcome::GuardTripped) {
        crate::exit::GUARD_TRIPPED
    } else {
        crate::exit::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome) -> RunRecord {
        let mut r = RunRecord::new("r", "d", false, Utc::now());
        r.outcome = outcome;
        r
    }

    /// Issue 13.3: what each outcome means, decided in one place. Columns:
    /// success, problem, in order, news (notified by default), state,
    /// severity.
    #[test]
    fn what_each_outcome_means() {
        #[rustfmt::skip]
        let table = [
            (Outcome::Clean,        true,  false, true,  false, true,  0),
            (Outcome::Found,        true,  true,  false, true,  true,  4),
            (Outcome::Fixed,        true,  false, true,  true,  true,  2),
            (Outcome::WouldFix,     false, true,  false, true,  true,  3),
            (Outcome::Skipped,      false, false, false, false, false, 1),
            (Outcome::GuardTripped, false, true,  false, true,  true,  5),
            (Outcome::Failed,       false, true,  false, true,  true,  6),
        ];
        assert_eq!(table.map(|row| row.0), Outcome::ALL, "one row per outcome");
        for (outcome, success, problem, in_order, news, state, severity) in table {
            assert_eq!(outcome.is_success(), success, "{outcome} success");
            assert_eq!(outcome.is_problem(), problem, "{outcome} problem");
            assert_eq!(outcome.is_in_order(), in_order, "{outcome} in order");
            assert_eq!(outcome.notified_by_default(), news, "{outcome} news");
            assert_eq!(outcome.is_state(), state, "{outcome} state");
            assert_eq!(outcome.severity(), severity, "{outcome} severity");
            // A run whose outcome sends a process exit status other than 0
            // is never a success.
            if exit_status(&[record(outcome)]) != 0 {
                assert!(!success, "{outcome}");
            }
            let mut dry = record(outcome);
            dry.dry_run = true;
            assert!(!dry.is_success(), "a dry run is never a success");
            assert_eq!(record(outcome).is_success(), success);
        }
        assert_eq!(sql_list(Outcome::is_success), "('clean', 'found', 'fixed')");
    }

    #[test]
    fn run_ids_are_distinct_uuid_v7_in_start_order() {
        let first = RunRecord::new("r", "d", false, Utc::now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = RunRecord::new("r", "d", false, Utc::now());
        assert_ne!(first.run_id, second.run_id);
        assert!(first.run_id < second.run_id, "ids sort in start order");
        for id in [&first.run_id, &second.run_id] {
            let parsed = uuid::Uuid::parse_str(id).expect("a run id is a UUID");
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(id.len(), 36);
        }
    }

    #[test]
    fn exit_status_prefers_failure_over_guard() {
        assert_eq!(exit_status(&[]), 0);
        assert_eq!(
            exit_status(&[record(Outcome::Fixed), record(Outcome::Skipped)]),
            0
        );
        assert_eq!(
            exit_status(&[record(Outcome::GuardTripped), record(Outcome::Clean)]),
            3
        );
        assert_eq!(
            exit_status(&[record(Outcome::GuardTripped), record(Outcome::Failed)]),
            1
        );
    }
}
