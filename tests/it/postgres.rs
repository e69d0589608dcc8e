//! PostgreSQL sessions: rule SQL means what it means in `psql` (issue 16.1),
//! a waiting run's snapshot under repeatable read (16.3), tenants of one
//! database by `search_path` (16.4), and what detect and fix may not do
//! (issue 8: smuggled statements, DML in detect, writing functions), a lost
//! COMMIT reply, and how long a stalled run's session lock survives.

use std::process::Command;
use std::time::{Duration, Instant};

use dbjanitor::db::{
    CommitOutcome, ConnectSettings, DatabaseConfig, DbError, Dialect, LockKind, PgSession, Session,
};
use dbjanitor::secret::SecretUrl;

use crate::faults::FaultProxy;
use crate::util::{Case, Engine, RunOutput, TestDb, pg_server};

/// What `psql` prints for `sql` on `db` (the reference for "what psql returns").
fn psql(db: &TestDb, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d", db.url(), "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn cell(out: &RunOutput, rule: &str, db: &str) -> String {
    out.record(rule, db)["sample"]["rows"][0][0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The README's first rule finds the stale job only, with the database's
/// time zone (America/New_York) and DateStyle (ISO, DMY), as psql does.
#[tokio::test(flavor = "multi_thread")]
async fn detect_sees_the_database_defaults_like_psql() {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id bigint PRIMARY KEY, state varchar(16) NOT NULL, \
           worker varchar(64), heartbeat_at timestamp NOT NULL); \
         INSERT INTO job VALUES \
           (1, 'running', 'w-live', (now() AT TIME ZONE 'America/New_York') - interval '5 minutes'), \
           (2, 'running', 'w-dead', (now() AT TIME ZONE 'America/New_York') - interval '30 minutes');",
    )
    .await;
    db.exec(&format!(
        "ALTER DATABASE {0} SET timezone = 'America/New_York'; ALTER DATABASE {0} SET DateStyle = 'ISO, DMY'",
        db.name
    ))
    .await;
    let detect = "SELECT id FROM job WHERE state = 'running' AND heartbeat_at < now() - interval '15 minutes'";
    let case = Case::new()
        .database("app", db.url())
        .rule(&format!("name: stuck\ndatabase: app\ndetect: \"{detect}\"\n"))
        .rule("name: dates\ndatabase: app\ndetect: \"SELECT '01/02/2026'::date AS d, current_setting('TimeZone') AS tz\"\n");
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(
        psql(&db, &format!("SELECT count(*) FROM ({detect}) s")),
        "1"
    );
    assert_eq!(out.record("stuck", "app")["detected"], 1, "{}", out.stdout);
    assert_eq!(cell(&out, "stuck", "app"), "2");
    assert_eq!(psql(&db, "SELECT '01/02/2026'::date"), "2026-02-01");
    assert_eq!(cell(&out, "dates", "app"), "2026-02-01");
    assert_eq!(
        out.record("dates", "app")["sample"]["rows"][0][1],
        "America/New_York"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'running'")
            .await,
        2
    );
}

async fn wait_for_advisory_lock(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db
        .scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the first run never took its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under repeatable read (and serializable) as the database default, a run
/// that waited for the lock must not see the rows the holder fixed meanwhile,
/// nor fail with 40001.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_run_sees_the_holders_commit_under_repeatable_read() {
    for isolation in ["repeatable read", "serializable"] {
        let db = TestDb::with_sql(
            Engine::Postgres,
            "CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL); \
             INSERT INTO job SELECT g, 'stuck' FROM generate_series(1, 5) g;",
        )
        .await;
        db.exec(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation = '{isolation}'",
            db.name
        ))
        .await;
        let case = Case::new().database("app", db.url()).rule(
            "name: jobs\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'stuck'\n\
             fix: \"UPDATE job SET state = 'failed' WHERE state = 'stuck'; SELECT pg_sleep(2)\"\n\
             max_rows: 10\nlock: { name: jobs, wait: 30s }\n",
        );
        let first = case.spawn(&["run", "--output", "json"]);
        wait_for_advisory_lock(&db).await;
        let second = case.run(&["run", "--output", "json"]);
        let first = RunOutput::from(first.wait_with_output().expect("wait"));
        first.assert_code(0);
        assert_eq!(
            first.outcome("jobs", "app"),
            "fixed",
            "{isolation}: {}",
            first.stdout
        );
        second.assert_code(0);
        assert_eq!(
            second.outcome("jobs", "app"),
            "clean",
            "{isolation}: {}",
            second.stdout
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
                .await,
            5
        );
    }
}

/// Two configured databases = one PostgreSQL database with search_path
/// tenant1 and tenant2: different data, so neither skips the other.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_by_search_path_do_not_skip_each_other() {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE SCHEMA tenant1; CREATE SCHEMA tenant2; \
         CREATE TABLE tenant1.job (id int PRIMARY KEY, state text NOT NULL); \
         CREATE TABLE tenant2.job (id int PRIMARY KEY, state text NOT NULL); \
         INSERT INTO tenant1.job VALUES (1, 'stuck'), (2, 'stuck'); \
         INSERT INTO tenant2.job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck');",
    )
    .await;
    let tenant = |schema: &str| format!("{}?options=-csearch_path%3D{schema}", db.url());
    let case = Case::new()
        .database("t1", &tenant("tenant1"))
        .database("t2", &tenant("tenant2"))
        .rule(
            "name: jobs\ndatabase: [t1, t2]\n\
             detect: SELECT j.id FROM job j CROSS JOIN (SELECT pg_sleep(2)) s WHERE j.state = 'stuck'\n\
             fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 10\n",
        );
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome("jobs", "t1"), "fixed", "{}", out.stdout);
    assert_eq!(out.outcome("jobs", "t2"), "fixed", "{}", out.stdout);
    assert_eq!(
        db.scalar("SELECT count(*) FROM tenant1.job WHERE state = 'failed'")
            .await,
        2
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM tenant2.job WHERE state = 'failed'")
            .await,
        3
    );
}

async fn pwn_target() -> TestDb {
    TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL); \
         INSERT INTO job VALUES (1, 'y'), (2, 'y'), (3, 'done'); \
         CREATE FUNCTION pwn() RETURNS int LANGUAGE sql VOLATILE AS \
           $$ UPDATE job SET state = 'pwned'; SELECT 1 $$;",
    )
    .await
}

/// Refused before anything ran (the loader: exit 2), or by the server at run
/// time (failed, `unsafe_sql` or the server's error).
fn assert_refused(out: &RunOutput, rule: &str) {
    if out.code == 2 {
        assert!(out.stderr.contains("rule01.yaml"), "{rule}: {}", out.stderr);
        return;
    }
    out.assert_code(1);
    let record = out.record(rule, "app");
    assert_eq!(record["outcome"], "failed", "{rule}: {}", out.stdout);
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "unsafe_sql" || reason == "sql_error",
        "{rule}: reason {reason}: {}",
        out.stdout
    );
}

/// The server-side layer on its own (the loader's checks bypassed): the
/// session refuses transaction control in a fix, and the server refuses a
/// second statement, DML and writes in a detect; nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_refuses_what_the_lexer_might_miss() {
    let db = pwn_target().await;
    let before = db.table("job").await;
    let mut session = PgSession::connect(&config(db.url(), LockKind::Advisory), &settings())
        .await
        .expect("connect");
    assert!(
        session
            .begin_locked("jobs", Duration::ZERO)
            .await
            .expect("lock")
    );
    for fix in [
        "END",
        "COMMIT",
        "/* x */ rollback",
        "PREPARE TRANSACTION 'x'",
    ] {
        let refused = session.execute(fix).await;
        assert!(
            matches!(refused, Err(DbError::Unsafe(_))),
            "{fix}: {refused:?}"
        );
    }
    let smuggled = session
        .execute("UPDATE job SET state = 'x' WHERE state = 'y'; COMMIT")
        .await;
    assert!(smuggled.is_err(), "{smuggled:?}");
    session.abort().await;
    for detect in [
        "SELECT E'\\'' AS a; COMMIT; UPDATE job SET state = 'pwned'; SELECT 1 AS b --'",
        "DELETE FROM job RETURNING id",
        "WITH d AS (DELETE FROM job RETURNING id) SELECT id FROM d",
        "SELECT pwn()",
    ] {
        for in_transaction in [false, true] {
            let mut session =
                PgSession::connect(&config(db.url(), LockKind::Advisory), &settings())
                    .await
                    .expect("connect");
            if in_transaction {
                assert!(
                    session
                        .begin_locked("jobs", Duration::ZERO)
                        .await
                        .expect("lock")
                );
            }
            let result = session.detect(detect, 5, None).await;
            assert!(
                matches!(result, Err(DbError::Unsafe(_))),
                "{detect} (in a transaction: {in_transaction}): {result:?}"
            );
            session.abort().await;
        }
    }
    assert_eq!(db.table("job").await, before);
}

/// Smuggled statements and writes, in detect and in fix, change nothing,
/// in a real run and in a dry run.
#[tokio::test(flavor = "multi_thread")]
async fn detect_and_fix_cannot_escape_their_transaction() {
    let db = pwn_target().await;
    let before = db.table("job").await;
    let rules = [
        (
            "fix-end",
            "detect: SELECT id FROM job WHERE state = 'y'\nfix: \"UPDATE job SET state = 'x' WHERE state = 'y'; END\"\nmax_rows: 5\n",
        ),
        (
            "fix-commit",
            "detect: SELECT id FROM job WHERE state = 'y'\nfix: \"UPDATE job SET state = 'x' WHERE state = 'y'; COMMIT\"\nmax_rows: 5\n",
        ),
        (
            "detect-smuggle",
            "detect: \"SELECT E'\\\\\\\\'' AS a; COMMIT; UPDATE job SET state = 'pwned'; SELECT 1 AS b --'\"\n",
        ),
        (
            "detect-delete",
            "detect: DELETE FROM job WHERE state = 'y' RETURNING id\nfix: SELECT 1\nmax_rows: 5\n",
        ),
        (
            "detect-cte",
            "detect: WITH d AS (DELETE FROM job WHERE state = 'y' RETURNING id) SELECT id FROM d\n",
        ),
        ("detect-function", "detect: SELECT pwn()\n"),
    ];
    for dry in [true, false] {
        for (name, body) in rules {
            let case = Case::new()
                .database("app", db.url())
                .rule(&format!("name: {name}\ndatabase: app\n{body}"));
            let mut args = vec!["run", "--output", "json"];
            if dry {
                args.push("--dry-run");
            }
            let out = case.run(&args);
            assert_refused(&out, name);
            assert_eq!(
                db.table("job").await,
                before,
                "{name} (dry run {dry}) changed rows"
            );
        }
    }
}

fn settings() -> ConnectSettings {
    ConnectSettings {
        timeout: Duration::from_secs(5),
        lock_wait: Duration::ZERO,
    }
}

fn config(url: &str, lock: LockKind) -> DatabaseConfig {
    DatabaseConfig {
        pragmas: Vec::new(),
        replicas: Vec::new(),
        name: "app".to_owned(),
        dialect: Dialect::Postgres,
        url: SecretUrl::new(url.to_owned()),
        lock,
    }
}

/// COMMIT reaches the server but its reply is lost: `pg_xact_status` on a new
/// connection says it committed (and the rows are committed).
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_commit_reply_is_resolved_by_pg_xact_status() {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL); INSERT INTO job VALUES (1, 'y');",
    )
    .await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    let mut session = PgSession::connect(&config(&url, LockKind::Advisory), &settings())
        .await
        .expect("connect");
    session.begin().await.expect("begin");
    let executed = session
        .execute("UPDATE job SET state = 'x'")
        .await
        .expect("update");
    assert_eq!((executed.rows, executed.modifies_data), (1, true));
    proxy.drop_replies_after(b"COMMIT");
    let commit = tokio::time::timeout(Duration::from_secs(3), session.commit()).await;
    assert!(commit.is_err(), "the COMMIT reply should have been lost");
    assert_eq!(session.abort_after_commit().await, CommitOutcome::Committed);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'x'")
            .await,
        1
    );
}

/// A batch run holding a session advisory lock stalls between batches (the
/// network holds its bytes, the socket stays open): the server ends the
/// session and frees the lock within `abandon_bound`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_session_lock_is_released_within_the_bound() {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL); \
         INSERT INTO job SELECT g, 'old' FROM generate_series(1, 20) g;",
    )
    .await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    let mut session = PgSession::connect(&config(&url, LockKind::Advisory), &settings())
        .await
        .expect("connect");
    assert!(
        session
            .lock_session("jobs", Duration::ZERO)
            .await
            .expect("lock")
    );
    session.begin().await.expect("begin");
    session
        .execute("UPDATE job SET state = 'new' WHERE id <= 5")
        .await
        .expect("batch");
    session.commit().await.expect("commit");
    let bound = session.abandon_bound();
    assert!(bound <= Duration::from_secs(20), "bound {bound:?}");
    proxy.stall();
    let stalled_at = Instant::now();
    // The client gives up (as the engine does after its step timeout).
    drop(session);
    loop {
        let held = db
            .scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            .await;
        if held == 0 {
            break;
        }
        assert!(
            stalled_at.elapsed() < bound + Duration::from_secs(10),
            "the session lock outlived the bound of {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'new'")
            .await,
        5
    );
    proxy.release();
}

/// `sslmode=prefer` and libpq options still work; `auto` on a direct
/// connection means advisory locks; a failed connect never shows the password.
#[tokio::test(flavor = "multi_thread")]
async fn urls_stay_compatible_and_errors_hide_the_password() {
    let url = format!("{}/postgres?sslmode=prefer&application_name=x", pg_server());
    let session = PgSession::connect(&config(&url, LockKind::Auto), &settings())
        .await
        .expect("connect");
    assert_eq!(session.lock_kind(), LockKind::Advisory);
    session.close().await;
    let bad = "postgres://postgres:hunter2@127.0.0.1:1/postgres?sslmode=disable";
    let err = PgSession::connect(&config(bad, LockKind::Auto), &settings())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A statement cancelled by someone else (`pg_cancel_backend`) is
/// `sql_error`, not `timeout`: the rule's timeout did not fire.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_statement_is_an_sql_error_not_a_timeout() {
    let db = TestDb::new(Engine::Postgres).await;
    let case = Case::new()
        .database("app", db.url())
        .rule("name: slow\ndatabase: app\ndetect: SELECT 1 AS x FROM pg_sleep(30)\ntimeout: 60s\n");
    let child = case.spawn(&["run", "--output", "json"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cancelled = db
            .scalar(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'dbjanitor' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            )
            .await;
        if cancelled > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the detect never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = RunOutput::from(child.wait_with_output().expect("wait"));
    out.assert_code(1);
    let record = out.record("slow", "app");
    assert_eq!(record["outcome"], "failed", "{}", out.stdout);
    assert_eq!(record["reason"], "sql_error", "{}", out.stdout);
    assert!(
        record["error"]
            .as_str()
            .unwrap_or_default()
            .contains("canceling statement due to user request"),
        "{}",
        out.stdout
    );
}
