//! Audit-table fixtures shared by the modules that run dbjanitor with an
//! audit database (`audit`, `daemon`, `history`, `monitoring`, `operator`,
//! `undo`, `tell_order`): a jobs table with a rule that fixes it, the config
//! that audits it, and readers of the audit rows and the metrics text.
//! They live here so that no test module borrows another's helpers.

use std::sync::Arc;

use dbjanitor::audit::AuditStore;
use dbjanitor::db::{DatabaseConfig, Dialect};
use dbjanitor::secret::SecretUrl;

use crate::util::{Case, Engine, TestDb};

/// Three stuck jobs, one done: the database `STUCK` fixes, so that every
/// audited test starts from the same known rows.
pub(crate) async fn jobs(engine: Engine) -> TestDb {
    TestDb::with_sql(
        engine,
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL); \
         INSERT INTO job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck'), (4, 'done');",
    )
    .await
}

/// The rule that fails the stuck jobs of `jobs` (three rows, under
/// `max_rows`): one fix whose outcome and counts the tests know in advance.
pub(crate) const STUCK: &str = "name: jobs.stuck\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'stuck'\nfix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n";

/// A config with the rules' database `main` and the audit database `janitor`.
pub(crate) fn audited(app: &TestDb, audit: &TestDb) -> Case {
    Case::new()
        .database("main", app.url())
        .database("janitor", audit.url())
        .config("audit:\n  database: janitor")
}

/// The audit store the binary would use, opened by the test through the library.
pub(crate) fn store(audit: &TestDb) -> AuditStore {
    let dialect = match audit.engine {
        Engine::Postgres => Dialect::Postgres,
        Engine::MySql => Dialect::MySql,
        Engine::Sqlite => Dialect::Sqlite,
    };
    AuditStore::new(
        Arc::new(DatabaseConfig {
            pragmas: Vec::new(),
            replicas: Vec::new(),
            name: "janitor".to_owned(),
            dialect,
            url: SecretUrl::new(audit.url().to_owned()),
            lock: dbjanitor::db::LockKind::Auto,
        }),
        None,
    )
}

/// A boolean column as the engines print it.
pub(crate) fn truthy(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("t" | "1" | "true"))
}

/// `(rule, outcome, detected, changed, dry_run)` of every audit row, oldest first.
pub(crate) async fn audit_rows(audit: &TestDb) -> Vec<(String, String, String, String, bool)> {
    audit
        .rows("SELECT rule, outcome, detected, changed, dry_run FROM dbjanitor_runs ORDER BY id")
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                r[2].clone().unwrap_or_default(),
                r[3].clone().unwrap_or_default(),
                truthy(r[4].as_ref()),
            )
        })
        .collect()
}

/// A scalar sample of a parsed metrics text: counters arrive untyped from
/// OpenMetrics (`_total`), gauges typed.
pub(crate) fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

/// Parses a Prometheus/OpenMetrics text (the `--metrics-file` or the daemon's
/// `/metrics`) the way a scraper would, so tests assert on samples, not text.
pub(crate) fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("metrics parse")
}
