//! Issue 8: nothing changes that a guard did not see, and every report tells
//! the truth. Each test runs the real binary against the real servers (some
//! through the fault-injection proxy) and checks the rows, the lock state on
//! the server, the outcome, reason and wording, and the exit status.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::faults::{FaultProxy, When};
use crate::util::{Case, Engine, TestDb};

/// Three stuck jobs (1–3), two done (4–5).
async fn jobs(engine: Engine) -> TestDb {
    TestDb::with_sql(
        engine,
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL); \
         INSERT INTO job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck'), (4, 'done'), (5, 'done');",
    )
    .await
}

async fn states(db: &TestDb) -> Vec<String> {
    db.rows("SELECT state FROM job ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

fn untouched() -> Vec<String> {
    ["stuck", "stuck", "stuck", "done", "done"]
        .map(str::to_owned)
        .to_vec()
}

fn fixed() -> Vec<String> {
    ["failed", "failed", "failed", "done", "done"]
        .map(str::to_owned)
        .to_vec()
}

const DETECT: &str = "SELECT id, state FROM job WHERE state = 'stuck' ORDER BY id";

fn text(record: &Value, field: &str) -> String {
    record[field].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------- 8.2 detect

/// A detect that calls a function that writes is refused by the server (it
/// runs read-only), in a real run and in a dry run: rows unchanged, `failed`
/// with reason `unsafe_sql`, exit 1.
async fn detect_calling_a_writing_function_is_refused(engine: Engine) {
    let db = jobs(engine).await;
    let function = match engine {
        Engine::MySql => {
            "CREATE FUNCTION zap() RETURNS INT MODIFIES SQL DATA \
             BEGIN DELETE FROM job WHERE state = 'done'; RETURN 1; END"
        }
        Engine::Postgres => {
            "CREATE FUNCTION zap() RETURNS int LANGUAGE plpgsql AS \
             $$ BEGIN DELETE FROM job WHERE state = 'done'; RETURN 1; END $$"
        }
        Engine::Sqlite => unreachable!("SQLite has no SQL-defined functions"),
    };
    db.exec(function).await;
    let rule = "name: jobs.stuck\ndatabase: main\n\
                detect: SELECT id FROM job WHERE state = 'stuck' AND zap() = 1\n\
                fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n";
    for args in [
        &["run", "--output", "json", "--dry-run"][..],
        &["run", "--output", "json"][..],
    ] {
        let out = Case::new().database("main", db.url()).rule(rule).run(args);
        out.assert_code(1);
        let r = out.record("jobs.stuck", "main");
        assert_eq!(r["outcome"], "failed", "{args:?}: {r}");
        assert_eq!(r["reason"], "unsafe_sql", "{args:?}: {r}");
        assert!(text(&r, "error").contains("detect tried to write"), "{r}");
        assert_eq!(
            states(&db).await,
            untouched(),
            "{args:?}: no row may change"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_calling_a_writing_function_is_refused_mysql() {
    detect_calling_a_writing_function_is_refused(Engine::MySql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_calling_a_writing_function_is_refused_postgres() {
    detect_calling_a_writing_function_is_refused(Engine::Postgres).await;
}

/// A second statement smuggled past the lexer cannot run: MariaDB's prepared
/// statement protocol refuses several statements, and SQLite's `query_only`
/// refuses the write. Called through the library, below the config checks.
#[tokio::test(flavor = "multi_thread")]
async fn smuggled_second_statement_in_detect_is_refused_by_the_server() {
    use dbjanitor::db::{
        ConnectSettings, DatabaseConfig, Dialect, MySqlSession, Session, SqliteSession,
    };
    use dbjanitor::secret::SecretUrl;
    let settings = ConnectSettings {
        timeout: Duration::from_secs(10),
        lock_wait: Duration::ZERO,
    };
    for (engine, dialect, sql) in [
        (
            Engine::MySql,
            Dialect::MySql,
            "SELECT id FROM job /*! ; DELETE FROM job */",
        ),
        (
            Engine::Sqlite,
            Dialect::Sqlite,
            "SELECT id FROM job; DELETE FROM job",
        ),
    ] {
        let db = jobs(engine).await;
        let config = DatabaseConfig {
            pragmas: Vec::new(),
            replicas: Vec::new(),
            name: "main".to_owned(),
            dialect,
            url: SecretUrl::new(db.url().to_owned()),
            lock: dbjanitor::db::LockKind::Auto,
        };
        let result = match engine {
            Engine::MySql => {
                let mut s = MySqlSession::connect(&config, &settings)
                    .await
                    .expect("connect");
                s.detect(sql, 5, None).await.map(|d| d.count)
            }
            _ => {
                let mut s = SqliteSession::connect(&config, &settings)
                    .await
                    .expect("connect");
                s.detect(sql, 5, None).await.map(|d| d.count)
            }
        };
        assert!(result.is_err(), "{engine:?}: {result:?}");
        assert_eq!(states(&db).await, untouched(), "{engine:?}");
    }
}

// ------------------------------------------------------------ 8.1 fix ends txn

/// Dynamic SQL hides a COMMIT from the lexer; the server check right after
/// the statement finds the transaction gone: `failed`, `transaction_ended`,
/// and the report says the rows may be committed (they are), never "rolled back".
#[tokio::test(flavor = "multi_thread")]
async fn fix_that_commits_through_dynamic_sql_is_reported_truthfully_mysql() {
    let db = jobs(Engine::MySql).await;
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: \"UPDATE job SET state = 'failed' WHERE state = 'stuck'; SET @c = CONCAT('COM', 'MIT'); PREPARE c FROM @c; EXECUTE c\"\n\
         max_rows: 5\n"
    );
    let out = Case::new().database("main", db.url()).rule(&rule).run(&[
        "run",
        "--dry-run",
        "--output",
        "json",
    ]);
    out.assert_code(1);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["reason"], "transaction_ended", "{r}");
    let error = text(&r, "error");
    assert!(error.contains("may be committed"), "{error}");
    assert!(!error.contains("rolled back"), "{error}");
    // The server did commit: the report was right to say so.
    assert_eq!(states(&db).await, fixed());
}

/// On SQLite the fix's transaction is watched with a marker savepoint; the
/// lexer refuses COMMIT, so this checks the statements that do run keep it.
#[tokio::test(flavor = "multi_thread")]
async fn fix_statements_keep_the_transaction_open_sqlite() {
    let db = jobs(Engine::Sqlite).await;
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: \"UPDATE job SET state = 'x' WHERE state = 'stuck'; UPDATE job SET state = 'failed' WHERE state = 'x'\"\n\
         max_rows: 3\n"
    );
    let out = Case::new().database("main", db.url()).rule(&rule).run(&[
        "run",
        "--dry-run",
        "--output",
        "json",
    ]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "would_fix", "{r}");
    assert_eq!(states(&db).await, untouched());
}

// --------------------------------------------------------------- 8.5 counts

/// Two UPDATEs over the same 3 rows change 3 rows (not 6, which would trip
/// `max_rows: 3`), and a trailing SELECT/sleep is not counted.
async fn counts_only_data_statements_once(engine: Engine) {
    let db = jobs(engine).await;
    let sleep = match engine {
        Engine::Postgres => "SELECT pg_sleep(0.1)",
        Engine::MySql => "SELECT SLEEP(0.1)",
        Engine::Sqlite => "SELECT 1",
    };
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: \"UPDATE job SET state = 'x' WHERE state = 'stuck'; UPDATE job SET state = 'failed' WHERE state = 'x'; {sleep}\"\n\
         max_rows: 3\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = dir.path().join("dbjanitor.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let out = Case::new().database("main", db.url()).rule(&rule).run(&[
        "run",
        "--output",
        "json",
        "--metrics-file",
        &metrics_arg,
    ]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "fixed", "{r}");
    assert_eq!(r["changed"], 3, "{r}");
    assert_eq!(states(&db).await, fixed());
    let prom = std::fs::read_to_string(&metrics).expect("metrics file");
    let line = prom
        .lines()
        .find(|l| l.starts_with("dbjanitor_last_run_rows_changed{"))
        .unwrap_or_else(|| panic!("no last_run_rows_changed series in:\n{prom}"));
    assert!(line.ends_with(" 3"), "{line}");
}

on_every_engine!(counts_only_data_statements_once);

// ------------------------------------------------------- 8.6 detect stops early

/// A detect over a million generated rows with `max_rows: 100` stops reading
/// at 101: `guard_tripped`, `detect_over_max_rows`, "more than 100",
/// `detected_is_lower_bound`, and it ends well inside a timeout that reading
/// every row would not meet.
async fn detect_stops_reading_past_the_guard(engine: Engine) {
    let db = jobs(engine).await;
    let detect = match engine {
        Engine::Postgres => "SELECT g FROM generate_series(1, 20000000) g",
        Engine::MySql => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) SELECT x FROM c"
        }
        Engine::Sqlite => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000000) SELECT x FROM c"
        }
    };
    let rule = format!(
        "name: big\ndatabase: main\ndetect: \"{detect}\"\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 100\ntimeout: 20s\n"
    );
    let started = Instant::now();
    let out = Case::new()
        .database("main", db.url())
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    let took = started.elapsed();
    out.assert_code(3);
    let r = out.record("big", "main");
    assert_eq!(r["outcome"], "guard_tripped", "{r}");
    assert_eq!(r["reason"], "detect_over_max_rows", "{r}");
    assert_eq!(r["detected"], 101, "{r}");
    assert_eq!(r["detected_is_lower_bound"], true, "{r}");
    assert!(text(&r, "message").contains("more than 100 rows"), "{r}");
    assert_eq!(states(&db).await, untouched());
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_stops_reading_past_the_guard_mysql() {
    detect_stops_reading_past_the_guard(Engine::MySql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_stops_reading_past_the_guard_sqlite() {
    detect_stops_reading_past_the_guard(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_stops_reading_past_the_guard_postgres() {
    detect_stops_reading_past_the_guard(Engine::Postgres).await;
}

// ------------------------------------------------------- 8.7 verify sample

/// After `verify_failed` the sample shows the rows that remained, labelled.
async fn verify_failed_sample_shows_the_remaining_rows(engine: Engine) {
    let db = jobs(engine).await;
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: UPDATE job SET state = 'failed' WHERE id = 1\nmax_rows: 5\n"
    );
    let out = Case::new()
        .database("main", db.url())
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["reason"], "verify_failed", "{r}");
    assert_eq!(r["remaining"], 2, "{r}");
    assert_eq!(r["sample"]["after_fix"], true, "{r}");
    let ids: Vec<&str> = r["sample"]["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row[0].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["2", "3"], "{r}");
    assert_eq!(states(&db).await, untouched());
    let text_out = Case::new()
        .database("main", db.url())
        .rule(&rule)
        .run(&["run"]);
    assert!(
        text_out
            .stdout
            .contains("rows left after the fix (2 shown)"),
        "{}",
        text_out.stdout
    );
}

on_every_engine!(verify_failed_sample_shows_the_remaining_rows);

// ------------------------------------------------- 16.8 / 16.9 partial work

/// An autocommit fix whose second statement fails reports what the first
/// committed, never "rolled back".
async fn autocommit_partial_failure_reports_what_committed(engine: Engine) {
    let db = jobs(engine).await;
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\nmode: autocommit\n\
         fix: \"UPDATE job SET state = 'failed' WHERE state = 'stuck'; UPDATE no_such_table SET x = 1\"\n\
         max_rows: 5\n"
    );
    let out = Case::new()
        .database("main", db.url())
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    out.assert_code(1);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["changed"], 3, "{r}");
    assert!(
        text(&r, "message").contains("1 of the fix's 2 statements finished and are committed"),
        "{r}"
    );
    assert!(!text(&r, "error").contains("rolled back"), "{r}");
    assert_eq!(states(&db).await, fixed());
}

/// Autocommit + batch: when the guard trips, the batches (and rows) already
/// committed, the tripping one included, are reported exactly.
async fn autocommit_batch_guard_reports_committed_batches(engine: Engine) {
    let db = TestDb::with_sql(
        engine,
        "CREATE TABLE ev (id integer PRIMARY KEY, old integer NOT NULL); \
         INSERT INTO ev VALUES (1,1),(2,1),(3,1),(4,1),(5,1),(6,1),(7,1),(8,0);",
    )
    .await;
    let fix = match engine {
        Engine::Postgres => {
            "DELETE FROM ev WHERE id IN (SELECT id FROM ev WHERE old = 1 ORDER BY id LIMIT 3)"
        }
        Engine::MySql => "DELETE FROM ev WHERE old = 1 ORDER BY id LIMIT 3",
        Engine::Sqlite => {
            "DELETE FROM ev WHERE id IN (SELECT id FROM ev WHERE old = 1 ORDER BY id LIMIT 3)"
        }
    };
    let rule = format!(
        "name: ev.old\ndatabase: main\ndetect: SELECT id FROM ev WHERE old = 1 LIMIT 5\n\
         mode: autocommit\nfix: \"{fix}\"\nmax_rows: 5\nbatch: {{pause: 0s}}\n"
    );
    let out = Case::new()
        .database("main", db.url())
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("ev.old", "main");
    assert_eq!(r["reason"], "fix_over_max_rows", "{r}");
    assert_eq!(r["changed"], 6, "{r}");
    assert_eq!(r["batches"], 2, "{r}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM ev").await, 2);
}

on_every_engine!(
    autocommit_partial_failure_reports_what_committed,
    autocommit_batch_guard_reports_committed_batches,
);

// --------------------------------------------- 8.3 / 8.4 through the proxy

/// The MySQL lock name of rule `name` in `db`, as dbjanitor builds it.
async fn mysql_lock(db: &TestDb, name: &str) -> String {
    dbjanitor::db::mysql_lock_name(&db.name, name)
}

/// Polls `check` every 500 ms until it returns true or `limit` passes.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// The bound ("within N s") the report states, in seconds.
fn stated_bound(error: &str) -> u64 {
    let tail = error
        .split("releases its locks within ")
        .nth(1)
        .unwrap_or_else(|| panic!("no bound in: {error}"));
    humantime::parse_duration(tail.split(';').next().unwrap_or(tail).trim())
        .unwrap_or_else(|e| panic!("bound in {error:?}: {e}"))
        .as_secs()
}

/// The network stalls right after the fix's UPDATE reached MariaDB: the run
/// fails on its timeout, says the server releases the lock within N s, and
/// the server really ends the session within N s: `IS_USED_LOCK` NULL, no
/// InnoDB transaction left, the row locks gone, the rows unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_connection_releases_lock_within_the_stated_bound_mysql() {
    let db = jobs(Engine::MySql).await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    // The UPDATE has run (its row locks are held) when the check after it stalls.
    proxy.stall_when(b"@@in_transaction", When::Before);
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\ntimeout: 2s\n"
    );
    let out = Case::new()
        .database("main", &url)
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    let gave_up = Instant::now();
    out.assert_code(1);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["reason"], "timeout", "{r}");
    let error = text(&r, "error");
    assert!(error.contains("the connection was dropped"), "{error}");
    let bound = stated_bound(&error);
    assert!((5..=60).contains(&bound), "{error}");
    let lock = mysql_lock(&db, "jobs.stuck").await;
    let lock_sql = format!("SELECT IS_USED_LOCK('{lock}') IS NULL");
    // The session holding the lock exists right after the run…
    assert_eq!(
        db.scalar(&lock_sql).await,
        0,
        "the stalled session still holds the lock"
    );
    // …and is gone within the stated bound (plus generous slack for this machine).
    let released = eventually(Duration::from_secs(bound + 30), async || {
        db.scalar(&lock_sql).await == 1
    })
    .await;
    let released = released.unwrap_or_else(|| panic!("lock still held {bound}+30 s later"));
    eprintln!(
        "stated bound {bound} s; lock free {:?} after the run ended",
        gave_up.elapsed()
    );
    assert!(
        gave_up.elapsed() <= Duration::from_secs(bound + 30),
        "released after {released:?}"
    );
    let open = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.db = '{}'",
            db.name
        ))
        .await;
    assert_eq!(open, 0, "no transaction of the vanished session is left");
    // The application's own UPDATE goes through: no row lock is left.
    db.exec("UPDATE job SET state = 'stuck' WHERE id = 1").await;
    assert_eq!(states(&db).await, untouched());
    drop(proxy);
}

/// MariaDB gets the COMMIT but its reply is lost: `failed`, reason
/// `commit_unknown`, wording that says the outcome is unknown (never "rolled
/// back"), exit 1 — and the rows really are committed.
#[tokio::test(flavor = "multi_thread")]
async fn lost_commit_reply_is_commit_unknown_mysql() {
    let db = jobs(Engine::MySql).await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    proxy.drop_replies_after(b"COMMIT");
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\ntimeout: 2s\n"
    );
    let out = Case::new()
        .database("main", &url)
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    out.assert_code(1);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["reason"], "commit_unknown", "{r}");
    let error = text(&r, "error");
    assert!(error.contains("is unknown"), "{error}");
    assert!(!error.contains("rolled back"), "{error}");
    assert_eq!(states(&db).await, fixed(), "the COMMIT reached the server");
    drop(proxy);
}

// ------------------------------------------------------------ 16.2, 16.6, 16.7

/// Runs the binary on a config written as is (for keys `Case` does not write).
fn run_with_config(config: &str, rule: &str, args: &[&str]) -> crate::util::RunOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("dbjanitor.yaml"), config).expect("config");
    std::fs::write(dir.path().join("rules/r.yaml"), rule).expect("rule");
    std::process::Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .arg("--config")
        .arg(dir.path().join("dbjanitor.yaml"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run dbjanitor")
        .into()
}

/// SQLite runs with `foreign_keys` off, as the sqlite3 CLI does, so a DELETE
/// does not cascade unseen; `pragmas: {foreign_keys: on}` restores an
/// application's setting (the cascaded rows are not counted in `changed`).
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_foreign_keys_follow_the_cli_unless_configured() {
    let schema = "CREATE TABLE parent (id integer PRIMARY KEY); \
         CREATE TABLE child (id integer PRIMARY KEY, parent_id integer REFERENCES parent(id) ON DELETE CASCADE); \
         INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 1), (2, 1), (3, 1);";
    let rule = "name: parent.gone\ndatabase: main\ndetect: SELECT id FROM parent WHERE id = 1\n\
                fix: DELETE FROM parent WHERE id = 1\nmax_rows: 1\n";
    for (pragmas, children_left) in [("", 3), ("    pragmas: {foreign_keys: \"on\"}\n", 0)] {
        let db = TestDb::with_sql(Engine::Sqlite, schema).await;
        let config = format!(
            "databases:\n  main:\n    url: \"{}\"\n{pragmas}rules: [rules]\n",
            db.url()
        );
        let out = run_with_config(&config, rule, &["run", "--output", "json"]);
        out.assert_code(0);
        let r = out.record("parent.gone", "main");
        assert_eq!(r["outcome"], "fixed", "{r}");
        assert_eq!(r["changed"], 1, "{r}");
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM child").await,
            children_left,
            "pragmas {pragmas:?}"
        );
    }
}

/// SQLite TEXT that is not valid UTF-8 shows as hex in the sample, never NULL.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_invalid_utf8_text_shows_as_hex() {
    let db = TestDb::with_sql(
        Engine::Sqlite,
        "CREATE TABLE t (id integer PRIMARY KEY, name text); \
         INSERT INTO t VALUES (1, CAST(X'FF00C3' AS TEXT));",
    )
    .await;
    let out = Case::new()
        .database("main", db.url())
        .rule("name: odd\ndatabase: main\ndetect: SELECT id, name FROM t\n")
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("odd", "main");
    assert_eq!(r["outcome"], "found", "{r}");
    assert_eq!(r["sample"]["rows"][0][1], "0xff00c3", "{r}");
}

/// A busy SQLite database makes batch, autocommit and transactional rules
/// alike `skipped` (lock_held), with nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_busy_database_skips_every_mode() {
    use sqlx::Executor;
    let db = jobs(Engine::Sqlite).await;
    let mut holder = db.sqlite().await;
    holder
        .execute("BEGIN IMMEDIATE")
        .await
        .expect("take the write lock");
    for extra in ["", "batch: {pause: 0s}\n", "mode: autocommit\n"] {
        let rule = format!(
            "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
             fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n{extra}"
        );
        let out = Case::new()
            .database("main", db.url())
            .rule(&rule)
            .run(&["run", "--output", "json"]);
        out.assert_code(0);
        let r = out.record("jobs.stuck", "main");
        assert_eq!(r["outcome"], "skipped", "{extra:?}: {r}");
        assert_eq!(r["reason"], "lock_held", "{extra:?}: {r}");
    }
    holder.execute("ROLLBACK").await.expect("release");
    assert_eq!(states(&db).await, untouched());
}

/// PostgreSQL gets the COMMIT but its reply is lost: the server is asked
/// afterwards (`pg_xact_status`) and confirms the commit: `fixed`, with a
/// message that says the reply was lost and the server confirmed.
#[tokio::test(flavor = "multi_thread")]
async fn lost_commit_reply_is_confirmed_by_the_server_postgres() {
    let db = jobs(Engine::Postgres).await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    proxy.drop_replies_after(b"COMMIT");
    let rule = format!(
        "name: jobs.stuck\ndatabase: main\ndetect: \"{DETECT}\"\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\ntimeout: 2s\n"
    );
    // Through the proxy the server's own port differs from the one dialled,
    // so `lock.kind: auto` would take a lease, whose own COMMIT would be the
    // one to lose its reply: the rule's COMMIT is the one under test here.
    let out = Case::new()
        .database_with("main", &url, "lock: { kind: advisory }")
        .rule(&rule)
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("jobs.stuck", "main");
    assert_eq!(r["outcome"], "fixed", "{r}");
    assert!(
        text(&r, "message").contains("confirmed afterwards that the transaction committed"),
        "{r}"
    );
    assert_eq!(states(&db).await, fixed());
    drop(proxy);
}
