//! The validated rule model.
//!
//! Raw YAML is checked once by [`crate::config`] and turned into these types;
//! everything downstream (plan, engine, daemon) trusts them and never
//! re-validates. A `Rule` knows nothing about YAML or file positions except
//! where it came from, for messages.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;

use crate::dialect::Dialect;
use crate::outcome::Outcome;
use crate::schedule::Schedule;
use crate::sql::split_statements;

/// SQL text for one query, either shared by every dialect or per dialect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialectSql {
    /// Text for any dialect without its own entry.
    pub any: Option<String>,
    /// MySQL/MariaDB text.
    pub mysql: Option<String>,
    /// PostgreSQL text.
    pub postgres: Option<String>,
    /// SQLite text.
    pub sqlite: Option<String>,
}

impl DialectSql {
    /// The text to run on `dialect`, if the rule has one.
    #[must_use]
    pub fn for_dialect(&self, dialect: Dialect) -> Option<&str> {
        let specific = match dialect {
            Dialect::MySql => &self.mysql,
            Dialect::Postgres => &self.postgres,
            Dialect::Sqlite => &self.sqlite,
        };
        specific.as_deref().or(self.any.as_deref())
    }

    /// The statements to run on `dialect`, in order (empty when there is no text).
    #[must_use]
    pub fn statements(&self, dialect: Dialect) -> Vec<&str> {
        self.for_dialect(dialect)
            .map(|sql| split_statements(sql, dialect))
            .unwrap_or_default()
    }
}

/// How the fix is wrapped in transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Lock, detect, fix and verify in one transaction; roll back on any guard.
    #[default]
    Transactional,
    /// No transaction around the fix: for DDL on MySQL/MariaDB, which commits
    /// implicitly. The fix is never executed in dry-run, and a guard that trips
    /// after the fix cannot undo it.
    Autocommit,
}

/// Batch mode: the fix carries its own `LIMIT` and is repeated until it
/// changes no row, each batch in its own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sleep between batches, to let replication and other writers breathe.
    pub pause: Duration,
    /// Upper bound on batches per run; the rest waits for the next run.
    pub max_batches: u64,
    /// The `{batch_size}` the fix uses for its `LIMIT`, when the rule sets
    /// `batch.size`: the engine then chooses each batch's size itself.
    pub size: Option<BatchSize>,
    /// `batch.key` (issue 11, keyset batches): the column of detect's rows
    /// each batch walks in ascending order, so no batch rescans what the
    /// batches before it already changed.
    pub key: Option<BatchKey>,
    /// `batch.max_replica_lag` (with `max_lag_wait`): pause between batches
    /// while a replica lags, so a purge does not leave replicas behind.
    pub lag: Option<ReplicaLag>,
}

/// The placeholders of a keyset batch fix: the first and the last value of
/// [`BatchKey::column`] among the rows of this batch's window (both
/// inclusive). Braces are not SQL outside a string, as for `{batch_size}`.
pub(crate) const FIRST_KEY_PLACEHOLDER: &str = "{batch_first_key}";
/// See [`FIRST_KEY_PLACEHOLDER`].
pub(crate) const LAST_KEY_PLACEHOLDER: &str = "{batch_last_key}";

/// `batch.key`: keyset batches. Before each batch the engine reads, through
/// the read-only detect path, the window of the next `{batch_size}` detected
/// rows in ascending key order after the previous window, and fills the
/// fix's `{batch_first_key}`/`{batch_last_key}` with its first and last key.
/// A batch then touches one key range through the key's index instead of
/// rescanning the rows earlier batches deleted (issue 11: 13–20× one raw
/// DELETE with `LIMIT` shapes). The same SQL works on every engine, MySQL 8
/// included (no `RETURNING` needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey {
    /// A column of detect's result, a plain identifier (checked at load).
    pub column: String,
}

/// The first and last key of one batch's window, as SQL literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyWindow {
    /// `{batch_first_key}`.
    pub(crate) first: String,
    /// `{batch_last_key}`.
    pub(crate) last: String,
}

impl BatchKey {
    /// The window query: one read-only statement over detect that returns
    /// the first key, the last key and the number of rows of the next batch
    /// of `size` rows after `after` (a SQL literal; `None` for the first
    /// batch). Rows whose key is NULL are never in a window (verify reports
    /// them).
    #[must_use]
    pub fn window_sql(&self, detect: &str, size: u64, after: Option<&str>) -> String {
        let key = &self.column;
        let filter = match after {
            Some(after) => format!("{key} > {after}"),
            None => format!("{key} IS NOT NULL"),
        };
        let detect = detect.trim().trim_end_matches(';').trim_end();
        format!(
            "SELECT min(dbjanitor_key), max(dbjanitor_key), count(*) FROM (SELECT {key} AS dbjanitor_key \
             FROM ({detect}\n) AS dbjanitor_detect WHERE {filter} ORDER BY {key} LIMIT {size}) AS dbjanitor_window"
        )
    }

    /// `value` (a key as the server printed it) as a SQL literal of `dialect`:
    /// a number as it is, anything else a quoted string (MySQL also escapes
    /// backslashes), which the server compares with the column's own type.
    #[must_use]
    pub fn literal(value: &str, dialect: Dialect) -> String {
        let numeric = {
            let digits = value.strip_prefix('-').unwrap_or(value);
            let mut parts = digits.splitn(2, '.');
            let whole = parts.next().unwrap_or_default();
            let fraction = parts.next();
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric {
            return value.to_owned();
        }
        let mut quoted = value.replace('\'', "''");
        if dialect == Dialect::MySql {
            quoted = quoted.replace('\\', "\\\\");
        }
        format!("'{quoted}'")
    }
}

impl KeyWindow {
    /// `sql` with the window's keys in its placeholders.
    #[must_use]
    pub(crate) fn substitute(&self, sql: &str) -> String {
        sql.replace(FIRST_KEY_PLACEHOLDER, &self.first)
            .replace(LAST_KEY_PLACEHOLDER, &self.last)
    }
}

/// Defined with the gate that reads it (`db` sits below `rule`).
pub(crate) use crate::db::replica::ReplicaLag;

/// The placeholder a batch fix writes where its `LIMIT` goes. Braces cannot
/// appear in PostgreSQL, MySQL or SQLite code outside a string literal, so the
/// token cannot be mistaken for SQL; the loader checks that a fix uses it if
/// and only if `batch.size` is set.
pub(crate) const BATCH_SIZE_PLACEHOLDER: &str = "{batch_size}";

/// `batch.size` (with `min_size`, `max_size`, `target`): how many rows one
/// batch may change, and how the engine adapts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// The size of the first batch (of every batch without a target).
    pub initial: u64,
    /// The size never goes below this.
    pub min: u64,
    /// The size never goes above this.
    pub max: u64,
    /// How long one batch's transaction should take: after each batch the
    /// size is scaled by `target / measured` (at most ×2, at least ×½).
    pub target: Option<Duration>,
}

impl BatchSize {
    /// The size of the batch after one of `size` rows that took `took`:
    /// scaled towards `target`, by at most a factor of two either way, within
    /// `min..=max`. Without a target the size never changes.
    #[must_use]
    pub fn next(&self, size: u64, took: Duration) -> u64 {
        let Some(target) = self.target else {
            return size;
        };
        let took = took.as_secs_f64().max(1e-4);
        let factor = (target.as_secs_f64() / took).clamp(0.5, 2.0);
        // Sizes are far below 2^52, so the float round trip is exact enough.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let scaled = (size as f64 * factor).round() as u64;
        scaled.clamp(self.min, self.max)
    }

    /// `sql` with every placeholder replaced by `size`.
    #[must_use]
    pub fn substitute(sql: &str, size: u64) -> String {
        sql.replace(BATCH_SIZE_PLACEHOLDER, &size.to_string())
    }
}

/// The lock a rule runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSpec {
    /// Rules sharing a lock name exclude each other on one database.
    pub name: String,
    /// How long to wait for the lock before the run is `skipped`.
    pub wait: Duration,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name, `[a-z0-9._-]+`.
    pub name: String,
    /// What the rule repairs and why; shown in notifications.
    pub description: String,
    /// The file the rule came from.
    pub source: PathBuf,
    /// Names of the databases the rule runs on.
    pub databases: Vec<String>,
    /// When the daemon and `run --due` run it; `None`: only on demand.
    pub schedule: Option<Schedule>,
    /// Timezone the schedule is read in.
    pub timezone: Tz,
    /// Free-form tags for `run --tag`.
    pub tags: Vec<String>,
    /// The detection query: one SELECT returning the rotten rows.
    pub detect: DialectSql,
    /// The fix; `None` makes the rule report-only.
    pub fix: Option<DialectSql>,
    /// Guard on detected rows and on rows the fix changes.
    pub max_rows: u64,
    /// Re-run detect after the fix and require zero rows.
    pub verify: bool,
    /// Transaction handling.
    pub mode: Mode,
    /// Batch settings, when the fix is repeated.
    pub batch: Option<Batch>,
    /// Per-statement timeout.
    pub timeout: Duration,
    /// The lock.
    pub lock: LockSpec,
    /// Notifier names.
    pub notify: Vec<String>,
    /// Outcomes that trigger a notification.
    pub notify_on: BTreeSet<Outcome>,
    /// Where run history exists (daemon, audit table): how long an
    /// unchanged, already notified state stays quiet before a reminder.
    pub renotify_after: Duration,
    /// Disabled rules run only when named on the command line.
    pub enabled: bool,
    /// `backup:`: keep before- and after-images of the rows the fix changes
    /// (issue 14), so the run can be listed and undone.
    pub backup: Option<crate::backup::Backup>,
}

impl Rule {
    /// A rule that only reads: no fix, in transactional mode (the default).
    /// It still takes its lock on PostgreSQL and MySQL/MariaDB, but not
    /// SQLite's database write lock (see [`crate::db::Session::begin_reading`]),
    /// so a report never holds up the application's writes or the other
    /// rules of its database.
    #[must_use]
    pub fn only_reads(&self) -> bool {
        self.fix.is_none() && self.mode == Mode::Transactional
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(target: Option<u64>) -> BatchSize {
        BatchSize {
            initial: 100,
            min: 10,
            max: 1000,
            target: target.map(Duration::from_millis),
        }
    }

    #[test]
    fn batch_size_follows_the_target_by_at_most_a_factor_of_two() {
        let adaptive = size(Some(200));
        // Much faster than the target: doubles, and stops at max.
        assert_eq!(adaptive.next(100, Duration::from_millis(1)), 200);
        assert_eq!(adaptive.next(800, Duration::from_millis(1)), 1000);
        // Near the target: scaled proportionally.
        assert_eq!(adaptive.next(100, Duration::from_millis(160)), 125);
        assert_eq!(adaptive.next(100, Duration::from_millis(250)), 80);
        // Much slower: halves, and stops at min.
        assert_eq!(adaptive.next(100, Duration::from_secs(10)), 50);
        assert_eq!(adaptive.next(15, Duration::from_secs(10)), 10);
        // A zero duration (coarse clocks) is "very fast", not a division by zero.
        assert_eq!(adaptive.next(100, Duration::ZERO), 200);
    }

    #[test]
    fn batch_size_without_a_target_is_fixed() {
        assert_eq!(size(None).next(100, Duration::from_secs(10)), 100);
        assert_eq!(size(None).next(100, Duration::ZERO), 100);
    }

    #[test]
    fn placeholder_is_replaced_everywhere() {
        assert_eq!(
            BatchSize::substitute("DELETE FROM t ORDER BY id LIMIT {batch_size}", 250),
            "DELETE FROM t ORDER BY id LIMIT 250"
        );
    }

    #[test]
    fn keys_become_literals_that_cannot_break_out() {
        assert_eq!(BatchKey::literal("12345", Dialect::Postgres), "12345");
        assert_eq!(BatchKey::literal("-7.5", Dialect::MySql), "-7.5");
        assert_eq!(BatchKey::literal("1e5", Dialect::Sqlite), "'1e5'");
        assert_eq!(BatchKey::literal("", Dialect::Sqlite), "''");
        assert_eq!(BatchKey::literal("7.", Dialect::Sqlite), "'7.'");
        assert_eq!(BatchKey::literal("o'k", Dialect::Postgres), "'o''k'");
        assert_eq!(BatchKey::literal("a\\'b", Dialect::MySql), "'a\\\\''b'");
        assert_eq!(BatchKey::literal("a\\b", Dialect::Postgres), "'a\\b'");
    }

    #[test]
    fn window_query_wraps_detect_and_starts_after_the_previous_window() {
        let key = BatchKey {
            column: "id".to_owned(),
        };
        let sql = key.window_sql("SELECT id FROM t -- old;\n;", 500, Some("41"));
        assert!(sql.contains("FROM (SELECT id FROM t -- old;\n) AS dbjanitor_detect WHERE id > 41 ORDER BY id LIMIT 500"), "{sql}");
        assert!(
            key.window_sql("SELECT id FROM t", 5, None)
                .contains("WHERE id IS NOT NULL")
        );
        let window = KeyWindow {
            first: "1".to_owned(),
            last: "'z'".to_owned(),
        };
        assert_eq!(
            window.substitute("WHERE id BETWEEN {batch_first_key} AND {batch_last_key}"),
            "WHERE id BETWEEN 1 AND 'z'"
        );
    }
}
