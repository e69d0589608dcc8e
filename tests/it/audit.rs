//! The audit table and what stands on it: migrations from nothing and from
//! every earlier version on every engine, refusal of a newer schema, racing
//! first runs, one row per run, retention, `run --due` after an outage,
//! `--metrics-file`, and logs in `--log-dir`.

use chrono::{Duration, Timelike, Utc};
use dbjanitor::audit::SCHEMA_VERSION;
use dbjanitor::outcome::{Outcome, RunRecord};

use crate::audit_util::{STUCK, audit_rows, audited, jobs, parse_metrics, sample, store, truthy};
use crate::util::{Case, Engine, RunOutput, TestDb};

on_every_engine!(
    migrations_from_empty_and_every_earlier_version,
    a_newer_schema_is_refused,
    every_run_is_recorded,
    retention_prunes_old_rows_in_batches,
    due_after_a_three_hour_outage_runs_each_rule_once,
);

async fn migrations_from_empty_and_every_earlier_version(engine: Engine) {
    for start in 0..SCHEMA_VERSION {
        let app = jobs(engine).await;
        let audit = TestDb::new(engine).await;
        if start > 0 {
            // Build the older schema from the very migration files of that release.
            let built = store(&audit).migrate_to(start).await.expect("older schema");
            assert_eq!((built.from, built.to), (0, start));
            // A row written by that older version, with only the v1 columns.
            audit
                .exec(
                    "INSERT INTO dbjanitor_runs (rule, database_name, started_at, finished_at, duration_ms, \
                     outcome, dry_run, host, dbjanitor_version) VALUES ('old.rule', 'main', \
                     '2026-01-01 00:00:00', '2026-01-01 00:00:01', 1000, 'fixed', false, 'old-host', '0.0.1')",
                )
                .await;
        }
        let out = audited(&app, &audit).rule(STUCK).run(&["run"]);
        out.assert_code(0);
        assert_eq!(
            audit
                .scalar("SELECT MAX(version) FROM dbjanitor_schema_version")
                .await,
            i64::from(SCHEMA_VERSION),
            "{engine:?} from v{start}"
        );
        assert_eq!(
            audit
                .scalar("SELECT count(*) FROM dbjanitor_schema_version")
                .await,
            i64::from(SCHEMA_VERSION)
        );
        let rows = audit
            .rows("SELECT rule, outcome, notified FROM dbjanitor_runs ORDER BY id")
            .await;
        let expected_rows = if start > 0 { 2 } else { 1 };
        assert_eq!(
            rows.len(),
            expected_rows,
            "{engine:?} from v{start}: {rows:?}"
        );
        if start > 0 {
            assert_eq!(
                rows[0][0].as_deref(),
                Some("old.rule"),
                "the old row survives"
            );
            assert!(
                !truthy(rows[0][2].as_ref()),
                "old rows default to notified = false"
            );
        }
        let last = rows.last().expect("a row for this run");
        assert_eq!(last[0].as_deref(), Some("jobs.stuck"));
        assert_eq!(last[1].as_deref(), Some("fixed"));
        // A second run changes nothing in the schema.
        audited(&app, &audit)
            .rule(STUCK)
            .run(&["run"])
            .assert_code(0);
        assert_eq!(
            audit
                .scalar("SELECT count(*) FROM dbjanitor_schema_version")
                .await,
            i64::from(SCHEMA_VERSION)
        );
    }
}

async fn a_newer_schema_is_refused(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    store(&audit).migrate().await.expect("current schema");
    let newer = SCHEMA_VERSION + 7;
    audit
        .exec(&format!(
            "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) \
             VALUES ({newer}, 'from_the_future', '2027-01-01 00:00:00', false, '9.9.9')"
        ))
        .await;
    for args in [&["run"][..], &["run", "--due"], &["daemon"]] {
        let out = audited(&app, &audit).rule(STUCK).run(args);
        out.assert_code(2);
        assert!(
            out.stderr.contains(&format!("version {newer}"))
                && out
                    .stderr
                    .contains(&format!("knows up to version {SCHEMA_VERSION}")),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3,
        "nothing ran"
    );
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 0);
}

async fn every_run_is_recorded(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let case = audited(&app, &audit).rule(STUCK).rule(
        "name: jobs.report\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'done'\n",
    );
    case.run(&["run", "--dry-run"]).assert_code(0);
    case.run(&["run"]).assert_code(0);
    let rows = audit_rows(&audit).await;
    let expected = [
        ("jobs.stuck", "would_fix", "3", "3", true),
        ("jobs.report", "found", "1", "", true),
        ("jobs.stuck", "fixed", "3", "3", false),
        ("jobs.report", "found", "1", "", false),
    ];
    let got: Vec<(&str, &str, &str, &str, bool)> = rows
        .iter()
        .map(|(a, b, c, d, e)| (a.as_str(), b.as_str(), c.as_str(), d.as_str(), *e))
        .collect();
    assert_eq!(got, expected, "{engine:?}");
    let detail = audit
        .rows(
            "SELECT database_name, host, dbjanitor_version, notified, duration_ms, remaining, reason \
             FROM dbjanitor_runs WHERE rule = 'jobs.stuck' AND outcome = 'fixed'",
        )
        .await;
    let row = &detail[0];
    assert_eq!(row[0].as_deref(), Some("main"));
    assert!(row[1].as_deref().is_some_and(|h| !h.is_empty()), "host");
    assert_eq!(row[2].as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(!truthy(row[3].as_ref()));
    assert!(row[4].is_some());
    assert_eq!(row[5].as_deref(), Some("0"));
    assert_eq!(row[6], None);
    // Later than started_at, never before it.
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE finished_at < started_at")
            .await,
        0
    );
}

async fn retention_prunes_old_rows_in_batches(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    store(&audit).migrate().await.expect("schema");
    // 2,500 rows from 2020 (more than two batches of 1,000), and one from yesterday.
    let (old, recent) = match engine {
        Engine::Postgres => (
            "TIMESTAMPTZ '2020-01-01 00:00:00+00'".to_owned(),
            "now() - interval '1 day'".to_owned(),
        ),
        Engine::MySql => (
            "'2020-01-01 00:00:00'".to_owned(),
            "UTC_TIMESTAMP() - INTERVAL 1 DAY".to_owned(),
        ),
        Engine::Sqlite => (
            "'2020-01-01T00:00:00+00:00'".to_owned(),
            format!("'{}'", (Utc::now() - Duration::days(1)).to_rfc3339()),
        ),
    };
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
        UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let columns = "INSERT INTO dbjanitor_runs (rule, database_name, started_at, finished_at, duration_ms, \
        outcome, dry_run, host, dbjanitor_version)";
    let sql = format!(
        "{columns} SELECT 'old.rule', 'main', {old}, {old}, 1, 'clean', false, 'h', '0' \
         FROM {digits} a CROSS JOIN {digits} b CROSS JOIN {digits} c CROSS JOIN {digits} e \
         WHERE a.d * 1000 + b.d * 100 + c.d * 10 + e.d < 2500; \
         {columns} VALUES ('recent.rule', 'main', {recent}, {recent}, 1, 'clean', false, 'h', '0')"
    );
    audit.exec(&sql).await;
    assert_eq!(
        audit.scalar("SELECT count(*) FROM dbjanitor_runs").await,
        2501
    );
    audited(&app, &audit)
        .config("  keep: 30d")
        .rule(STUCK)
        .run(&["run"])
        .assert_code(0);
    let left = audit
        .rows("SELECT rule, count(*) FROM dbjanitor_runs GROUP BY rule ORDER BY rule")
        .await;
    assert_eq!(
        left,
        vec![
            vec![Some("jobs.stuck".to_owned()), Some("1".to_owned())],
            // The pair's latest run is kept whatever its age (`run --due` reads it).
            vec![Some("old.rule".to_owned()), Some("1".to_owned())],
            vec![Some("recent.rule".to_owned()), Some("1".to_owned())],
        ],
        "{engine:?}"
    );
}

/// A record of `rule` on `main` that started at `at`, as an earlier run left it.
fn earlier_run(rule: &str, at: chrono::DateTime<Utc>) -> RunRecord {
    let mut record = RunRecord::new(rule, "main", false, at);
    record.outcome = Outcome::Clean;
    record.detected = Some(0);
    record
}

/// The rules a JSON report has a record of, in its order.
fn rules_run(out: &RunOutput) -> Vec<String> {
    out.json()["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn due_after_a_three_hour_outage_runs_each_rule_once(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let now = Utc::now();
    // Schedules whose last tick is this hour's current minute and whose next
    // tick is an hour away: the second run below is "the same minute" however
    // slow the machine is.
    let minute = now.minute();
    let kolkata_minute = (minute + 30) % 60; // Asia/Kolkata is UTC+05:30
    let rule = |name: &str, schedule: &str| {
        format!(
            "name: {name}\ndatabase: main\n{schedule}detect: SELECT id FROM job WHERE state = 'done'\n"
        )
    };
    let case = audited(&app, &audit)
        .rule(&rule(
            "r.hourly",
            &format!("schedule: \"{minute} * * * *\"\n"),
        ))
        .rule(&rule(
            "r.kolkata",
            &format!("schedule: \"{kolkata_minute} * * * *\"\ntimezone: Asia/Kolkata\n"),
        ))
        .rule(&rule("r.every-minute", "schedule: \"* * * * *\"\n"))
        .rule(&rule(
            "r.never-ran",
            &format!("schedule: \"{minute} * * * *\"\n"),
        ))
        .rule(&rule(
            "r.just-ran",
            &format!("schedule: \"{minute} * * * *\"\n"),
        ))
        .rule(&rule("r.unscheduled", ""));
    let outage = now - Duration::hours(3);
    let history = store(&audit);
    history.migrate().await.expect("schema");
    history
        .record_runs(
            &[
                earlier_run("r.hourly", outage),
                earlier_run("r.kolkata", outage),
                earlier_run("r.every-minute", outage),
                earlier_run("r.just-ran", now),
                earlier_run("r.unscheduled", outage),
            ],
            &[false; 5],
        )
        .await
        .expect("seed the history");

    let first = case.run(&["run", "--due", "--output", "json"]);
    first.assert_code(0);
    let mut ran = rules_run(&first);
    ran.sort();
    assert_eq!(
        ran,
        ["r.every-minute", "r.hourly", "r.kolkata", "r.never-ran"],
        "{engine:?}"
    );
    // One new row per rule that ran: 180 missed minutes made one run, not 180.
    let rows = audit_rows(&audit).await;
    for name in &ran {
        assert_eq!(
            rows.iter().filter(|r| &r.0 == name).count(),
            if name == "r.never-ran" { 1 } else { 2 },
            "{name}"
        );
    }

    let first_minute = first.record("r.every-minute", "main")["started_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.minute())
        .expect("started_at");
    let second = case.run(&["run", "--due", "--output", "json"]);
    second.assert_code(0);
    let again = rules_run(&second);
    if Utc::now().minute() == first_minute {
        assert!(again.is_empty(), "the same minute runs nothing: {again:?}");
    } else {
        // The clock reached the next minute: only the every-minute rule ticked.
        assert!(again.iter().all(|r| r == "r.every-minute"), "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn due_without_audit_is_a_usage_error() {
    let app = jobs(Engine::Sqlite).await;
    let out = Case::new()
        .database("main", app.url())
        .rule(STUCK)
        .run(&["run", "--due"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("`run --due` needs the audit history") && out.stderr.contains("audit:"),
        "{}",
        out.stderr
    );
}

/// Two pods starting at once against an empty audit database: the migration
/// lock lets one create the schema, the others find it done.
#[tokio::test(flavor = "multi_thread")]
async fn racing_first_runs_migrate_once() {
    for engine in Engine::ALL {
        let app = jobs(engine).await;
        let audit = TestDb::new(engine).await;
        let case = audited(&app, &audit).rule(
            "name: jobs.count\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'done'\n",
        );
        let children: Vec<_> = (0..6).map(|_| case.spawn(&["run"])).collect();
        for child in children {
            RunOutput::from(child.wait_with_output().expect("wait")).assert_code(0);
        }
        assert_eq!(
            audit
                .scalar("SELECT count(*) FROM dbjanitor_schema_version")
                .await,
            i64::from(SCHEMA_VERSION),
            "{engine:?}"
        );
        assert_eq!(
            audit.scalar("SELECT count(*) FROM dbjanitor_runs").await,
            6,
            "{engine:?}"
        );
    }
}

/// The audit database is down: a plain run still fixes and prints its whole
/// report, and says the history has a gap (exit 1); `--due` runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_audit_database_never_loses_the_report() {
    let app = jobs(Engine::Postgres).await;
    let missing = format!("{}/dbj_no_such_database", crate::util::pg_server());
    let case = Case::new()
        .database("main", app.url())
        .database("janitor", &missing)
        .config("audit: { database: janitor }")
        .rule(STUCK);
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(1);
    assert_eq!(out.outcome("jobs.stuck", "main"), "fixed");
    let report = out.json();
    assert_eq!(report["exit_code"], 1);
    assert!(
        report["audit_error"]
            .as_str()
            .is_some_and(|e| e.contains("dbj_no_such_database")),
        "{}",
        out.stdout
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    let due = case.run(&["run", "--due"]);
    due.assert_code(1);
    assert!(
        due.stderr.contains("cannot tell which rules are due"),
        "{}",
        due.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_file_is_written_and_keeps_rules_that_did_not_run() {
    let app = jobs(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let case = audited(&app, &audit).rule(&format!("{STUCK}schedule: \"0 0 1 1 *\"\n"));
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("dbjanitor.prom");
    let path_text = path.display().to_string();
    case.run(&["run", "--due", "--metrics-file", &path_text])
        .assert_code(0);
    let first = parse_metrics(&std::fs::read_to_string(&path).expect("metrics file"));
    let pair = [("rule", "jobs.stuck"), ("database", "main")];
    let fixed = [
        ("rule", "jobs.stuck"),
        ("database", "main"),
        ("outcome", "fixed"),
    ];
    let failed = [
        ("rule", "jobs.stuck"),
        ("database", "main"),
        ("outcome", "failed"),
    ];
    assert_eq!(
        sample(&first, "dbjanitor_last_run_outcome", &fixed),
        Some(1.0)
    );
    assert_eq!(
        sample(&first, "dbjanitor_last_run_outcome", &failed),
        Some(0.0)
    );
    assert_eq!(
        sample(&first, "dbjanitor_last_run_rows_detected", &pair),
        Some(3.0)
    );
    assert_eq!(
        sample(&first, "dbjanitor_last_run_rows_changed", &pair),
        Some(3.0)
    );
    assert_eq!(
        sample(&first, "dbjanitor_textfile_run_exit_code", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&first, "dbjanitor_textfile_run_pairs", &[]),
        Some(1.0)
    );
    let started = sample(&first, "dbjanitor_last_run_timestamp_seconds", &pair).expect("time");
    assert_eq!(
        sample(&first, "dbjanitor_last_success_timestamp_seconds", &pair),
        Some(started)
    );
    // The next --due runs nothing (the yearly schedule has not ticked): the
    // file still describes the rule, from the audit table.
    let out = case.run(&["run", "--due", "--metrics-file", &path_text]);
    out.assert_code(0);
    let second = parse_metrics(&std::fs::read_to_string(&path).expect("metrics file"));
    assert_eq!(
        sample(&second, "dbjanitor_textfile_run_pairs", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&second, "dbjanitor_last_run_outcome", &fixed),
        Some(1.0)
    );
    assert_eq!(
        sample(&second, "dbjanitor_last_run_timestamp_seconds", &pair),
        Some(started)
    );
    // Only the file itself is left in the folder: the temporary file was renamed.
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_dir_gets_every_line_as_json() {
    let app = jobs(Engine::Sqlite).await;
    let logs = tempfile::tempdir().expect("dir");
    let logs_text = logs.path().join("nested").display().to_string();
    let out = Case::new().database("main", app.url()).rule(STUCK).run(&[
        "--log-format",
        "json",
        "--log-dir",
        &logs_text,
        "run",
    ]);
    out.assert_code(0);
    let files: Vec<_> = std::fs::read_dir(&logs_text)
        .expect("log dir created")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    assert!(name.starts_with("dbjanitor.log."), "{name}");
    let text = std::fs::read_to_string(&files[0]).expect("log file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The last line of the run is in the file: nothing was lost at exit.
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "rule finished" && l["outcome"] == "fixed"),
        "{text}"
    );
    // The same lines went to stderr too.
    assert_eq!(out.stderr.lines().count(), lines.len());
    let bad = Case::new().database("main", app.url()).rule(STUCK).run(&[
        "--log-dir",
        "/proc/no/such/dir",
        "run",
    ]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("--log-dir"), "{}", bad.stderr);
}

/// A MySQL migration interrupted with its version row dirty and the schema
/// half way (some of its columns there, some not): dbjanitor refuses to guess
/// and says what to check. (A step the schema shows completed or not started
/// is resolved on its own: see `history::an_interrupted_mysql_migration_recovers_from_the_schema`.)
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_mysql_migration_is_refused_with_instructions() {
    let app = jobs(Engine::MySql).await;
    let audit = TestDb::new(Engine::MySql).await;
    // Migration 2 (`notified`) adds three columns: one of them is there.
    store(&audit).migrate_to(1).await.expect("schema");
    audit
        .exec(
            "ALTER TABLE dbjanitor_runs ADD COLUMN notified BOOLEAN NOT NULL DEFAULT FALSE; \
             INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) \
             VALUES (2, 'notified', NOW(6), TRUE, 'killed')",
        )
        .await;
    let out = audited(&app, &audit).rule(STUCK).run(&["run"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("audit schema migration 2 (notified)")
            && out.stderr.contains("interrupted")
            && out.stderr.contains("SET dirty = FALSE"),
        "{}",
        out.stderr
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3,
        "nothing ran"
    );
}
