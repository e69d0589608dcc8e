//! `check --connect`: prepare, never execute, every rule's SQL on its databases.
//!
//! The server parses and plans each detect and each fix statement, which
//! catches a wrong table or column name before the first scheduled run. A
//! fix statement that depends on an earlier statement of the same fix (a table
//! it creates) cannot be prepared ahead of it; such rules report that error.
//! The `replicas:` of a MySQL/MariaDB database are read as the replica-lag
//! gate reads them, so an unreachable one, or a server that is no replica,
//! is found before a batch run waits for it.

use std::borrow::Cow;
use std::time::Duration;

use crate::db::{ConnectSettings, DbError, Session};
use crate::plan::Target;
use crate::rule::{BatchSize, KeyWindow};

/// What preparing one target found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckResult {
    /// Every statement prepared.
    Ok {
        /// Statements prepared.
        statements: usize,
    },
    /// The database could not be reached.
    Unreachable(String),
    /// A statement did not prepare.
    Invalid {
        /// Which query: `detect` or `fix statement N`.
        query: String,
        /// The server's message.
        error: String,
    },
}

/// Prepares the SQL of one target.
pub(crate) async fn prepare_target(target: &Target) -> CheckResult {
    let settings = ConnectSettings {
        timeout: target.rule.timeout,
        lock_wait: Duration::ZERO,
    };
    prepare_on(crate::db::open(&target.database, &settings).await, target).await
}

async fn prepare_on<S: Session>(session: Result<S, DbError>, target: &Target) -> CheckResult {
    let mut session = match session {
        Ok(s) => s,
        Err(e) => return CheckResult::Unreachable(e.to_string()),
    };
    let dialect = target.database.dialect;
    let mut queries: Vec<(String, Cow<'_, str>)> = target
        .rule
        .detect
        .statements(dialect)
        .into_iter()
        .map(|s| ("detect".to_owned(), Cow::Borrowed(s)))
        .collect();
    // A batch fix is prepared with the size of its first batch in
    // `{batch_size}`, and NULL (which fits a key of any type) for its keys.
    let batch = target.rule.batch.as_ref();
    let batch_size = batch.and_then(|b| b.size).map(|s| s.initial);
    let window = batch.and_then(|b| b.key.as_ref()).map(|_| KeyWindow {
        first: "NULL".to_owned(),
        last: "NULL".to_owned(),
    });
    if let Some(fix) = &target.rule.fix {
        for (i, statement) in fix.statements(dialect).into_iter().enumerate() {
            let mut sql = match batch_size {
                Some(size) => Cow::Owned(BatchSize::substitute(statement, size)),
                None => Cow::Borrowed(statement),
            };
            if let Some(window) = &window {
                sql = Cow::Owned(window.substitute(&sql));
            }
            queries.push((format!("fix statement {}", i + 1), sql));
        }
    }
    let mut result = CheckResult::Ok {
        statements: queries.len(),
    };
    for (query, sql) in queries {
        let prepared = tokio::time::timeout(target.rule.timeout, session.prepare(&sql)).await;
        result = match prepared {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => CheckResult::Invalid {
                query,
                error: e.to_string(),
            },
            // No answer is not a verdict on the SQL: the server (or the path
            // to it) stalled, which is what exit 1 means, not exit 2.
            Err(_) => CheckResult::Unreachable(format!(
                "no answer while preparing {query} within {}",
                humantime::format_duration(target.rule.timeout)
            )),
        };
        break;
    }
    // A stalled connection may not answer the goodbye either.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
    result
}

/// One `replicas:` URL of a MySQL/MariaDB database, as `check --connect`
/// found it: read the way `batch.max_replica_lag` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaCheck {
    /// The database the replica belongs to.
    pub database: String,
    /// The replica's URL, password masked.
    pub url: String,
    /// Its lag, or why it cannot be read.
    pub lag: Result<Duration, String>,
}

impl ReplicaCheck {
    /// Its line in `check`'s output.
    pub(crate) fn line(&self) -> String {
        match &self.lag {
            Ok(lag) => format!(
                "replica {} of database {}: ok ({} s behind)\n",
                self.url,
                self.database,
                lag.as_secs()
            ),
            Err(why) => format!(
                "replica {} of database {}: unusable: {why}: a rule with batch.max_replica_lag would wait for it and stop\n",
                self.url, self.database
            ),
        }
    }
}

/// `check --connect` on the `replicas:` of every MySQL/MariaDB database the
/// checked pairs use (each database once, within its first rule's timeout):
/// connects to each and reads its replica status. PostgreSQL reads its
/// standbys on the primary itself and lists no replicas.
pub(crate) async fn check_replicas(targets: &[Target]) -> Vec<ReplicaCheck> {
    let mut seen = std::collections::HashSet::new();
    let mut checks = Vec::new();
    for target in targets {
        let database = &target.database;
        if !seen.insert(database.name.as_str()) {
            continue;
        }
        for url in &database.replicas {
            checks.push(ReplicaCheck {
                database: database.name.clone(),
                url: url.redacted().to_owned(),
                lag: crate::db::replica::probe(url, target.rule.timeout).await,
            });
        }
    }
    checks
}

/// How long closing a checked connection may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pairs `check --connect` prepares: the rules named (every rule when
/// none is, disabled ones included: a rule about to be enabled is exactly
/// the one to check), on `database` if given. Unknown names are the same
/// usage errors as for `run`.
pub(crate) fn select(
    config: &crate::config::Config,
    rules: &[String],
    database: Option<&str>,
) -> Result<Vec<Target>, crate::plan::SelectionError> {
    let rules = if rules.is_empty() {
        config.rules.iter().map(|r| r.name.clone()).collect()
    } else {
        rules.to_vec()
    };
    let selection = crate::plan::Selection {
        rules,
        tags: Vec::new(),
        database: database.map(str::to_owned),
    };
    crate::plan::Plan::select(config, &selection).map(|plan| plan.targets)
}
