//! Every outcome of design §3 on every engine, with the rows checked after
//! each run: what the fix must change changed exactly, and nothing else did.

use serde_json::Value;

use crate::util::{Case, Engine, RunOutput, TestDb};

/// Six jobs: 1–3 are "stuck" (the rot), 4–5 done, 6 running.
fn schema(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => {
            "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL, owner varchar(32), \
             updated_at timestamp NOT NULL, cost numeric(10,2), payload jsonb, raw bytea);"
        }
        Engine::MySql => {
            "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL, owner varchar(32), \
             updated_at datetime NOT NULL, cost decimal(10,2), payload json, raw varbinary(16));"
        }
        Engine::Sqlite => {
            "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL, owner varchar(32), \
             updated_at datetime NOT NULL, cost numeric(10,2), payload text, raw blob);"
        }
    }
}

const SEED: &str = "INSERT INTO job (id, state, owner, updated_at, cost) VALUES \
    (1, 'stuck', 'w1', '2026-01-01 10:00:00', 1.50), \
    (2, 'stuck', 'w2', '2026-01-01 10:00:00', 2.50), \
    (3, 'stuck', 'w3', '2026-01-01 10:00:00', NULL), \
    (4, 'done', 'w1', '2026-01-01 10:00:00', 4.00), \
    (5, 'done', 'w2', '2026-01-01 10:00:00', 5.00), \
    (6, 'running', 'w3', '2026-01-01 10:00:00', 6.00);";

async fn seeded(engine: Engine) -> TestDb {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    db.exec(SEED).await;
    db
}

const DETECT: &str = "SELECT id, state, owner FROM job WHERE state = 'stuck' ORDER BY id";
const FIX: &str = "UPDATE job SET state = 'failed' WHERE state = 'stuck'";

/// A rule YAML with the standard detect/fix and extra lines.
fn rule(name: &str, fix: Option<&str>, extra: &str) -> String {
    let mut yaml = format!("name: {name}\ndatabase: main\ndetect: \"{DETECT}\"\n");
    if let Some(fix) = fix {
        yaml.push_str(&format!("fix: \"{fix}\"\n"));
    }
    yaml.push_str(extra);
    yaml
}

fn case(db: &TestDb) -> Case {
    Case::new().database("main", db.url())
}

fn num(record: &Value, field: &str) -> Option<u64> {
    record[field].as_u64()
}

async fn states(db: &TestDb) -> Vec<(String, String)> {
    db.rows("SELECT id, state FROM job ORDER BY id")
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn expected_states(fixed: bool) -> Vec<(String, String)> {
    let stuck = if fixed { "failed" } else { "stuck" };
    [
        (1, stuck),
        (2, stuck),
        (3, stuck),
        (4, "done"),
        (5, "done"),
        (6, "running"),
    ]
    .iter()
    .map(|(id, s)| (id.to_string(), (*s).to_owned()))
    .collect()
}

on_every_engine!(
    clean,
    found_changes_nothing,
    fixed_changes_exactly_the_rotten_rows,
    dry_run_leaves_data_identical,
    skipped_when_the_lock_is_held,
    guard_on_detect_runs_no_fix,
    guard_on_fix_rolls_back,
    verify_failure_rolls_back,
    failed_rule_does_not_stop_the_others,
    statement_timeout_fails_and_rolls_back,
    autocommit_ddl_is_not_run_in_dry_run,
    batches_until_nothing_changes,
    batch_size_grows_towards_the_target,
    sample_renders_any_column_type,
);

async fn clean(engine: Engine) {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    db.exec("INSERT INTO job (id, state, owner, updated_at) VALUES (4, 'done', 'w1', '2026-01-01 10:00:00')")
        .await;
    let out = case(&db)
        .rule(&rule("jobs.stuck", Some(FIX), "max_rows: 5\n"))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "clean");
    assert_eq!(num(&r, "detected"), Some(0));
    assert_eq!(r["changed"], Value::Null);
    assert_eq!(out.json()["exit_code"], 0);
}

async fn found_changes_nothing(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    let out = case(&db)
        .rule(&rule("jobs.stuck", None, ""))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "found");
    assert_eq!(num(&r, "detected"), Some(3));
    assert_eq!(db.table("job").await, before);
}

async fn fixed_changes_exactly_the_rotten_rows(engine: Engine) {
    let db = seeded(engine).await;
    let untouched = db.rows("SELECT * FROM job WHERE id > 3 ORDER BY id").await;
    let case = case(&db).rule(&rule("jobs.stuck", Some(FIX), "max_rows: 3\n"));
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "fixed", "{r}");
    assert_eq!(
        (
            num(&r, "detected"),
            num(&r, "changed"),
            num(&r, "remaining")
        ),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(r["dry_run"], false);
    assert_eq!(states(&db).await, expected_states(true));
    assert_eq!(
        db.rows("SELECT * FROM job WHERE id > 3 ORDER BY id").await,
        untouched
    );
    let again = case.run(&["run", "--output", "json"]);
    again.assert_code(0);
    assert_eq!(again.outcome("jobs.stuck", "main"), "clean");
}

async fn dry_run_leaves_data_identical(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    let out = case(&db)
        .rule(&rule("jobs.stuck", Some(FIX), "max_rows: 3\n"))
        .run(&["run", "--dry-run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "would_fix");
    assert_eq!(r["dry_run"], true);
    assert_eq!(
        (
            num(&r, "detected"),
            num(&r, "changed"),
            num(&r, "remaining")
        ),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(db.table("job").await, before);
    assert_eq!(out.json()["dry_run"], true);
}

async fn skipped_when_the_lock_is_held(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    let case = case(&db).rule(&rule(
        "jobs.stuck",
        Some(FIX),
        "max_rows: 3\nlock: { name: jobs }\n",
    ));
    // Hold the rule's lock from another connection, as a second dbjanitor would.
    let out = match engine {
        Engine::Postgres => {
            let mut holder = db.pg().await;
            let key = dbjanitor::db::postgres_lock_key("jobs");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_lock({key})"
            )))
            .execute(&mut holder)
            .await
            .expect("lock");
            case.run(&["run", "--output", "json"])
        }
        Engine::MySql => {
            let mut holder = db.mysql().await;
            let name = dbjanitor::db::mysql_lock_name(&db.name, "jobs");
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT GET_LOCK('{name}', 0)")))
                .execute(&mut holder)
                .await
                .expect("lock");
            case.run(&["run", "--output", "json"])
        }
        Engine::Sqlite => {
            let mut holder = db.sqlite().await;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut holder)
                .await
                .expect("lock");
            case.run(&["run", "--output", "json"])
        }
    };
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "skipped");
    assert_eq!(r["reason"], "lock_held");
    assert_eq!(r["detected"], Value::Null);
    assert_eq!(db.table("job").await, before);
}

async fn guard_on_detect_runs_no_fix(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    let out = case(&db)
        .rule(&rule("jobs.stuck", Some(FIX), "max_rows: 2\n"))
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "guard_tripped");
    assert_eq!(r["reason"], "detect_over_max_rows");
    assert_eq!(num(&r, "detected"), Some(3));
    assert_eq!(r["changed"], Value::Null, "the fix must not have run");
    assert_eq!(db.table("job").await, before);
}

async fn guard_on_fix_rolls_back(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    // The fix is broader than detect: it would change all six rows.
    let out = case(&db)
        .rule(&rule(
            "jobs.stuck",
            Some("UPDATE job SET state = 'failed'"),
            "max_rows: 3\n",
        ))
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "guard_tripped");
    assert_eq!(r["reason"], "fix_over_max_rows");
    assert_eq!(num(&r, "changed"), Some(6));
    assert_eq!(
        db.table("job").await,
        before,
        "the over-broad fix must be rolled back"
    );
}

async fn verify_failure_rolls_back(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    // This "fix" changes the rows but not what detect looks for.
    let out = case(&db)
        .rule(&rule(
            "jobs.stuck",
            Some("UPDATE job SET owner = 'janitor' WHERE state = 'stuck'"),
            "max_rows: 3\n",
        ))
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "guard_tripped");
    assert_eq!(r["reason"], "verify_failed");
    assert_eq!(
        (num(&r, "changed"), num(&r, "remaining")),
        (Some(3), Some(3))
    );
    assert_eq!(
        db.table("job").await,
        before,
        "owner changes must be rolled back"
    );
}

async fn failed_rule_does_not_stop_the_others(engine: Engine) {
    let db = seeded(engine).await;
    let out = case(&db)
        .rule(&rule(
            "jobs.broken",
            Some("UPDATE job SET no_such_column = 1 WHERE state = 'stuck'"),
            "max_rows: 3\n",
        ))
        .rule(&rule("jobs.stuck", Some(FIX), "max_rows: 3\n"))
        .run(&["run", "--output", "json", "--jobs", "1"]);
    out.assert_code(1);
    let broken = out.record("jobs.broken", "main");
    assert_eq!(broken["outcome"], "failed");
    assert_eq!(broken["reason"], "sql_error");
    assert!(
        broken["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_column"),
        "{broken}"
    );
    assert_eq!(out.outcome("jobs.stuck", "main"), "fixed");
    assert_eq!(states(&db).await, expected_states(true));
    assert_eq!(out.json()["exit_code"], 1);
}

async fn statement_timeout_fails_and_rolls_back(engine: Engine) {
    let db = seeded(engine).await;
    let before = db.table("job").await;
    let slow_fix = match engine {
        Engine::Postgres => {
            "    UPDATE job SET state = 'failed' WHERE state = 'stuck' AND (SELECT 1 FROM pg_sleep(5)) = 1"
        }
        Engine::MySql => {
            "    UPDATE job SET state = 'failed' WHERE state = 'stuck' AND SLEEP(5) = 0"
        }
        Engine::Sqlite => {
            "    UPDATE job SET state = 'failed' WHERE state = 'stuck' AND (WITH RECURSIVE c(x) AS \
             (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) SELECT count(*) FROM c) > 0"
        }
    };
    let yaml = format!(
        "name: jobs.slow\ndatabase: main\ndetect: \"{DETECT}\"\nfix: |\n{slow_fix}\nmax_rows: 3\ntimeout: 1s\n"
    );
    let out = case(&db).rule(&yaml).run(&["run", "--output", "json"]);
    out.assert_code(1);
    let r = out.record("jobs.slow", "main");
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["reason"], "timeout", "{r}");
    assert_eq!(db.table("job").await, before);
}

async fn autocommit_ddl_is_not_run_in_dry_run(engine: Engine) {
    let db = seeded(engine).await;
    let missing_index = match engine {
        Engine::Postgres => {
            "SELECT 'job_state_idx' AS missing WHERE NOT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'job' AND indexname = 'job_state_idx')"
        }
        Engine::MySql => {
            "SELECT 'job_state_idx' AS missing FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'job' AND index_name = 'job_state_idx')"
        }
        Engine::Sqlite => {
            "SELECT 'job_state_idx' AS missing WHERE NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'job_state_idx')"
        }
    };
    let yaml = format!(
        "name: jobs.index\ndatabase: main\nmode: autocommit\nmax_rows: 1\ndetect: \"{missing_index}\"\nfix: CREATE INDEX job_state_idx ON job (state)\n"
    );
    let case = case(&db).rule(&yaml);
    let dry = case.run(&["run", "--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let r = dry.record("jobs.index", "main");
    assert_eq!(r["outcome"], "would_fix");
    assert_eq!(r["reason"], "autocommit_dry_run");
    assert_eq!(r["changed"], Value::Null);
    assert_eq!(
        db.rows(missing_index).await.len(),
        1,
        "dry-run must not create the index"
    );
    let real = case.run(&["run", "--output", "json"]);
    real.assert_code(0);
    assert_eq!(real.outcome("jobs.index", "main"), "fixed");
    assert!(
        db.rows(missing_index).await.is_empty(),
        "the index must exist now"
    );
}

async fn batches_until_nothing_changes(engine: Engine) {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    let values: Vec<String> = (1..=25)
        .map(|i| format!("({i}, 'old', 'w', '2020-01-01 00:00:00')"))
        .chain(std::iter::once(
            "(100, 'new', 'w', '2026-01-01 00:00:00')".to_owned(),
        ))
        .collect();
    db.exec(&format!(
        "INSERT INTO job (id, state, owner, updated_at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let fix = "DELETE FROM job WHERE id IN (SELECT id FROM (SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 10) AS batch)";
    let rule = |extra: &str| {
        format!(
            "name: jobs.retention\ndatabase: main\ndetect: \"SELECT id FROM job WHERE state = 'old'\"\nfix: \"{fix}\"\nmax_rows: 100\nbatch: {{ pause: 10ms{extra} }}\n"
        )
    };
    // Dry run: the first batch only, rolled back.
    let dry = case(&db)
        .rule(&rule(""))
        .run(&["run", "--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let r = dry.record("jobs.retention", "main");
    assert_eq!(r["outcome"], "would_fix");
    assert_eq!(
        (num(&r, "detected"), num(&r, "changed"), num(&r, "batches")),
        (Some(25), Some(10), Some(1))
    );
    assert_eq!(db.scalar("SELECT count(*) FROM job").await, 26);
    // max_batches bounds one run; the next run continues.
    let capped = case(&db)
        .rule(&rule(", max_batches: 2"))
        .run(&["run", "--output", "json"]);
    capped.assert_code(0);
    let r = capped.record("jobs.retention", "main");
    assert_eq!(r["outcome"], "fixed");
    assert_eq!(r["reason"], "max_batches_reached");
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches")),
        (Some(20), Some(2))
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'old'")
            .await,
        5
    );
    // Uncapped: 5 rows, then an empty batch ends it, then verify.
    let full = case(&db).rule(&rule("")).run(&["run", "--output", "json"]);
    full.assert_code(0);
    let r = full.record("jobs.retention", "main");
    assert_eq!(r["outcome"], "fixed");
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches"), num(&r, "remaining")),
        (Some(5), Some(2), Some(0))
    );
    assert_eq!(
        db.rows("SELECT id FROM job").await,
        vec![vec![Some("100".to_owned())]]
    );
}

/// `batch.size` with `{batch_size}`: a target far above what these tiny
/// batches take makes every full batch double the next, up to `max_size`.
async fn batch_size_grows_towards_the_target(engine: Engine) {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    let values: Vec<String> = (1..=60)
        .map(|i| format!("({i}, 'old', 'w', '2020-01-01 00:00:00')"))
        .chain(std::iter::once(
            "(100, 'new', 'w', '2026-01-01 00:00:00')".to_owned(),
        ))
        .collect();
    db.exec(&format!(
        "INSERT INTO job (id, state, owner, updated_at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let fix = "DELETE FROM job WHERE id IN (SELECT id FROM (SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT {batch_size}) AS batch)";
    let rule = format!(
        "name: jobs.retention\ndatabase: main\ndetect: \"SELECT id FROM job WHERE state = 'old'\"\nfix: \"{fix}\"\nmax_rows: 100\nbatch: {{ pause: 0s, size: 2, min_size: 1, max_size: 16, target: 30s }}\n"
    );
    // Dry run: the first batch has the initial size, rolled back.
    let dry = case(&db)
        .rule(&rule)
        .run(&["run", "--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let r = dry.record("jobs.retention", "main");
    assert_eq!(r["outcome"], "would_fix");
    assert_eq!((num(&r, "changed"), num(&r, "batches")), (Some(2), Some(1)));
    assert_eq!(db.scalar("SELECT count(*) FROM job").await, 61);
    let run = case(&db)
        .rule(&rule)
        .env("RUST_LOG", "dbjanitor=debug")
        .run(&["run", "--output", "json"]);
    run.assert_code(0);
    let r = run.record("jobs.retention", "main");
    assert_eq!(r["outcome"], "fixed");
    // 2 + 4 + 8 + 16 + 16 = 46, then 14 (a short batch), then 0.
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches"), num(&r, "remaining")),
        (Some(60), Some(7), Some(0))
    );
    let sizes: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| l.split("batch_size=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(
        sizes,
        ["2", "4", "8", "16", "16", "16", "16"],
        "{}",
        run.stderr
    );
    assert_eq!(
        db.rows("SELECT id FROM job").await,
        vec![vec![Some("100".to_owned())]]
    );
}

async fn sample_renders_any_column_type(engine: Engine) {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    let (payload, raw) = match engine {
        Engine::Postgres => ("'{\"k\": [1, 2]}'::jsonb", "'\\x00ff10'::bytea"),
        Engine::MySql => ("'{\"k\": [1, 2]}'", "UNHEX('00FF10')"),
        Engine::Sqlite => ("'{\"k\": [1, 2]}'", "X'00FF10'"),
    };
    for id in 1..=8 {
        db.exec(&format!(
            "INSERT INTO job (id, state, owner, updated_at, cost, payload, raw) VALUES ({id}, 'stuck', NULL, '2026-03-04 05:06:07', 12.50, {payload}, {raw})"
        ))
        .await;
    }
    let yaml = "name: jobs.types\ndatabase: main\ndetect: SELECT id, owner, updated_at, cost, payload, raw FROM job ORDER BY id\n";
    let out = case(&db).rule(yaml).run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.types", "main");
    assert_eq!(num(&r, "detected"), Some(8));
    let rows = r["sample"]["rows"].as_array().expect("sample rows");
    assert_eq!(rows.len(), 5, "at most 5 sample rows");
    let first = &rows[0];
    assert_eq!(first[0], "1");
    assert_eq!(first[1], Value::Null);
    assert!(
        first[2]
            .as_str()
            .unwrap_or_default()
            .starts_with("2026-03-04 05:06:07"),
        "{first}"
    );
    // SQLite stores NUMERIC 12.50 as the REAL 12.5; the servers keep the declared scale.
    let cost = if engine == Engine::Sqlite {
        "12.5"
    } else {
        "12.50"
    };
    assert_eq!(first[3], cost);
    assert!(
        first[4].as_str().unwrap_or_default().contains("\"k\""),
        "{first}"
    );
    let raw_text = first[5].as_str().unwrap_or_default();
    assert!(
        raw_text == "0x00ff10" || raw_text == "\\x00ff10",
        "binary renders as hex: {raw_text}"
    );
    assert_eq!(r["sample"]["columns"][3], "cost");
}

/// Runs `case` while another connection to the SQLite database `db` holds
/// the transaction `statements` opened, then rolls that back.
async fn run_while_sqlite_holds(db: &TestDb, statements: &[&'static str], case: Case) -> RunOutput {
    let mut holder = db.sqlite().await;
    for &sql in statements {
        sqlx::query(sql).execute(&mut holder).await.expect(sql);
    }
    let out = case.run(&["run", "--output", "json"]);
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    out
}

/// A report-only rule on SQLite takes no write lock: it reads while another
/// connection holds the database write lock (`BEGIN IMMEDIATE`), where a rule
/// with a fix in the same run is `skipped`, and nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_report_only_reads_beside_a_writer() {
    let db = seeded(Engine::Sqlite).await;
    let before = db.table("job").await;
    let case = case(&db).rule(&rule("jobs.report", None, "")).rule(&rule(
        "jobs.stuck",
        Some(FIX),
        "max_rows: 3\n",
    ));
    let out = run_while_sqlite_holds(&db, &["BEGIN IMMEDIATE"], case).await;
    out.assert_code(0);
    let report = out.record("jobs.report", "main");
    assert_eq!(report["outcome"], "found", "{report}");
    assert_eq!(num(&report, "detected"), Some(3));
    let fix = out.record("jobs.stuck", "main");
    assert_eq!(fix["outcome"], "skipped", "{fix}");
    assert_eq!(fix["reason"], "lock_held");
    assert_eq!(db.table("job").await, before);
}

/// In rollback-journal mode a writer that is committing (`BEGIN EXCLUSIVE`)
/// shuts readers out: the report-only rule is then `skipped` with
/// `lock_held`, as a rule with a fix is, not `failed`.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_report_only_is_skipped_while_a_writer_excludes_readers() {
    let db = seeded(Engine::Sqlite).await;
    let before = db.table("job").await;
    assert_eq!(
        db.rows("PRAGMA journal_mode").await,
        vec![vec![Some("delete".to_owned())]],
        "the test database is in rollback-journal mode"
    );
    let case = case(&db).rule(&rule("jobs.report", None, ""));
    let out = run_while_sqlite_holds(&db, &["BEGIN EXCLUSIVE"], case).await;
    out.assert_code(0);
    let report = out.record("jobs.report", "main");
    assert_eq!(report["outcome"], "skipped", "{report}");
    assert_eq!(report["reason"], "lock_held");
    assert_eq!(report["detected"], Value::Null);
    assert_eq!(db.table("job").await, before);
}

/// A fix whose COMMIT SQLite refuses (another connection is still reading,
/// rollback-journal mode, `lock.wait` 0) is `failed` with the refusal and
/// "rolls back", not a COMMIT of unknown outcome, and nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_commit_refused_while_a_reader_holds_the_file_is_rolled_back() {
    let db = seeded(Engine::Sqlite).await;
    let before = db.table("job").await;
    let case = case(&db).rule(&rule("jobs.stuck", Some(FIX), "max_rows: 3\n"));
    let out = run_while_sqlite_holds(&db, &["BEGIN", "SELECT count(*) FROM job"], case).await;
    out.assert_code(1);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["reason"], "sql_error", "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("SQLite refused the COMMIT"), "{error}");
    assert!(error.contains("rolls back the open transaction"), "{error}");
    assert_eq!(db.table("job").await, before);
}
