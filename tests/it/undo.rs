//! Issue 14 (undo): every run has one id, the same in the text and JSON
//! reports, the log lines, the audit row, the webhook JSON, the Slack message
//! and the mail; a rule with `backup:` keeps before/after images of the rows
//! its fix changed, `changes` shows them and `undo` restores them byte for
//! byte, on every engine.

use std::path::PathBuf;

use serde_json::Value;

use crate::audit_util::{STUCK, audited, jobs};
use crate::sinks::{HttpSink, SmtpSink};
use crate::util::{Engine, TestDb};

on_every_engine!(the_run_id_is_the_same_in_report_audit_and_notifications);

/// Notifiers for the JSON webhook, the Slack webhook and the mail.
fn notifiers(http: &HttpSink, smtp: &SmtpSink) -> String {
    let fast = "timeout: 2s, retries: 1, backoff: 50ms, deadline: 10s";
    format!(
        "notifiers:\n  ops:\n    webhook: {{ url: \"{}\", format: json, {fast} }}\n  \
         chat:\n    webhook: {{ url: \"{}\", format: slack, {fast} }}\n  \
         dba:\n    email: {{ smtp: \"{}\", tls: none, from: janitor@example.org, to: [dba@example.org], {fast} }}\n",
        http.url("/json"),
        http.url("/slack"),
        smtp.url()
    )
}

/// The run ids in the audit table, oldest first (NULL as "").
async fn audit_run_ids(audit: &TestDb) -> Vec<String> {
    audit
        .rows("SELECT run_id FROM dbjanitor_runs ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

async fn the_run_id_is_the_same_in_report_audit_and_notifications(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let http = HttpSink::ok().await;
    let smtp = SmtpSink::plain();
    let rule = format!("{STUCK}notify: [ops, chat, dba]\n");
    let case = audited(&app, &audit)
        .rule(&rule)
        .config(&notifiers(&http, &smtp));

    // JSON report.
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    let record = out.record("jobs.stuck", "main");
    assert_eq!(record["outcome"], "fixed");
    let id = record["run_id"]
        .as_str()
        .expect("run_id in the JSON report");
    let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
    assert_eq!(parsed.get_version_num(), 7, "{id}");
    assert_eq!(audit_run_ids(&audit).await, [id.to_owned()], "{engine:?}");
    // The run's log lines carry it too.
    assert!(
        out.stderr.contains(&format!("run_id={id}")),
        "{}",
        out.stderr
    );

    let requests = http.requests().await;
    let json_hook = requests
        .iter()
        .find(|r| r.path == "/json")
        .expect("json hook");
    assert_eq!(json_hook.json["runs"][0]["run_id"], Value::from(id));
    let slack = requests
        .iter()
        .find(|r| r.path == "/slack")
        .expect("slack hook");
    let slack_text = slack.json["attachments"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        slack_text.contains(&format!("run id: {id}")),
        "{slack_text}"
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].body().contains(&format!("run id:    {id}")),
        "{}",
        mails[0].body()
    );

    // Text report (a dry run: another run, another id).
    let out = case.run(&["run", "--dry-run"]);
    out.assert_code(0);
    let ids = audit_run_ids(&audit).await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[1], id);
    assert!(ids[0] < ids[1], "ids sort in start order: {ids:?}");
    assert!(out.stdout.contains("RUN ID"), "{}", out.stdout);
    assert!(out.stdout.contains(&ids[1]), "{}", out.stdout);
    assert!(!out.stdout.contains(id), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// Issue 14, steps 2–4: images, `changes`, `undo`.
// ---------------------------------------------------------------------------

use crate::util::Case;

/// One test per engine (PostgreSQL, MariaDB and SQLite).
macro_rules! with_images {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::util::Engine;
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() { super::$name(Engine::Postgres).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn mysql() { super::$name(Engine::MySql).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() { super::$name(Engine::Sqlite).await }
        }
    )*};
}

with_images!(
    update_fix_then_undo_restores_every_byte,
    delete_fix_then_undo_restores_every_byte,
    batch_delete_then_undo_restores_every_byte,
    undo_after_the_application_changed_a_row_refuses,
    fix_touching_an_undetected_row_trips_the_guard,
    retention_removes_old_images,
);

/// The awkward-types table of `tests/fixtures/undo/<engine>.sql`.
async fn awkward(engine: Engine) -> TestDb {
    let db = TestDb::new(engine).await;
    db.load_fixture(&format!("undo/{}.sql", engine.key())).await;
    db
}

/// Every table, every column, as exact text: PostgreSQL's row text form;
/// SQLite's `quote()` with the storage class of every value; MariaDB's
/// bytes in hex, a TIMESTAMP both as text and as its UTC instant, a DOUBLE
/// in the server's shortest round-trip form (one text per double).
async fn dump(db: &TestDb) -> Vec<Vec<Option<String>>> {
    match db.engine {
        Engine::MySql => {
            let mut rows = db
                .rows(
                    "SELECT CAST(id AS CHAR), CAST(vm_id AS CHAR), HEX(state), CAST(taken_at AS CHAR), \
                     CAST(UNIX_TIMESTAMP(taken_at) AS CHAR), CAST(local_at AS CHAR), CAST(amount AS CHAR), \
                     HEX(doc), HEX(payload), HEX(tag), CAST(ratio AS CHAR), HEX(note), \
                     CAST(flags + 0 AS CHAR), CAST(day AS CHAR), HEX(kind), CAST(span AS CHAR), \
                     CAST(small AS CHAR), HEX(body), HEX(blob_long) FROM ha_work ORDER BY id",
                )
                .await;
            rows.extend(
                db.rows("SELECT CAST(id AS CHAR), HEX(name) FROM vm ORDER BY id")
                    .await,
            );
            rows
        }
        Engine::Sqlite => {
            let mut rows = db
                .rows(
                    "SELECT id, quote(vm_id), quote(state), typeof(taken_at) || quote(taken_at), \
                     typeof(amount) || quote(amount), quote(doc), quote(payload), \
                     typeof(ratio) || printf('%!.17g', ratio), quote(note), \
                     typeof(anything) || quote(anything) FROM ha_work ORDER BY id",
                )
                .await;
            rows.extend(db.rows("SELECT id, name FROM vm ORDER BY id").await);
            rows
        }
        _ => {
            let mut rows = db.rows("SELECT w::text FROM ha_work w ORDER BY id").await;
            rows.extend(db.rows("SELECT v::text FROM vm v ORDER BY id").await);
            rows
        }
    }
}

/// A rule on `ha_work` with backup, its fix `fix`.
fn rule(name: &str, fix: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndatabase: main\ndetect: SELECT id FROM ha_work WHERE state = 'stale'\n\
         fix: \"{fix}\"\nmax_rows: 10\nbackup:\n  table: ha_work\n  key: [id]\n{extra}"
    )
}

const UPDATE_FIX: &str = "UPDATE ha_work SET state = 'done', note = 'fixed', payload = NULL, ratio = 1.5 WHERE state = 'stale'";
const DELETE_FIX: &str = "DELETE FROM ha_work WHERE state = 'stale'";

fn case(db: &TestDb, rule_yaml: &str) -> Case {
    Case::new().database("main", db.url()).rule(rule_yaml)
}

/// Runs the rule for real and returns its run id (asserting `fixed`).
fn fixed_run(case: &Case, rule: &str) -> (String, serde_json::Value) {
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    let record = out.record(rule, "main");
    assert_eq!(record["outcome"], "fixed", "{}", out.stdout);
    (
        record["run_id"].as_str().expect("run_id").to_owned(),
        record,
    )
}

async fn images(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM dbjanitor_images").await
}

async fn fix_then_undo(engine: Engine, fix: &str, extra: &str, states_after: i64) {
    let db = awkward(engine).await;
    let original = dump(&db).await;
    let case = case(&db, &rule("w.fix", fix, extra));

    // Dry run: counts the rows it would keep, keeps none, changes nothing.
    let out = case.run(&["run", "--dry-run", "--output", "json"]);
    out.assert_code(0);
    let record = out.record("w.fix", "main");
    assert_eq!(record["outcome"], "would_fix", "{}", out.stdout);
    let would_keep = record["kept"].as_u64().expect("kept in the dry run");
    assert!(would_keep >= 2, "{}", out.stdout);
    assert_eq!(dump(&db).await, original, "dry run changed nothing");
    assert_eq!(images(&db).await, 0, "a dry run keeps no image");

    let (run, record) = fixed_run(&case, "w.fix");
    let fixed = dump(&db).await;
    assert_ne!(fixed, original);
    assert_eq!(
        db.scalar("SELECT count(*) FROM ha_work WHERE state = 'stale'")
            .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM ha_work").await,
        states_after
    );
    assert_eq!(record["kept"].as_u64(), Some(4), "{record}");
    assert_eq!(images(&db).await, 4);

    // changes: the before and after of the four rows.
    let out = case.run(&["changes", &run, "--output", "json"]);
    out.assert_code(0);
    let changes = out.json();
    assert_eq!(changes["table"], "ha_work");
    let rows = changes["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{}", out.stdout);
    assert!(
        rows.iter().all(|r| !r["before"].is_null()),
        "{}",
        out.stdout
    );
    let text = case.run(&["changes", &run]);
    text.assert_code(0);
    assert!(text.stdout.contains("4 rows changed"), "{}", text.stdout);

    // Undo, dry run first: nothing changes.
    let out = case.run(&["undo", &run, "--dry-run"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("would restore 4 rows"),
        "{}",
        out.stdout
    );
    assert_eq!(dump(&db).await, fixed);

    let out = case.run(&["undo", &run, "--output", "json"]);
    out.assert_code(0);
    let report = out.json();
    assert_eq!(report["outcome"], "restored", "{}", out.stdout);
    assert_eq!(report["restored"], 4);
    assert_eq!(dump(&db).await, original, "every byte is back");

    // The undo is a run of its own: undoing it gives the fixed state back.
    let undo_run = report["undo_run_id"]
        .as_str()
        .expect("undo run id")
        .to_owned();
    assert_ne!(undo_run, run);
    let out = case.run(&["undo", &undo_run]);
    out.assert_code(0);
    assert_eq!(dump(&db).await, fixed, "undoing the undo redoes the fix");
}

async fn update_fix_then_undo_restores_every_byte(engine: Engine) {
    fix_then_undo(engine, UPDATE_FIX, "", 6).await;
}

async fn delete_fix_then_undo_restores_every_byte(engine: Engine) {
    fix_then_undo(engine, DELETE_FIX, "", 2).await;
}

async fn batch_delete_then_undo_restores_every_byte(engine: Engine) {
    let fix = match engine {
        Engine::MySql => "DELETE FROM ha_work WHERE state = 'stale' ORDER BY id LIMIT 3",
        Engine::Postgres => {
            "DELETE FROM ha_work WHERE id = ANY(ARRAY(SELECT id FROM ha_work WHERE state = 'stale' ORDER BY id LIMIT 3))"
        }
        _ => {
            "DELETE FROM ha_work WHERE id IN (SELECT id FROM ha_work WHERE state = 'stale' ORDER BY id LIMIT 3)"
        }
    };
    let db = awkward(engine).await;
    let original = dump(&db).await;
    let case = case(
        &db,
        &rule("w.batch", fix, "batch:\n  pause: 0s\n  max_batches: 10\n"),
    );
    let (run, record) = fixed_run(&case, "w.batch");
    assert_eq!(
        record["batches"], 3,
        "two full batches and an empty one: {record}"
    );
    assert_eq!(record["kept"], 4);
    assert_eq!(db.scalar("SELECT count(*) FROM ha_work").await, 2);
    let out = case.run(&["undo", &run]);
    out.assert_code(0);
    assert!(out.stdout.contains("restored 4 rows"), "{}", out.stdout);
    assert_eq!(dump(&db).await, original);
}

async fn undo_after_the_application_changed_a_row_refuses(engine: Engine) {
    let db = awkward(engine).await;
    let case = case(&db, &rule("w.fix", UPDATE_FIX, ""));
    let (run, _) = fixed_run(&case, "w.fix");
    // The application touches row 2 after the fix.
    db.exec("UPDATE ha_work SET note = 'touched by the app' WHERE id = 2")
        .await;
    let before_undo = dump(&db).await;
    let out = case.run(&["undo", &run]);
    out.assert_code(3);
    assert!(out.stdout.contains("refused"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"id\""),
        "the conflicting key is listed: {}",
        out.stdout
    );
    assert_eq!(dump(&db).await, before_undo, "nothing restored");

    let out = case.run(&["undo", &run, "--only-unchanged", "--output", "json"]);
    out.assert_code(0);
    let report = out.json();
    assert_eq!(report["restored"], 3, "{}", out.stdout);
    assert_eq!(report["conflicts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        db.scalar("SELECT count(*) FROM ha_work WHERE state = 'stale'")
            .await,
        3
    );
    let row2 = db
        .rows("SELECT state, note FROM ha_work WHERE id = 2")
        .await;
    assert_eq!(
        row2,
        vec![vec![
            Some("done".to_owned()),
            Some("touched by the app".to_owned())
        ]]
    );
}

async fn fix_touching_an_undetected_row_trips_the_guard(engine: Engine) {
    let db = awkward(engine).await;
    let original = dump(&db).await;
    let fix = "UPDATE ha_work SET note = 'oops' WHERE state = 'stale' OR id = 6";
    let case = case(&db, &rule("w.wide", fix, ""));
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(3);
    let record = out.record("w.wide", "main");
    assert_eq!(
        record["reason"], "fix_changed_undetected_rows",
        "{}",
        out.stdout
    );
    assert_eq!(dump(&db).await, original, "rolled back");
    assert_eq!(images(&db).await, 0, "no image of a rolled-back fix");
}

async fn retention_removes_old_images(engine: Engine) {
    let db = awkward(engine).await;
    let case = case(&db, &rule("w.fix", UPDATE_FIX, "")).config("images:\n  keep: 30d");
    let (run, _) = fixed_run(&case, "w.fix");
    assert_eq!(images(&db).await, 4);
    let aged = match engine {
        Engine::Postgres => "UPDATE dbjanitor_images SET taken_at = now() - interval '31 days'",
        Engine::MySql => {
            "UPDATE dbjanitor_images SET taken_at = CURRENT_TIMESTAMP(6) - INTERVAL 31 DAY"
        }
        _ => {
            "UPDATE dbjanitor_images SET taken_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-31 days')"
        }
    };
    db.exec(aged).await;
    // The next run of a rule with backup (clean this time) prunes them.
    case.run(&["run"]).assert_code(0);
    assert_eq!(images(&db).await, 0);
    let out = case.run(&["undo", &run]);
    out.assert_code(2);
    assert!(out.stderr.contains("no database"), "{}", out.stderr);
}

/// Polls `sql` (a count) every 100 ms until `done` holds, for at most `secs` seconds.
async fn wait_for(db: &TestDb, sql: &str, done: fn(i64) -> bool, secs: u64, what: &str) {
    let started = std::time::Instant::now();
    while !done(db.scalar(sql).await) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(secs),
            "{what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_fix_leaves_neither_change_nor_images() {
    sigkill_during_the_fix(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_fix_leaves_neither_change_nor_images_on_mariadb() {
    sigkill_during_the_fix(Engine::MySql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_fix_leaves_neither_change_nor_images_on_sqlite() {
    let db = awkward(Engine::Sqlite).await;
    let original = dump(&db).await;
    let path = db.sqlite_path().expect("a SQLite file");
    let journal = PathBuf::from(format!("{}-journal", path.display()));
    // After its UPDATE (images and change written, uncommitted) the fix
    // counts to 10^10 in a scalar subquery every row's comparison needs:
    // SQLite has no sleep, and the statement would change no row. The rollback journal exists from the first
    // written page until the transaction ends: that is "inside the fix".
    let busy = "UPDATE ha_work SET id = id WHERE id = (WITH RECURSIVE c(x) AS \
        (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000000) SELECT count(*) FROM c)";
    let fix = format!("{UPDATE_FIX}; {busy}");
    let case = case(&db, &rule("w.slow", &fix, "timeout: 120s\n"));
    let mut child = case.spawn(&["run"]);
    let started = std::time::Instant::now();
    while !journal.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the fix never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let it reach the counting statement, then kill it mid-transaction.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(journal.exists(), "the fix ended before the kill");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The next connection finds the hot journal and rolls the file back.
    assert_eq!(dump(&db).await, original, "no change survived the kill");
    assert_eq!(images(&db).await, 0, "no orphaned image");
}

async fn sigkill_during_the_fix(engine: Engine) {
    let db = awkward(engine).await;
    let original = dump(&db).await;
    // The fix sleeps after its UPDATE (images and change done, uncommitted);
    // `sleeping` counts the sessions inside that sleep.
    let (sleep, sleeping, open) = match engine {
        Engine::MySql => (
            "DO SLEEP(8)",
            "SELECT count(*) FROM information_schema.processlist \
             WHERE info LIKE 'DO SLEEP(8)%' AND db = DATABASE()",
            "SELECT count(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p \
             ON p.id = t.trx_mysql_thread_id WHERE p.db = DATABASE()",
        ),
        _ => (
            "SELECT pg_sleep(30)",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' \
             AND pid <> pg_backend_pid() AND datname = current_database()",
            "SELECT 0",
        ),
    };
    let fix = format!("{UPDATE_FIX}; {sleep}");
    let case = case(&db, &rule("w.slow", &fix, "timeout: 60s\n"));
    let mut child = case.spawn(&["run"]);
    wait_for(&db, sleeping, |n| n > 0, 20, "the fix never started").await;
    assert_eq!(dump(&db).await, original, "the change is not visible yet");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The server ends the session when it notices (MariaDB: when the sleep
    // ends at the latest) and rolls back.
    wait_for(
        &db,
        sleeping,
        |n| n == 0,
        40,
        "the session outlived its client",
    )
    .await;
    wait_for(
        &db,
        open,
        |n| n == 0,
        30,
        "the transaction outlived its client",
    )
    .await;
    assert_eq!(dump(&db).await, original, "no change survived the kill");
    assert_eq!(images(&db).await, 0, "no orphaned image");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_is_refused_at_load_for_autocommit_and_bad_names() {
    let db = TestDb::new(Engine::Sqlite).await;
    let auto = "name: w.auto\ndatabase: main\nmode: autocommit\ndetect: SELECT id FROM t\nfix: DELETE FROM t\nmax_rows: 5\nbackup:\n  table: t\n  key: [id]\n";
    let out = Case::new()
        .database("main", db.url())
        .rule(auto)
        .run(&["check"]);
    out.assert_code(2);
    assert!(out.stderr.contains("rule01.yaml:8:"), "{}", out.stderr);
    assert!(out.stderr.contains("autocommit"), "{}", out.stderr);
    let bad = "name: w.bad\ndatabase: main\ndetect: SELECT id FROM t\nfix: DELETE FROM t\nmax_rows: 5\nbackup:\n  table: \"t; DROP TABLE t\"\n  key: [id]\n";
    let out = Case::new()
        .database("main", db.url())
        .rule(bad)
        .run(&["check"]);
    out.assert_code(2);
    assert!(out.stderr.contains("rule01.yaml:7:10:"), "{}", out.stderr);
}

/// MariaDB's images pin the session's `time_zone` for their statements only:
/// the next rule on the same (reused) connection sees the zone it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_mariadb_session_keeps_its_time_zone_after_images() {
    let db = awkward(Engine::MySql).await;
    let first = "name: w.fix\ndatabase: main\n\
                 detect: SELECT id, CONNECTION_ID() AS session FROM ha_work WHERE state = 'stale'\n\
                 fix: \"UPDATE ha_work SET state = 'done' WHERE state = 'stale'\"\n\
                 max_rows: 10\nbackup:\n  table: ha_work\n  key: [id]\n";
    let second = "name: w.zone\ndatabase: main\n\
                  detect: SELECT CONNECTION_ID() AS session, @@session.time_zone AS zone\n";
    let out = Case::new()
        .database("main", db.url())
        .rule(first)
        .rule(second)
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let fixed = out.record("w.fix", "main");
    assert_eq!(fixed["outcome"], "fixed", "{}", out.stdout);
    assert_eq!(fixed["kept"], 4, "{}", out.stdout);
    let zone = out.record("w.zone", "main");
    // Sample columns: w.fix (id, session), w.zone (session, zone).
    let first_session = &fixed["sample"]["rows"][0][1];
    let row = &zone["sample"]["rows"][0];
    assert!(first_session.is_string(), "{}", out.stdout);
    assert_eq!(
        &row[0], first_session,
        "the second rule reused the first one's connection: {}",
        out.stdout
    );
    assert_eq!(row[1], "SYSTEM", "{}", out.stdout);
    assert_eq!(images(&db).await, 4);
}
