//! The config file's own settings, `defaults:`, `audit:` and `daemon:`:
//! their validated types, their values when the file does not say, and the
//! [`Loader`] steps that check them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde_saphyr::Spanned;

use super::{Loader, NotifierConfig, limits, raw};
use crate::db::DatabaseConfig;
use crate::outcome::Outcome;

/// `audit.timeout` when the config does not say: each audit read or write
/// (connect included) gives up after this, so a stalled audit database costs
/// a run seconds, never its schedule.
pub const DEFAULT_AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `audit.migrate_lock_wait` when the config does not say: how long a
/// migration waits for another migrator and, on MySQL/MariaDB, for the
/// metadata lock of its DDL (`lock_wait_timeout`), or on PostgreSQL for its
/// table locks (`lock_timeout`).
pub const DEFAULT_MIGRATE_LOCK_WAIT: Duration = Duration::from_mins(1);

/// Statement timeout when neither the rule nor `defaults` says.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_mins(1);

/// How long an unchanged state stays quiet after it was notified, when
/// neither the rule nor `defaults` says: a daily reminder.
pub(crate) const DEFAULT_RENOTIFY_AFTER: Duration = Duration::from_hours(24);

/// Audit history settings (`audit:`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The database (a name from `databases:`) holding the history.
    pub database: String,
    /// How long history rows are kept; `None` keeps them forever.
    pub keep: Option<Duration>,
    /// Bound of each audit read or write, connect included (`audit.timeout`).
    pub timeout: Duration,
    /// How long a schema migration waits for locks (`audit.migrate_lock_wait`).
    pub migrate_lock_wait: Duration,
}

/// Settings of `dbjanitor daemon` (`daemon:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonConfig {
    /// After SIGTERM, how long running rules may take to finish before they
    /// are cancelled (rolled back). Keep it below the supervisor's own limit
    /// (`TimeoutStopSec=`, `terminationGracePeriodSeconds`).
    pub shutdown_grace: Duration,
    /// At most this many runs at once in the daemon (`--jobs` overrides it):
    /// each run holds a connection, and a few hundred rules on one tick would
    /// otherwise exhaust the server's `max_connections`.
    pub jobs: usize,
    /// At most this many of those runs on one database, so that one database
    /// with many slow rules cannot take every slot from the others.
    pub jobs_per_database: usize,
}

/// [`DaemonConfig::shutdown_grace`] when the config does not say.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// [`DaemonConfig::jobs`] when neither the config nor `--jobs` says.
pub(crate) const DEFAULT_DAEMON_JOBS: usize = 8;
/// [`DaemonConfig::jobs_per_database`] when the config does not say.
pub(crate) const DEFAULT_DAEMON_JOBS_PER_DATABASE: usize = 4;
/// Largest `daemon.jobs` / `jobs_per_database` (as for `run --jobs`).
pub(crate) const MAX_DAEMON_JOBS: usize = 256;

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            jobs: DEFAULT_DAEMON_JOBS,
            jobs_per_database: DEFAULT_DAEMON_JOBS_PER_DATABASE,
        }
    }
}

/// Values rules inherit (`defaults:`).
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Timezone of schedules.
    pub timezone: Tz,
    /// Statement timeout.
    pub timeout: Duration,
    /// Notifier names.
    pub notify: Vec<String>,
    /// Outcomes that notify.
    pub notify_on: BTreeSet<Outcome>,
    /// Quiet time for an unchanged, already notified state (needs history).
    pub renotify_after: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timezone: Tz::UTC,
            timeout: DEFAULT_TIMEOUT,
            notify: Vec::new(),
            notify_on: Outcome::ALL
                .into_iter()
                .filter(|o| o.notified_by_default())
                .collect(),
            renotify_after: DEFAULT_RENOTIFY_AFTER,
        }
    }
}

impl Loader<'_> {
    pub(super) fn defaults(
        &mut self,
        file: &Path,
        raw: Option<raw::RawDefaults>,
        notifiers: &BTreeMap<String, Arc<NotifierConfig>>,
    ) -> Defaults {
        let mut defaults = Defaults::default();
        let Some(raw) = raw else {
            return defaults;
        };
        if let Some(tz) = raw.timezone.and_then(|tz| self.timezone(file, &tz)) {
            defaults.timezone = tz;
        }
        if let Some(timeout) = raw
            .timeout
            .and_then(|t| self.bounded_duration(file, &t, limits::TIMEOUT, true))
        {
            defaults.timeout = timeout;
        }
        if let Some(notify) = raw.notify {
            defaults.notify = self.notifier_refs(file, &notify, notifiers);
        }
        if let Some(notify_on) = raw.notify_on {
            defaults.notify_on = notify_on.into_iter().map(|o| o.value).collect();
        }
        if let Some(d) = raw
            .renotify_after
            .and_then(|d| self.bounded_duration(file, &d, limits::RENOTIFY_AFTER, false))
        {
            defaults.renotify_after = d;
        }
        defaults
    }

    pub(super) fn audit(
        &mut self,
        file: &Path,
        raw: &Spanned<raw::RawAudit>,
        databases: &BTreeMap<String, Arc<DatabaseConfig>>,
    ) -> Option<AuditConfig> {
        let database = &raw.value.database;
        if self.failed.databases.contains(&database.value) {
            return None;
        }
        if !databases.contains_key(&database.value) {
            self.err(
                file,
                database.referenced,
                format!("audit.database {:?} is not in databases:", database.value),
            );
            return None;
        }
        let keep = match &raw.value.keep {
            Some(keep) => Some(self.bounded_duration(file, keep, limits::AUDIT_KEEP, true)?),
            None => None,
        };
        let timeout = match &raw.value.timeout {
            Some(d) => self.bounded_duration(file, d, limits::AUDIT_TIMEOUT, true)?,
            None => DEFAULT_AUDIT_TIMEOUT,
        };
        let migrate_lock_wait = match &raw.value.migrate_lock_wait {
            Some(d) => self.bounded_duration(file, d, limits::AUDIT_MIGRATE_LOCK_WAIT, true)?,
            None => DEFAULT_MIGRATE_LOCK_WAIT,
        };
        Some(AuditConfig {
            database: database.value.clone(),
            keep,
            timeout,
            migrate_lock_wait,
        })
    }

    /// `daemon.jobs` and `daemon.jobs_per_database`: 1 to [`MAX_DAEMON_JOBS`].
    pub(super) fn daemon_limits(
        &mut self,
        file: &Path,
        raw: &raw::RawDaemon,
        daemon: &mut DaemonConfig,
    ) {
        for (key, value, target) in [
            ("jobs", &raw.jobs, &mut daemon.jobs),
            (
                "jobs_per_database",
                &raw.jobs_per_database,
                &mut daemon.jobs_per_database,
            ),
        ] {
            let Some(value) = value else { continue };
            match usize::try_from(value.value) {
                Ok(n) if (1..=MAX_DAEMON_JOBS).contains(&n) => *target = n,
                _ => self.err(
                    file,
                    value.referenced,
                    format!(
                        "daemon.{key} must be between 1 and {MAX_DAEMON_JOBS}, found {}",
                        value.value
                    ),
                ),
            }
        }
    }
}
