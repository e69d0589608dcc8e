//! Loading and validating `dbjanitor.yaml` and its rule files.
//!
//! Loading is two-stage, like ripgrep's argument handling: [`raw`] mirrors
//! the YAML (with positions), and this module turns it into a [`Config`] whose
//! every value has been checked: names resolve, schedules compile, durations
//! parse, SQL exists for every dialect a rule targets, `${VAR}` references are
//! set. All problems are collected and reported together, each with file, line
//! and column, so an operator fixes a broken pack in one pass. Nothing here
//! connects to a database.

mod backup;
mod batch_key;
mod database;
mod env;
mod error;
mod keys;
mod notifier;
mod plain;
mod raw;
mod replica;
mod rule_file;
mod rule_walk;
mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

pub use env::{Environment, ProcessEnv};
pub use error::{ConfigError, ConfigErrors, SourceLocation};
pub use notifier::{
    DeliveryPolicy, EmailConfig, EmailTls, NotifierConfig, WebhookConfig, WebhookFormat,
    ca_certificate,
};
pub use settings::{
    AuditConfig, DEFAULT_AUDIT_TIMEOUT, DEFAULT_MIGRATE_LOCK_WAIT, DaemonConfig, Defaults,
};

use crate::db::DatabaseConfig;
use crate::rule::Rule;
use raw::RawConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it was read from.
    pub path: PathBuf,
    /// Databases by name.
    pub databases: BTreeMap<String, Arc<DatabaseConfig>>,
    /// Rules in load order (folders sorted by file name).
    pub rules: Vec<Arc<Rule>>,
    /// Notifiers by name.
    pub notifiers: BTreeMap<String, Arc<NotifierConfig>>,
    /// Audit history, if configured.
    pub audit: Option<AuditConfig>,
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// Values rules inherit.
    pub defaults: Defaults,
    /// Where and how long backup images are kept (`images:`).
    pub images: crate::backup::Images,
}

/// Loads the config at `path` with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &ProcessEnv)
}

/// Loads the config at `path`, reading `${VAR}` from `env`.
pub fn load_with_env(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    let mut loader = Loader {
        env,
        errors: Vec::new(),
        failed: FailedNames::default(),
    };
    let config = loader.config(path);
    match config {
        Some(config) if loader.errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(loader.errors)),
    }
}

/// YAML options: strict booleans (`yes` is not true) and duplicate keys rejected.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
    }
}

/// Parses one YAML file into `T`; on failure, every problem found: serde
/// stops at the first, so unknown keys are looked for in a second reading
/// ([`keys::unknown_keys`]) and serde's own "unknown field" then adds nothing.
fn parse_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: keys::FileKind,
) -> Result<T, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::file(path, format!("cannot read file: {e}"))])?;
    if text.trim().is_empty() {
        return Err(vec![ConfigError::file(path, "the file is empty")]);
    }
    serde_saphyr::from_str_with_options(&text, yaml_options()).map_err(|e| {
        let mut error = ConfigError::from_yaml(path, &e);
        point_at_tab(&text, &mut error);
        error.message = plain::in_plain_words(&text, error.location.line, &error.message);
        let mut errors = keys::unknown_keys(path, &text, kind);
        if errors.is_empty() || !error.message.starts_with("unknown field") {
            errors.push(error);
            errors.sort_by_key(|e| (e.location.line, e.location.column));
        }
        errors
    })
}

/// The YAML scanner reports a stray tab ("while scanning a plain scalar,
/// found a tab") at the start of the scalar it was reading, often a line
/// above; the operator needs the tab itself. Moves the location to the first
/// tab at or after the reported position.
fn point_at_tab(text: &str, error: &mut ConfigError) {
    if !error.message.contains("tab") {
        return;
    }
    let from_line = usize::try_from(error.location.line).unwrap_or(1);
    let from_column = usize::try_from(error.location.column).unwrap_or(1);
    for (index, line) in text.lines().enumerate().skip(from_line.saturating_sub(1)) {
        let skip = if index + 1 == from_line {
            from_column.saturating_sub(1)
        } else {
            0
        };
        if let Some(column) = line
            .chars()
            .enumerate()
            .skip(skip)
            .find(|(_, c)| *c == '\t')
            .map(|(i, _)| i + 1)
        {
            error.location.line = u64::try_from(index + 1).unwrap_or(u64::MAX);
            error.location.column = u64::try_from(column).unwrap_or(u64::MAX);
            return;
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (expected e.g. 30s, 10m, 1h 30m)"))
}

struct Loader<'e> {
    env: &'e dyn Environment,
    errors: Vec<ConfigError>,
    failed: FailedNames,
}

/// Names whose own error is already reported (issue 12.3): a database whose
/// URL did not resolve still counts as defined for the rules that name it,
/// and an unset variable is reported once however often it is used, so that
/// one cause gives one message and not a wall of echoes.
#[derive(Debug, Default)]
struct FailedNames {
    /// Databases in `databases:` that failed to load.
    databases: BTreeSet<String>,
    /// Notifiers in `notifiers:` that failed to load, or that are off
    /// (`optional: true` with an unset URL variable): rules naming them are
    /// not in error, and they are left out of every notify list.
    notifiers: BTreeSet<String>,
    /// `${VAR}` names already reported as unset, empty or not UTF-8.
    variables: BTreeSet<String>,
}

impl Loader<'_> {
    fn err(&mut self, file: &Path, at: Location, message: impl Into<String>) {
        self.errors.push(ConfigError::at(file, at, message));
    }

    fn config(&mut self, path: &Path) -> Option<Config> {
        let raw: RawConfig = match parse_file(path, keys::FileKind::Config) {
            Ok(raw) => raw,
            Err(e) => {
                self.errors.extend(e);
                return None;
            }
        };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut databases = BTreeMap::new();
        for (name, db) in raw.databases {
            match self.database(path, base, &name, &db) {
                Some(db) => {
                    databases.insert(name, Arc::new(db));
                }
                None => {
                    self.failed.databases.insert(name);
                }
            }
        }
        let notifier_names: Vec<String> = raw.notifiers.keys().cloned().collect();
        let notifiers = notifier::load_all(self, path, base, raw.notifiers);
        self.failed.notifiers.extend(
            notifier_names
                .into_iter()
                .filter(|name| !notifiers.contains_key(name)),
        );
        let defaults = self.defaults(path, raw.defaults, &notifiers);
        let audit = raw
            .audit
            .and_then(|audit| self.audit(path, &audit, &databases));
        let mut daemon = DaemonConfig::default();
        if let Some(raw_daemon) = &raw.daemon {
            self.daemon_limits(path, raw_daemon, &mut daemon);
        }
        if let Some(grace) = raw
            .daemon
            .and_then(|d| d.shutdown_grace)
            .and_then(|g| self.bounded_duration(path, &g, limits::SHUTDOWN_GRACE, false))
        {
            daemon.shutdown_grace = grace;
        }
        let images = self.images(path, raw.images.as_ref());
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in self.rule_files(path, base, &raw.rules) {
            let Some((rule, name_at)) = self.rule(&file, &databases, &notifiers, &defaults) else {
                continue;
            };
            if let Some(first) = seen.get(&rule.name) {
                let message = format!(
                    "duplicate rule name {:?}: already defined in {}",
                    rule.name,
                    first.display()
                );
                self.err(&file, name_at, message);
                continue;
            }
            seen.insert(rule.name.clone(), file.clone());
            let mut rule = rule;
            if let Some(backup) = &mut rule.backup {
                backup.images = images.clone();
            }
            rules.push(Arc::new(rule));
        }
        Some(Config {
            path: path.to_path_buf(),
            databases,
            rules,
            notifiers,
            audit,
            daemon,
            defaults,
            images,
        })
    }

    fn timezone(&mut self, file: &Path, tz: &Spanned<String>) -> Option<Tz> {
        match Tz::from_str(tz.value.trim()) {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.err(
                    file,
                    tz.referenced,
                    format!(
                        "unknown timezone {:?}: expected an IANA name such as UTC or Europe/Berlin",
                        tz.value
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, file: &Path, text: &Spanned<String>) -> Option<Duration> {
        match parse_duration(&text.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(file, text.referenced, e);
                None
            }
        }
    }

    /// A duration no longer than `max` (see [`limits`]); the message names the
    /// key and the largest accepted value.
    fn bounded_duration(
        &mut self,
        file: &Path,
        text: &Spanned<String>,
        (key, max): (&str, Duration),
        positive: bool,
    ) -> Option<Duration> {
        let d = if positive {
            self.positive_duration(file, text)?
        } else {
            self.duration(file, text)?
        };
        if d > max {
            self.err(
                file,
                text.referenced,
                format!(
                    "{key} {:?} is too long: the largest accepted value is {}",
                    text.value.trim(),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn positive_duration(&mut self, file: &Path, text: &Spanned<String>) -> Option<Duration> {
        let d = self.duration(file, text)?;
        if d.is_zero() {
            self.err(file, text.referenced, "duration must be greater than 0");
            return None;
        }
        Some(d)
    }

    fn notifier_refs(
        &mut self,
        file: &Path,
        names: &[Spanned<String>],
        notifiers: &BTreeMap<String, Arc<NotifierConfig>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for name in names {
            if notifiers.contains_key(&name.value) {
                out.push(name.value.clone());
            } else if !self.failed.notifiers.contains(&name.value) {
                let known = known_names(notifiers, &self.failed.notifiers);
                self.err(
                    file,
                    name.referenced,
                    format!(
                        "unknown notifier {:?}; notifiers in the config: {known:?}",
                        name.value
                    ),
                );
            }
        }
        out
    }
}

/// Names defined in the config, loaded or failed, sorted once each: the
/// list an "unknown name" error offers.
fn known_names<'a, V>(
    loaded: &'a BTreeMap<String, V>,
    failed: &'a BTreeSet<String>,
) -> Vec<&'a str> {
    loaded
        .keys()
        .chain(failed)
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The longest durations each key accepts: values every engine can apply,
/// with room for the sums dbjanitor makes (all arithmetic on durations
/// saturates as well).
pub mod limits {
    use std::time::Duration;

    const DAY: u64 = 24 * 60 * 60;

    /// `timeout`: PostgreSQL `statement_timeout` stops at 2^31-1 ms (24.8
    /// days) and `idle_in_transaction_session_timeout` is set to twice it.
    pub const TIMEOUT: (&str, Duration) = ("timeout", Duration::from_secs(7 * DAY));
    /// `lock.wait`: SQLite's busy timeout is an `i32` of milliseconds.
    pub const LOCK_WAIT: (&str, Duration) = ("lock.wait", Duration::from_secs(DAY));
    /// `batch.pause`: a pause is spent holding the rule's lock.
    pub const PAUSE: (&str, Duration) = ("batch.pause", Duration::from_hours(1));
    /// `batch.target`: an hour; one batch's transaction holds its row locks that long.
    pub const BATCH_TARGET: (&str, Duration) = ("batch.target", Duration::from_hours(1));
    /// `renotify_after`: a year; longer is "never", which `notify_on` says better.
    pub const RENOTIFY_AFTER: (&str, Duration) = ("renotify_after", Duration::from_secs(366 * DAY));
    /// `daemon.shutdown_grace`: a day.
    pub const SHUTDOWN_GRACE: (&str, Duration) = ("shutdown_grace", Duration::from_secs(DAY));
    /// `audit.keep`: a hundred years, within every timestamp type.
    pub const AUDIT_KEEP: (&str, Duration) = ("audit.keep", Duration::from_secs(36_525 * DAY));
    /// `audit.timeout`: a day (it bounds each audit read or write).
    pub const AUDIT_TIMEOUT: (&str, Duration) = ("audit.timeout", Duration::from_secs(DAY));
    /// `audit.migrate_lock_wait`: a day (PostgreSQL `lock_timeout` is an
    /// `i32` of milliseconds).
    pub const AUDIT_MIGRATE_LOCK_WAIT: (&str, Duration) =
        ("audit.migrate_lock_wait", Duration::from_secs(DAY));
}
