//! Replica lag keys: `replicas:` of a database and `batch.max_replica_lag` /
//! `batch.max_lag_wait` of a rule, checked against each other so that a rule
//! that asks to wait for replicas always has replicas whose lag can be read.
//!
//! PostgreSQL reads lag on the primary itself (`pg_stat_replication`), so a
//! PostgreSQL database needs no `replicas:` (and may not list any: they would
//! be read by nobody). MySQL/MariaDB replicas are read one by one with
//! `SHOW REPLICA STATUS`, so a MySQL database a lag-limited rule runs on must
//! list them. SQLite has no replicas.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::Loader;
use super::raw::RawRule;
use crate::db::{DatabaseConfig, Dialect};
use crate::rule::ReplicaLag;
use crate::secret::SecretUrl;

/// `batch.max_lag_wait` when the rule does not say.
const DEFAULT_MAX_LAG_WAIT: Duration = Duration::from_mins(10);

/// `batch.max_replica_lag`: a day (a larger limit is no limit).
const MAX_REPLICA_LAG: (&str, Duration) = ("batch.max_replica_lag", Duration::from_hours(24));
/// `batch.max_lag_wait`: a day; the wait is spent holding the rule's lock.
const MAX_LAG_WAIT: (&str, Duration) = ("batch.max_lag_wait", Duration::from_hours(24));

impl Loader<'_> {
    /// `replicas:` of a database: MySQL/MariaDB URLs (`${VAR}` expanded,
    /// secrets never shown), only on a MySQL/MariaDB database. `None` after
    /// an error.
    pub(super) fn replicas(
        &mut self,
        file: &Path,
        name: &str,
        dialect: Dialect,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Option<Vec<SecretUrl>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let why_not = match dialect {
            Dialect::MySql => None,
            Dialect::Postgres => Some(
                "PostgreSQL replica lag is read on the primary (pg_stat_replication), so list no replicas",
            ),
            Dialect::Sqlite => Some("SQLite has no replicas"),
        };
        if let Some(why_not) = why_not {
            self.err(
                file,
                raw.referenced,
                format!("database {name:?}: replicas: is for MySQL/MariaDB databases; {why_not}"),
            );
            return None;
        }
        if raw.value.is_empty() {
            self.err(
                file,
                raw.referenced,
                format!("database {name:?}: replicas: is empty; list replica URLs or leave it out"),
            );
            return None;
        }
        let mut urls = Vec::new();
        let mut failed = false;
        for (index, entry) in raw.value.iter().enumerate() {
            let subject = format!("database {name:?}: replica {}", index + 1);
            let Some(text) = self.expand(file, entry) else {
                failed = true;
                continue;
            };
            match self.database_url(file, entry.referenced, &subject, text) {
                Some((Dialect::MySql, url)) => urls.push(url),
                Some((other, url)) => {
                    self.err(
                        file,
                        entry.referenced,
                        format!(
                            "{subject}: {} is a {other} URL; replicas of a MySQL/MariaDB database are mysql:// or mariadb:// URLs",
                            url.redacted()
                        ),
                    );
                    failed = true;
                }
                None => failed = true,
            }
        }
        (!failed).then_some(urls)
    }

    /// `batch.max_replica_lag` and `batch.max_lag_wait` of a rule: durations
    /// within their limits, the wait only with the lag, and every database
    /// of the rule able to tell its replicas' lag. `None` when unset or wrong
    /// (errors recorded).
    pub(super) fn replica_lag(
        &mut self,
        file: &Path,
        raw: &RawRule,
        databases: &BTreeMap<String, Arc<DatabaseConfig>>,
    ) -> Option<ReplicaLag> {
        let batch = &raw.batch.as_ref()?.value;
        let Some(max_lag_text) = &batch.max_replica_lag else {
            if let Some(wait) = &batch.max_lag_wait {
                self.err(
                    file,
                    wait.referenced,
                    "batch.max_lag_wait needs batch.max_replica_lag",
                );
            }
            return None;
        };
        let max_lag = self.bounded_duration(file, max_lag_text, MAX_REPLICA_LAG, true);
        let max_wait = match &batch.max_lag_wait {
            Some(wait) => self.bounded_duration(file, wait, MAX_LAG_WAIT, false),
            None => Some(DEFAULT_MAX_LAG_WAIT),
        };
        for name in &raw.database.value.0 {
            let Some(db) = databases.get(name) else {
                continue; // unknown or failed: reported once, elsewhere
            };
            let problem = match db.dialect {
                Dialect::Sqlite => format!("database {name:?} is SQLite, which has no replicas"),
                Dialect::MySql if db.replicas.is_empty() => format!(
                    "database {name:?} lists no replicas: add `replicas: [mysql://user@replica-host:3306]` to it in the config, so that dbjanitor can read their lag"
                ),
                _ => continue,
            };
            self.err(
                file,
                max_lag_text.referenced,
                format!("batch.max_replica_lag: {problem}"),
            );
        }
        Some(ReplicaLag {
            max_lag: max_lag?,
            max_wait: max_wait?,
        })
    }
}
