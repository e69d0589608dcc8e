//! Through a real PgBouncer in transaction mode (issue 15): a private
//! instance on 127.0.0.1:6439 (`tests/pgbouncer/start.sh`: `pool_mode =
//! transaction`, `default_pool_size = 2`, no `ignore_startup_parameters`),
//! with more processes than server connections. Every rule mode fixes each
//! row exactly once, nothing (lock or setting) is left on any server
//! connection, every run is recorded, `check --connect` tells the truth, and
//! a lease outlives neither a killed holder nor its own expiry.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::pgbouncer_util::{
    assert_archived_once, assert_lease_lost, assert_nothing_left, kill_a_holder, modes, pooled,
    race_four, take_over,
};
use crate::util::{Case, Engine, RunOutput, TestDb};

/// Runs `sql` through the pooler with tokio-postgres (sqlx's startup
/// parameters are refused by PgBouncer) and returns the first column.
async fn pooled_column(db: &TestDb, sql: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(&pooled(db), NoTls)
        .await
        .expect("connect through PgBouncer");
    tokio::spawn(connection);
    let messages = client
        .simple_query(sql)
        .await
        .expect("query through PgBouncer");
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

async fn seed() -> TestDb {
    TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id int PRIMARY KEY, state text NOT NULL); \
         CREATE TABLE archive (id int NOT NULL); \
         INSERT INTO job SELECT g, 'old' FROM generate_series(1, 40) g;",
    )
    .await
}

/// Archives into a table without a key: a second fix of the same rows
/// would show up as duplicates.
const ARCHIVE_ALL: &str = "INSERT INTO archive SELECT id FROM job WHERE state = 'old' ORDER BY id; \
    UPDATE job SET state = 'archived' WHERE state = 'old' AND id IN (SELECT id FROM archive); \
    SELECT pg_sleep(0.5)";
const ARCHIVE_BATCH: &str = "INSERT INTO archive SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 10; \
    UPDATE job SET state = 'archived' WHERE state = 'old' AND id IN (SELECT id FROM archive); \
    SELECT pg_sleep(0.2)";

fn mode_rule(name: &str, fix: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
         fix: \"{fix}\"\nmax_rows: 100\nverify: false\nlock: {{ name: archive }}\n{extra}"
    )
}

/// Four processes per mode, pool of two: exactly one fixes, each row once.
#[tokio::test(flavor = "multi_thread")]
async fn every_mode_fixes_each_row_exactly_once_behind_pgbouncer() {
    let mut recorded = 0;
    for (name, fix, extra) in modes(ARCHIVE_ALL, ARCHIVE_BATCH) {
        let db = seed().await;
        let url = pooled(&db);
        let case = Case::new()
            .database("app", &url)
            .rule(&mode_rule(name, fix, extra))
            .config("audit: { database: app }");
        race_four(&case, name);
        assert_archived_once(&db, name).await;
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'archived'")
                .await,
            40
        );
        // `auto` saw the pooler and took a lease, not an advisory lock.
        assert_eq!(
            db.scalar("SELECT count(*) FROM dbjanitor_leases WHERE name = 'archive'")
                .await,
            1,
            "{name}"
        );
        // Every run is in the audit table.
        assert_eq!(
            db.scalar(&format!(
                "SELECT count(*) FROM dbjanitor_runs WHERE rule = '{name}'"
            ))
            .await,
            4,
            "{name}"
        );
        assert_nothing_left(&db).await;
        recorded += 4;
    }
    assert_eq!(recorded, 16);
}

/// `check --connect` through the pooler: valid SQL prepares (no named
/// statements), a wrong column is reported (exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_tells_the_truth_behind_pgbouncer() {
    let db = seed().await;
    let url = pooled(&db);
    let good = Case::new()
        .database("app", &url)
        .rule(&mode_rule("archive", ARCHIVE_ALL, ""))
        .rule(&mode_rule(
            "archive-batch",
            ARCHIVE_BATCH,
            "batch: { pause: 50ms }\n",
        ));
    for _ in 0..3 {
        good.run(&["check", "--connect"]).assert_code(0);
    }
    let bad = Case::new()
        .database("app", &url)
        .rule("name: bad\ndatabase: app\ndetect: SELECT id FROM job WHERE no_such_column = 1\n");
    let out = bad.run(&["check", "--connect"]);
    out.assert_code(2);
    assert!(
        out.stdout.contains("no_such_column") || out.stderr.contains("no_such_column"),
        "{out:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'old'")
            .await,
        40
    );
}

fn lease_expires_at(db: &TestDb) -> Vec<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            db.url(),
            "-c",
            "SELECT token, expires_at > clock_timestamp() FROM dbjanitor_leases WHERE name = 'archive'",
        ])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// SIGKILL of a lease holder mid-batch: its lease expires on its own (three
/// statement timeouts, at least 3s) and the next run takes over and finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_lease_holder_is_replaced_after_expiry() {
    let db = seed().await;
    let url = pooled(&db);
    let slow_batch = "UPDATE job SET state = 'archived' WHERE id IN \
        (SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 2); SELECT pg_sleep(0.5)";
    let case = Case::new().database("app", &url).rule(&format!(
        "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
         fix: \"{slow_batch}\"\nmax_rows: 100\ntimeout: 1s\n\
         batch: {{ pause: 10ms, max_batches: 1000 }}\nlock: {{ name: archive, wait: 30s }}\n"
    ));
    kill_a_holder(&db, &case).await;
    let left_by_holder = lease_expires_at(&db);
    assert_eq!(left_by_holder.len(), 1, "{left_by_holder:?}");
    take_over(&db, &case).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'old'")
            .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'archived'")
            .await,
        40
    );
    assert_nothing_left(&db).await;
}

/// A holder whose transaction outlasts its lease (four 0.9 s statements,
/// lease 3 s) must not commit: the fencing check before COMMIT fails, the
/// transaction rolls back, nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_lease_expired_does_not_commit() {
    let db = seed().await;
    let url = pooled(&db);
    let slow_fix = "UPDATE job SET state = 'archived' WHERE state = 'old'; SELECT pg_sleep(0.9); \
        SELECT pg_sleep(0.9); SELECT pg_sleep(0.9); SELECT pg_sleep(0.9)";
    let case = Case::new()
        .database_with("app", &url, "lock: { kind: lease }")
        .rule(&format!(
            "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
             fix: \"{slow_fix}\"\nmax_rows: 100\ntimeout: 1s\nlock: {{ name: archive }}\n"
        ));
    assert_lease_lost(&case.run(&["run", "--output", "json"]));
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'old'")
            .await,
        40
    );
    assert_nothing_left(&db).await;
}

/// The pooler itself: dbjanitor's sessions need no `ignore_startup_parameters`.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_connect_through_a_default_pgbouncer() {
    let db = seed().await;
    let names = pooled_column(&db, "SELECT current_database()").await;
    assert_eq!(names, vec![db.name.clone()]);
    let case = Case::new()
        .database("app", &pooled(&db))
        .rule("name: old\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n");
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.record("old", "app")["detected"], 40, "{}", out.stdout);
}

/// A count read with `psql` (0 while the table does not exist yet).
fn psql_count(url: &str, sql: &str) -> i64 {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-d", url, "-c", sql])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<i64>()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Two daemons through the pooler (pool of two), a batch rule every second
/// and the audit table in the same pooled database: every run is recorded,
/// no audit error, every row archived exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_behind_pgbouncer_record_every_run() {
    let db = seed().await;
    let url = pooled(&db);
    let case = Case::new()
        .database("app", &url)
        .rule(&mode_rule(
            "archive",
            ARCHIVE_BATCH,
            "batch: { pause: 50ms, max_batches: 100 }\nschedule: \"@every 1s\"\n",
        ))
        .config("audit: { database: app }");
    let daemons: Vec<_> = (0..2).map(|_| case.spawn(&["daemon"])).collect();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let recorded = psql_count(db.url(), "SELECT count(*) FROM dbjanitor_runs");
        if recorded >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemons recorded only {recorded} runs"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for daemon in &daemons {
        Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status()
            .expect("kill -TERM");
    }
    for daemon in daemons {
        let out = RunOutput::from(daemon.wait_with_output().expect("wait"));
        out.assert_code(0);
        assert!(
            !out.stderr.contains("audit table") && !out.stderr.contains("42P05"),
            "{}",
            out.stderr
        );
        // The per-pair claim (a row lock in a transaction) works through the pooler.
        assert!(
            !out.stderr.contains("cannot claim the pair")
                && !out.stderr.contains("cannot read the run history"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM dbjanitor_pairs WHERE rule = 'archive'")
            .await,
        1
    );
    assert_eq!(db.scalar("SELECT count(*) FROM archive").await, 40);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT id) FROM archive").await,
        40
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM dbjanitor_runs WHERE outcome = 'fixed'")
            .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM dbjanitor_runs WHERE outcome = 'failed'")
            .await,
        0
    );
    assert_nothing_left(&db).await;
}
