//! Prometheus metrics: the daemon's live `/metrics`, and the one-shot
//! `--metrics-file` of `run` for node_exporter's textfile collector.
//!
//! Both are encoded by `prometheus-client` (the Prometheus project's own Rust
//! client) in the OpenMetrics text format, which Prometheus scrapes natively.
//! The textfile holds gauges only: a gauge is written the same way in the
//! OpenMetrics and the classic text format, so node_exporter (which reads the
//! classic format and takes `# EOF` for a comment) reads it with its types.
//!
//! Every series is labelled by `rule` and `database` (names from the config;
//! never a URL). Series for every scheduled pair exist from the start at 0, so
//! `rate()` and absence alerts work before the first run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::audit::LastRun;
use crate::outcome::{Outcome, RunRecord};

/// The content type of [`DaemonMetrics::encode`].
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Run durations, in seconds: from a quick clean detect to an hour of batches.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Labels of a (rule, database) pair.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct PairLabels {
    /// Rule name.
    pub rule: String,
    /// Database name from the config.
    pub database: String,
}

impl PairLabels {
    /// The labels of a record's pair.
    #[must_use]
    pub(crate) fn of(rule: &str, database: &str) -> Self {
        Self {
            rule: rule.to_owned(),
            database: database.to_owned(),
        }
    }
}

/// Labels of a pair and an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// Rule name.
    pub rule: String,
    /// Database name from the config.
    pub database: String,
    /// One of the seven outcomes.
    pub outcome: String,
}

/// Labels of a database.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DatabaseLabels {
    /// Database name from the config.
    pub database: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds(t: DateTime<Utc>) -> f64 {
    // Millisecond precision is plenty for a timestamp gauge.
    #[allow(clippy::cast_precision_loss)]
    let ms = t.timestamp_millis() as f64;
    ms / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn ms_to_seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Declares a set of metrics as one table: per line the field, its type, its
/// name (after the `dbjanitor_` prefix), optionally its unit, its help text,
/// and optionally a constructor. The struct gets a `registry` field and a
/// `registered()` constructor that creates, registers and stores every
/// metric in table order (the order the text lists them), so a metric cannot
/// be registered and not kept, or kept and not registered.
macro_rules! metric_table {
    (
        $(#[$doc:meta])*
        $vis:vis struct $name:ident {
            $($field:ident: $ty:ty => $key:literal $(in $unit:expr)?, $help:literal $(, new $ctor:expr)?;)*
        }
    ) => {
        $(#[$doc])*
        $vis struct $name {
            registry: Registry,
            $($field: $ty,)*
        }

        impl $name {
            fn registered() -> Self {
                let mut registry = Registry::with_prefix("dbjanitor");
                $(
                    let $field: $ty = metric_table!(@new $($ctor)?);
                    match metric_table!(@unit $($unit)?) {
                        Some(unit) => registry.register_with_unit($key, $help, unit, $field.clone()),
                        None => registry.register($key, $help, $field.clone()),
                    }
                )*
                Self { registry, $($field,)* }
            }
        }
    };
    (@new) => { Default::default() };
    (@new $ctor:expr) => { $ctor };
    (@unit) => { None::<Unit> };
    (@unit $unit:expr) => { Some($unit) };
}

metric_table! {
    /// The daemon's live metrics.
    pub(crate) struct DaemonMetrics {
        runs: Family<OutcomeLabels, Counter> => "runs", "Finished runs of a rule on a database, by outcome";
        detected: Family<PairLabels, Counter> => "rows_detected", "Rows found by detect queries (before any fix)";
        changed: Family<PairLabels, Counter> => "rows_changed", "Rows changed by committed fixes";
        duration: Family<PairLabels, Histogram> => "run_duration" in Unit::Seconds, "Wall time of one run, lock included",
            new Family::new_with_constructor((|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram);
        last_success: Family<PairLabels, FloatGauge> => "last_success_timestamp_seconds", "Start of the last run that ended clean, found or fixed (Unix time)";
        last_run: Family<PairLabels, FloatGauge> => "last_run_timestamp_seconds", "Start of the last finished run, whatever its outcome (Unix time)";
        next_run: Family<PairLabels, FloatGauge> => "next_run_timestamp_seconds", "Next scheduled tick (Unix time)";
        lock_skips: Family<PairLabels, Counter> => "lock_skips", "Runs skipped because another process held the rule's lock";
        overlap_skips: Family<PairLabels, Counter> => "overlap_skips", "Ticks skipped because this process was still running the previous run";
        running: Family<PairLabels, Gauge> => "running", "1 while a run of the pair is in progress in this process";
        waiting: Family<PairLabels, Gauge> => "waiting", "1 while a run of the pair waits for a free slot (daemon.jobs, daemon.jobs_per_database)";
        database_up: Family<DatabaseLabels, Gauge> => "database_up", "1 if the database answered the last health check";
        audit_errors: Counter => "audit_errors", "Audit (run history) reads and writes that failed or timed out";
    }
}

metric_table! {
    /// What `--metrics-file` writes: gauges only (see the module header).
    struct TextfileMetrics {
        last_run: Family<PairLabels, FloatGauge> => "last_run_timestamp_seconds", "Start of the last run of the rule on the database (Unix time)";
        duration: Family<PairLabels, FloatGauge> => "last_run_duration_seconds", "Wall time of the last run";
        detected: Family<PairLabels, Gauge> => "last_run_rows_detected", "Rows detect found in the last run";
        changed: Family<PairLabels, Gauge> => "last_run_rows_changed", "Rows the fix changed in the last run (would change, in a dry run)";
        outcome: Family<OutcomeLabels, Gauge> => "last_run_outcome", "1 for the outcome of the last run, 0 for the others";
        last_success: Family<PairLabels, FloatGauge> => "last_success_timestamp_seconds", "Start of the last real run that ended clean, found or fixed (Unix time)";
        run_time: FloatGauge => "textfile_run_timestamp_seconds", "When the dbjanitor run that wrote this file finished (Unix time)";
        run_exit: Gauge => "textfile_run_exit_code", "Exit status of the dbjanitor run that wrote this file";
        run_pairs: Gauge => "textfile_run_pairs", "(rule, database) pairs run by the dbjanitor run that wrote this file";
    }
}

impl std::fmt::Debug for DaemonMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonMetrics")
    }
}

impl DaemonMetrics {
    /// Registers every metric, with series at 0 for each pair in `pairs`.
    #[must_use]
    pub(crate) fn new(pairs: &[PairLabels], databases: &[String]) -> Self {
        let metrics = Self::registered();
        metrics.start_at_zero(pairs, databases);
        metrics
    }

    /// Creates the series of every pair and database at 0, so that `rate()`
    /// and absence alerts work before the first run.
    fn start_at_zero(&self, pairs: &[PairLabels], databases: &[String]) {
        for pair in pairs {
            for outcome in Outcome::ALL {
                drop(self.runs.get_or_create(&OutcomeLabels {
                    rule: pair.rule.clone(),
                    database: pair.database.clone(),
                    outcome: outcome.as_str().to_owned(),
                }));
            }
            drop(self.detected.get_or_create(pair));
            drop(self.changed.get_or_create(pair));
            drop(self.duration.get_or_create(pair));
            drop(self.lock_skips.get_or_create(pair));
            drop(self.overlap_skips.get_or_create(pair));
            drop(self.running.get_or_create(pair));
            drop(self.waiting.get_or_create(pair));
        }
        for database in databases {
            drop(self.database_up.get_or_create(&DatabaseLabels {
                database: database.clone(),
            }));
        }
    }

    /// Counts a finished run.
    pub(crate) fn observe(&self, record: &RunRecord) {
        let pair = PairLabels::of(&record.rule, &record.database);
        self.runs
            .get_or_create(&OutcomeLabels {
                rule: record.rule.clone(),
                database: record.database.clone(),
                outcome: record.outcome.as_str().to_owned(),
            })
            .inc();
        if let Some(detected) = record.detected {
            self.detected.get_or_create(&pair).inc_by(detected);
        }
        if record.outcome == Outcome::Fixed
            && let Some(changed) = record.changed
        {
            self.changed.get_or_create(&pair).inc_by(changed);
        }
        self.duration
            .get_or_create(&pair)
            .observe(ms_to_seconds(record.duration_ms));
        self.last_run
            .get_or_create(&pair)
            .set(seconds(record.started_at));
        if record.is_success() {
            self.last_success
                .get_or_create(&pair)
                .set(seconds(record.started_at));
        }
        if record.outcome == Outcome::Skipped {
            self.lock_skips.get_or_create(&pair).inc();
        }
    }

    /// Counts a tick skipped because the previous run was still going.
    pub(crate) fn overlap_skip(&self, pair: &PairLabels) {
        self.overlap_skips.get_or_create(pair).inc();
    }

    /// Marks a run of `pair` as started (`true`) or finished.
    pub(crate) fn set_running(&self, pair: &PairLabels, running: bool) {
        self.running.get_or_create(pair).set(i64::from(running));
    }

    /// Marks a run of `pair` as waiting for a free slot (`true`) or not.
    pub(crate) fn set_waiting(&self, pair: &PairLabels, waiting: bool) {
        self.waiting.get_or_create(pair).set(i64::from(waiting));
    }

    /// Publishes the next tick of `pair`.
    pub(crate) fn set_next_run(&self, pair: &PairLabels, at: DateTime<Utc>) {
        self.next_run.get_or_create(pair).set(seconds(at));
    }

    /// Publishes a database health check result.
    pub(crate) fn set_database_up(&self, database: &str, up: bool) {
        self.database_up
            .get_or_create(&DatabaseLabels {
                database: database.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts failed audit reads or writes.
    pub(crate) fn audit_error(&self, operations: u64) {
        self.audit_errors.inc_by(operations);
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What `--metrics-file` says about one pair: this run's record, or the last
/// run recorded in the audit table for pairs that did not run this time.
pub(crate) type PairState = LastRun;

impl From<&RunRecord> for LastRun {
    fn from(record: &RunRecord) -> Self {
        Self {
            outcome: record.outcome,
            started_at: record.started_at,
            duration_ms: record.duration_ms,
            detected: record.detected,
            changed: record.changed,
            last_success_at: record.is_success().then_some(record.started_at),
        }
    }
}

/// Renders the textfile of one `run`: per pair, the last real run's start,
/// duration, counts and outcome (one series per outcome, 1 for the actual
/// one), the last success; and the invocation's own time, exit status and
/// number of pairs run.
#[must_use]
pub(crate) fn textfile(
    pairs: &BTreeMap<PairLabels, PairState>,
    ran: usize,
    exit_code: u8,
    now: DateTime<Utc>,
) -> String {
    let TextfileMetrics {
        registry,
        last_run,
        duration,
        detected,
        changed,
        outcome,
        last_success,
        run_time,
        run_exit,
        run_pairs,
    } = TextfileMetrics::registered();
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (pair, state) in pairs {
        last_run.get_or_create(pair).set(seconds(state.started_at));
        duration
            .get_or_create(pair)
            .set(ms_to_seconds(state.duration_ms));
        if let Some(v) = state.detected {
            detected.get_or_create(pair).set(to_i64(v));
        }
        if let Some(v) = state.changed {
            changed.get_or_create(pair).set(to_i64(v));
        }
        for o in Outcome::ALL {
            outcome
                .get_or_create(&OutcomeLabels {
                    rule: pair.rule.clone(),
                    database: pair.database.clone(),
                    outcome: o.as_str().to_owned(),
                })
                .set(i64::from(o == state.outcome));
        }
        if let Some(at) = state.last_success_at {
            last_success.get_or_create(pair).set(seconds(at));
        }
    }
    run_time.set(seconds(now));
    run_exit.set(i64::from(exit_code));
    run_pairs.set(i64::try_from(ran).unwrap_or(i64::MAX));
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Writes `text` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, readable by others (node_exporter runs as its own user),
/// then renamed over `path`. A reader sees the old file or the new one, never
/// half of one.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".dbjanitor-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfile_has_one_series_per_outcome_and_gauges_only() {
        let mut pairs = BTreeMap::new();
        let mut record = RunRecord::new("r", "d", false, Utc::now());
        record.outcome = Outcome::Fixed;
        record.detected = Some(3);
        record.changed = Some(3);
        pairs.insert(PairLabels::of("r", "d"), PairState::from(&record));
        let text = textfile(&pairs, 1, 0, Utc::now());
        assert!(
            text.contains(
                "dbjanitor_last_run_outcome{rule=\"r\",database=\"d\",outcome=\"fixed\"} 1"
            )
        );
        assert!(text.contains(
            "dbjanitor_last_run_outcome{rule=\"r\",database=\"d\",outcome=\"failed\"} 0"
        ));
        assert!(!text.contains("counter") && !text.contains("# UNIT"));
    }

    /// Issue 13.3: the help text of both success gauges names exactly the
    /// outcomes `Outcome::is_success` counts.
    #[test]
    fn success_help_names_the_success_outcomes() {
        let names: Vec<&str> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_success())
            .map(Outcome::as_str)
            .collect();
        let (last, rest) = names.split_last().expect("some outcome is a success");
        let listed = format!("ended {} or {last} (Unix time).", rest.join(", "));
        let mut record = RunRecord::new("r", "d", false, Utc::now());
        record.outcome = Outcome::Clean;
        let daemon = DaemonMetrics::new(&[], &[]);
        daemon.observe(&record);
        let live = daemon.encode().expect("encode");
        let pairs = BTreeMap::from([(PairLabels::of("r", "d"), PairState::from(&record))]);
        let file = textfile(&pairs, 1, 0, Utc::now());
        for text in [live, file] {
            let help = text
                .lines()
                .find(|l| l.starts_with("# HELP dbjanitor_last_success_timestamp_seconds"))
                .expect("help line");
            assert!(help.ends_with(&listed), "{help} / {listed}");
        }
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("m.prom");
        write_atomically(&path, "a 1\n").expect("write");
        write_atomically(&path, "a 2\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
