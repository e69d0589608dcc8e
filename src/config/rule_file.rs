//! Loading one rule file: the steps of [`Loader::rule`], each checking one
//! group of keys and reporting every problem it finds, so that a rule with
//! three mistakes gets three messages in one pass.
//!
//! A rule is only built when none of its steps reported an error; the steps
//! still all run, because a later key's mistake is worth reporting even when
//! an earlier one failed.
//!
//! (Over 500 lines: one rule file has some twenty keys, each checked by its
//! own short step here; splitting the steps apart would scatter one rule's
//! validation over several files.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::{self, OneOrMany, RawLock, RawRule, RawSql};
use super::{Defaults, Loader, NotifierConfig, keys, limits, parse_file, valid_name};
use crate::db::{DatabaseConfig, Dialect};
use crate::outcome::Outcome;
use crate::rule::{BATCH_SIZE_PLACEHOLDER, Batch, BatchSize, DialectSql, LockSpec, Mode, Rule};
use crate::schedule::Schedule;
use crate::sql::{implicit_commit, split_statements};

/// `notify`, `notify_on` and `renotify_after` of a rule, defaults applied.
struct NotifySettings {
    notify: Vec<String>,
    notify_on: BTreeSet<Outcome>,
    renotify_after: Duration,
}

impl Loader<'_> {
    /// Parses and checks one rule file. `None` when the file had any error
    /// (all of them are in `self.errors`); otherwise the rule and where its
    /// name is, for the duplicate-name check across files.
    pub(super) fn rule(
        &mut self,
        file: &Path,
        databases: &BTreeMap<String, Arc<DatabaseConfig>>,
        notifiers: &BTreeMap<String, Arc<NotifierConfig>>,
        defaults: &Defaults,
    ) -> Option<(Rule, Location)> {
        let raw: RawRule = match parse_file(file, keys::FileKind::Rule) {
            Ok(raw) => raw,
            Err(e) => {
                self.errors.extend(e);
                return None;
            }
        };
        let errors_before = self.errors.len();
        let name = raw.name.value.clone();
        if !valid_name(&name) {
            self.err(
                file,
                raw.name.referenced,
                format!("invalid rule name {name:?}: use [a-z0-9._-]+"),
            );
        }
        let dialects = self.rule_databases(file, &raw.database, databases);
        let schedule = self.rule_schedule(file, raw.schedule.as_ref());
        let timezone = match &raw.timezone {
            Some(tz) => self.timezone(file, tz).unwrap_or(defaults.timezone),
            None => defaults.timezone,
        };
        let mode = raw.mode.unwrap_or_default();
        let (detect, fix) = self.rule_sql(file, &raw, &dialects, mode);
        let max_rows = self.max_rows(file, &raw);
        let batch = self.batch(file, &raw, (&detect, fix.as_ref()), &dialects);
        let lag = self.replica_lag(file, &raw, databases);
        let timeout = self.duration_or(
            file,
            raw.timeout.as_ref(),
            (limits::TIMEOUT, true),
            defaults.timeout,
        );
        let lock = self.lock_spec(file, raw.lock.as_ref(), &name);
        let notify = self.notify_settings(file, &raw, notifiers, defaults);
        let backup = self.backup(file, raw.backup.as_ref(), mode);
        if self.errors.len() > errors_before {
            return None;
        }
        let rule = Rule {
            name,
            description: raw.description.unwrap_or_default().trim().to_owned(),
            source: file.to_path_buf(),
            databases: raw.database.value.0,
            schedule,
            timezone,
            tags: raw.tags,
            detect,
            fix,
            max_rows,
            verify: raw.verify.unwrap_or(true),
            mode,
            batch: batch.map(|batch| Batch { lag, ..batch }),
            timeout,
            lock,
            notify: notify.notify,
            notify_on: notify.notify_on,
            renotify_after: notify.renotify_after,
            enabled: raw.enabled.unwrap_or(true),
            backup,
        };
        Some((rule, raw.name.referenced))
    }

    /// `database:`: each name listed once and known. Returns the dialects
    /// the rule runs on, sorted and without repeats, for the SQL checks.
    fn rule_databases(
        &mut self,
        file: &Path,
        listed: &Spanned<OneOrMany>,
        databases: &BTreeMap<String, Arc<DatabaseConfig>>,
    ) -> Vec<Dialect> {
        let OneOrMany(db_names) = &listed.value;
        if db_names.is_empty() {
            self.err(
                file,
                listed.referenced,
                "database: name at least one database",
            );
        }
        let mut dialects = Vec::new();
        for (index, db) in db_names.iter().enumerate() {
            if db_names[..index].contains(db) {
                self.err(
                    file,
                    listed.referenced,
                    format!("database {db:?} is listed twice"),
                );
                continue;
            }
            match databases.get(db) {
                Some(config) => dialects.push(config.dialect),
                // Its own error is reported; this rule is not a second one.
                None if self.failed.databases.contains(db) => {}
                None => {
                    let known = super::known_names(databases, &self.failed.databases);
                    self.err(
                        file,
                        listed.referenced,
                        format!("unknown database {db:?}; databases in the config: {known:?}"),
                    );
                }
            }
        }
        dialects.sort();
        dialects.dedup();
        dialects
    }

    fn rule_schedule(&mut self, file: &Path, raw: Option<&Spanned<String>>) -> Option<Schedule> {
        let s = raw?;
        match Schedule::parse(&s.value) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                self.err(file, s.referenced, e);
                None
            }
        }
    }

    /// `detect:` and `fix:`: SQL for every dialect, detect read-only, fix
    /// within what dbjanitor can count and roll back.
    fn rule_sql(
        &mut self,
        file: &Path,
        raw: &RawRule,
        dialects: &[Dialect],
        mode: Mode,
    ) -> (DialectSql, Option<DialectSql>) {
        let detect = self.dialect_sql(file, &raw.detect, "detect", dialects);
        self.check_detect(file, &raw.detect, &detect, dialects);
        let fix = raw.fix.as_ref().map(|fix| {
            let sql = self.dialect_sql(file, fix, "fix", dialects);
            self.check_fix(file, fix, &sql, dialects, mode);
            sql
        });
        (detect, fix)
    }

    /// `max_rows:` at least 1, and required with a fix; unlimited for a
    /// detect-only rule that does not set it.
    fn max_rows(&mut self, file: &Path, raw: &RawRule) -> u64 {
        match (&raw.max_rows, &raw.fix) {
            (Some(m), _) => match u64::try_from(m.value) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.err(
                        file,
                        m.referenced,
                        format!("max_rows must be at least 1, found {}", m.value),
                    );
                    1
                }
            },
            (None, Some(fix)) => {
                self.err(
                    file,
                    fix.referenced,
                    "a rule with a fix needs max_rows: the most rows it may find and change in one run",
                );
                1
            }
            (None, None) => u64::MAX,
        }
    }

    /// A bounded duration key of a rule, or its default when unset or wrong
    /// (the error is recorded, so the default never reaches a built rule).
    fn duration_or(
        &mut self,
        file: &Path,
        raw: Option<&Spanned<String>>,
        (limit, positive): ((&str, Duration), bool),
        default: Duration,
    ) -> Duration {
        raw.and_then(|d| self.bounded_duration(file, d, limit, positive))
            .unwrap_or(default)
    }

    /// `lock:`: the name defaults to the rule's, the wait to none.
    fn lock_spec(&mut self, file: &Path, raw: Option<&RawLock>, rule_name: &str) -> LockSpec {
        let lock = LockSpec {
            name: raw
                .and_then(|l| l.name.as_ref())
                .map_or_else(|| rule_name.to_owned(), |n| n.value.clone()),
            wait: raw
                .and_then(|l| l.wait.as_ref())
                .and_then(|w| self.bounded_duration(file, w, limits::LOCK_WAIT, false))
                .unwrap_or(Duration::ZERO),
        };
        if let Some(name) = raw.and_then(|l| l.name.as_ref())
            && name.value.trim().is_empty()
        {
            self.err(file, name.referenced, "lock.name must not be empty");
        }
        lock
    }

    /// `notify:`, `notify_on:` and `renotify_after:`, each falling back to
    /// `defaults:`.
    fn notify_settings(
        &mut self,
        file: &Path,
        raw: &RawRule,
        notifiers: &BTreeMap<String, Arc<NotifierConfig>>,
        defaults: &Defaults,
    ) -> NotifySettings {
        let notify = match &raw.notify {
            Some(names) => self.notifier_refs(file, names, notifiers),
            None => defaults.notify.clone(),
        };
        let notify_on = raw.notify_on.as_ref().map_or_else(
            || defaults.notify_on.clone(),
            |list| list.iter().copied().collect(),
        );
        // 0s is allowed: repeat every run.
        let renotify_after = self.duration_or(
            file,
            raw.renotify_after.as_ref(),
            (limits::RENOTIFY_AFTER, false),
            defaults.renotify_after,
        );
        NotifySettings {
            notify,
            notify_on,
            renotify_after,
        }
    }

    /// `batch:` of a rule, and where `{batch_size}` may appear: in every
    /// dialect's fix when `batch.size` is set, nowhere otherwise.
    fn batch(
        &mut self,
        file: &Path,
        raw: &raw::RawRule,
        sql: (&DialectSql, Option<&DialectSql>),
        dialects: &[Dialect],
    ) -> Option<Batch> {
        let size_set = raw.batch.as_ref().is_some_and(|b| b.value.size.is_some());
        let key_set = raw.batch.as_ref().is_some_and(|b| b.value.key.is_some());
        self.placeholder_uses(file, raw, sql, dialects, (size_set, key_set));
        let key = self.batch_key(file, raw, sql, dialects);
        let b = raw.batch.as_ref()?;
        if raw.fix.is_none() {
            self.err(file, b.referenced, "batch: needs a fix to repeat");
        }
        let pause = match &b.value.pause {
            Some(p) => self.bounded_duration(file, p, limits::PAUSE, false)?,
            None => Duration::from_millis(100),
        };
        let max_batches = match &b.value.max_batches {
            Some(m) => self.at_least_one(file, m, "max_batches")?,
            None => 1000,
        };
        let size = match &b.value.size {
            Some(size) => Some(self.batch_size(file, &b.value, size)?),
            None => {
                for (key, at) in [
                    ("min_size", b.value.min_size.as_ref().map(|s| s.referenced)),
                    ("max_size", b.value.max_size.as_ref().map(|s| s.referenced)),
                    ("target", b.value.target.as_ref().map(|s| s.referenced)),
                ] {
                    if let Some(at) = at {
                        self.err(file, at, format!("batch.{key} needs batch.size (and {BATCH_SIZE_PLACEHOLDER} in the fix)"));
                    }
                }
                None
            }
        };
        Some(Batch {
            pause,
            max_batches,
            size,
            key,
            lag: None,
        })
    }

    /// `batch.size`, `min_size`, `max_size` and `target`, checked together.
    fn batch_size(
        &mut self,
        file: &Path,
        raw: &raw::RawBatch,
        size: &Spanned<i64>,
    ) -> Option<BatchSize> {
        let initial = self.at_least_one(file, size, "batch.size")?;
        let min = match &raw.min_size {
            Some(m) => self.at_least_one(file, m, "batch.min_size")?,
            None => initial.min(100),
        };
        let max = match &raw.max_size {
            Some(m) => self.at_least_one(file, m, "batch.max_size")?,
            None => initial.max(100_000),
        };
        if !(min..=max).contains(&initial) {
            self.err(
                file,
                size.referenced,
                format!("batch.size {initial} must lie between batch.min_size {min} and batch.max_size {max}"),
            );
            return None;
        }
        let target = match &raw.target {
            Some(t) => Some(self.bounded_duration(file, t, limits::BATCH_TARGET, true)?),
            None => None,
        };
        Some(BatchSize {
            initial,
            min,
            max,
            target,
        })
    }

    /// Errors for `{batch_size}` in detect, or missing from / present in a fix
    /// against `batch.size` (optional in a keyset fix: `batch.key` uses the
    /// size for its window).
    fn placeholder_uses(
        &mut self,
        file: &Path,
        raw: &raw::RawRule,
        (detect, fix): (&DialectSql, Option<&DialectSql>),
        dialects: &[Dialect],
        (size_set, key_set): (bool, bool),
    ) {
        if [&detect.any, &detect.mysql, &detect.postgres, &detect.sqlite]
            .into_iter()
            .flatten()
            .any(|text| text.contains(BATCH_SIZE_PLACEHOLDER))
        {
            self.err(
                file,
                raw.detect.referenced,
                format!("{BATCH_SIZE_PLACEHOLDER} belongs in a batch fix, not in detect"),
            );
        }
        let (Some(fix), Some(raw_fix)) = (fix, raw.fix.as_ref()) else {
            return;
        };
        for &dialect in dialects {
            let uses = fix
                .for_dialect(dialect)
                .is_some_and(|text| text.contains(BATCH_SIZE_PLACEHOLDER));
            if uses && !size_set {
                self.err(
                    file,
                    raw_fix.referenced,
                    format!(
                        "the {dialect} fix uses {BATCH_SIZE_PLACEHOLDER}, which needs batch.size"
                    ),
                );
            } else if !uses && size_set && !key_set {
                self.err(file, raw_fix.referenced, format!("batch.size is set, so the {dialect} fix must use {BATCH_SIZE_PLACEHOLDER} for its LIMIT"));
            }
        }
    }

    fn at_least_one(&mut self, file: &Path, value: &Spanned<i64>, key: &str) -> Option<u64> {
        match u64::try_from(value.value) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.err(
                    file,
                    value.referenced,
                    format!("{key} must be at least 1, found {}", value.value),
                );
                None
            }
        }
    }

    /// Converts `detect:`/`fix:` and checks there is SQL for every dialect.
    /// Detect must be one query (SELECT, WITH ... SELECT, VALUES, TABLE) on
    /// every dialect the rule runs on; the server checks it again at run time.
    fn check_detect(
        &mut self,
        file: &Path,
        raw: &Spanned<RawSql>,
        detect: &DialectSql,
        dialects: &[Dialect],
    ) {
        for &dialect in dialects {
            let statements = detect.statements(dialect);
            if statements.len() > 1 {
                let count = statements.len();
                self.err(
                    file,
                    raw.referenced,
                    format!(
                        "detect for {dialect} holds {count} statements; it must be a single SELECT"
                    ),
                );
            } else if let Some(statement) = statements.first()
                && !crate::sql::is_query(statement, dialect)
            {
                let what = if crate::sql::hides_dml(statement, dialect) {
                    "hides a data-modifying statement inside a WITH query".to_owned()
                } else {
                    format!(
                        "is a {} statement",
                        crate::sql::main_keyword(statement, dialect)
                    )
                };
                self.err(
                    file,
                    raw.referenced,
                    format!(
                        "detect for {dialect} {what}; it must be a read-only query (SELECT, WITH ... SELECT, VALUES or TABLE)"
                    ),
                );
            }
        }
    }

    /// A fix must not control transactions (dbjanitor owns them), must not
    /// hide writes in a query's CTE (they would not be counted), and in a
    /// transactional MySQL rule must not commit implicitly.
    fn check_fix(
        &mut self,
        file: &Path,
        raw: &Spanned<RawSql>,
        fix: &DialectSql,
        dialects: &[Dialect],
        mode: Mode,
    ) {
        for &dialect in dialects {
            for statement in fix.statements(dialect) {
                if let Some(words) = crate::sql::transaction_control(statement, dialect) {
                    self.err(
                        file,
                        raw.referenced,
                        format!(
                            "the {dialect} fix runs {words}; dbjanitor opens, commits and rolls back the fix's transaction itself, so a fix may not control transactions"
                        ),
                    );
                } else if crate::sql::hides_dml(statement, dialect) {
                    self.err(
                        file,
                        raw.referenced,
                        format!(
                            "the {dialect} fix hides a data-modifying statement inside a WITH query; its rows would not be counted against max_rows: make the INSERT/UPDATE/DELETE the main statement"
                        ),
                    );
                } else if let (Dialect::MySql, Mode::Transactional, Some(words)) =
                    (dialect, mode, implicit_commit(statement))
                {
                    self.err(
                        file,
                        raw.referenced,
                        format!(
                            "the MySQL fix runs {words}, which commits implicitly and cannot be rolled back: set `mode: autocommit`"
                        ),
                    );
                }
            }
        }
    }

    fn dialect_sql(
        &mut self,
        file: &Path,
        raw: &Spanned<RawSql>,
        key: &str,
        dialects: &[Dialect],
    ) -> DialectSql {
        let sql = match &raw.value {
            RawSql::Any(text) => DialectSql {
                any: Some(text.clone()),
                ..DialectSql::default()
            },
            RawSql::ByDialect(map) => DialectSql {
                any: None,
                mysql: map.mysql.clone(),
                postgres: map.postgres.clone(),
                sqlite: map.sqlite.clone(),
            },
        };
        for &dialect in dialects {
            let given = sql.for_dialect(dialect);
            if given.is_some_and(|text| !split_statements(text, dialect).is_empty()) {
                continue;
            }
            let message = match (&raw.value, given) {
                (RawSql::Any(_), _) => super::plain::empty_value(key, "SQL"),
                (RawSql::ByDialect(_), Some(_)) => {
                    format!(
                        "{key}.{dialect} is empty: write its {dialect} SQL, or leave the key out on a rule that does not run on {dialect}"
                    )
                }
                (RawSql::ByDialect(_), None) => {
                    format!("{key} has no {dialect} SQL, but the rule runs on a {dialect} database")
                }
            };
            self.err(file, raw.referenced, message);
            if matches!(raw.value, RawSql::Any(_)) {
                // One text for every dialect: one error, whatever the dialects.
                break;
            }
        }
        sql
    }
}
