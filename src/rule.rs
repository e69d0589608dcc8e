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

use crate::db::Dialect;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Sleep between batches, to let replication and other writers breathe.
    pub pause: Duration,
    /// Upper bound on batches per run; the rest waits for the next run.
    pub max_batches: u64,
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
}
