//! Which (rule, database) pairs a command runs.
//!
//! Selection happens once, before any connection is opened, so a typo in a
//! rule name, tag or database on the command line is a usage error (exit 2)
//! rather than a run that silently does nothing.

use std::sync::Arc;

use crate::config::Config;
use crate::db::{DatabaseConfig, Dialect};
use crate::rule::Rule;

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Rule names; empty means every enabled rule.
    pub rules: Vec<String>,
    /// Keep rules carrying any of these tags.
    pub tags: Vec<String>,
    /// Keep only this database.
    pub database: Option<String>,
}

/// One rule on one database: the unit the engine runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The rule.
    pub rule: Arc<Rule>,
    /// The database it runs on.
    pub database: Arc<DatabaseConfig>,
}

impl Target {
    /// Rules sharing this key must not run at the same time in one process,
    /// except those that [share the turn](Self::shares_turn). SQLite has a
    /// single write lock per database, so every rule on one SQLite database
    /// shares a key: inside a process they queue instead of skipping each
    /// other.
    #[must_use]
    pub fn lock_key(&self) -> (&str, &str) {
        match self.database.dialect {
            Dialect::Sqlite => (&self.database.name, ""),
            _ => (&self.database.name, &self.rule.lock.name),
        }
    }

    /// Whether runs with this key may take their turn together: rules that
    /// only read on SQLite ([`Rule::only_reads`](crate::rule::Rule::only_reads)),
    /// which take no write lock there. They never share it with a rule that
    /// writes: in rollback-journal mode a COMMIT needs every reader gone, and
    /// with `lock.wait` 0 it fails at once while a report reads.
    #[must_use]
    pub fn shares_turn(&self) -> bool {
        self.database.dialect == Dialect::Sqlite && self.rule.only_reads()
    }
}

/// The pairs to run, in config order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The pairs.
    pub targets: Vec<Target>,
}

/// A selection that names something the config does not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    /// `run NAME` with an unknown rule.
    #[error("no rule named {0:?} (see `dbjanitor list`)")]
    UnknownRule(String),
    /// `--database NAME` with an unknown database.
    #[error("no database named {0:?} in the config")]
    UnknownDatabase(String),
    /// `--tag T` that no rule carries.
    #[error("no rule has the tag {0:?}")]
    UnknownTag(String),
    /// The filters together matched nothing.
    #[error("the selection matches no (rule, database) pair")]
    Empty,
}

impl Plan {
    /// Selects pairs from `config`. Named rules run even when disabled (an
    /// operator asked for them explicitly); otherwise disabled rules are left out.
    pub fn select(config: &Config, selection: &Selection) -> Result<Self, SelectionError> {
        for name in &selection.rules {
            if !config.rules.iter().any(|r| &r.name == name) {
                return Err(SelectionError::UnknownRule(name.clone()));
            }
        }
        for tag in &selection.tags {
            if !config.rules.iter().any(|r| r.tags.contains(tag)) {
                return Err(SelectionError::UnknownTag(tag.clone()));
            }
        }
        if let Some(db) = &selection.database
            && !config.databases.contains_key(db)
        {
            return Err(SelectionError::UnknownDatabase(db.clone()));
        }
        let mut targets = Vec::new();
        for rule in &config.rules {
            let named = selection.rules.contains(&rule.name);
            if !selection.rules.is_empty() && !named {
                continue;
            }
            if !named && !rule.enabled {
                continue;
            }
            if !selection.tags.is_empty() && !rule.tags.iter().any(|t| selection.tags.contains(t)) {
                continue;
            }
            for db_name in &rule.databases {
                if selection.database.as_ref().is_some_and(|d| d != db_name) {
                    continue;
                }
                if let Some(database) = config.databases.get(db_name) {
                    targets.push(Target {
                        rule: Arc::clone(rule),
                        database: Arc::clone(database),
                    });
                }
            }
        }
        if targets.is_empty()
            && !(selection.rules.is_empty()
                && selection.tags.is_empty()
                && selection.database.is_none())
        {
            return Err(SelectionError::Empty);
        }
        Ok(Self { targets })
    }
}
