//! PgBouncer helpers shared by `pgbouncer` and `lease` (whose PostgreSQL
//! lease tests also run behind the pooler): the pooled URL, the four rule
//! modes, a race of four processes, a killed holder and its successor, and
//! the checks that nothing is left on the server or the pooled connections.
//! They live here so that no test module borrows another's helpers.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::util::{Case, RunOutput, TestDb, repo};

/// The pooler's port (`DBJ_TEST_PGBOUNCER_PORT`, default 6439).
fn port() -> u16 {
    std::env::var("DBJ_TEST_PGBOUNCER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(6439)
}

/// Starts the private PgBouncer once per test process (idempotent).
fn pgbouncer() {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo("tests/pgbouncer/start.sh"))
            .arg(port().to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = started {
        panic!("PgBouncer must be available for these tests (see .ci/run): {e}");
    }
}

/// The URL of `db` through the pooler.
pub(crate) fn pooled(db: &TestDb) -> String {
    pgbouncer();
    format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        port(),
        db.name
    )
}

/// The four rule modes: (rule name, fix, extra rule keys); `all` fixes every
/// row at once, `batch` one batch of rows.
pub(crate) fn modes<'a>(
    all: &'a str,
    batch: &'a str,
) -> [(&'static str, &'a str, &'static str); 4] {
    [
        ("transactional", all, ""),
        ("batch", batch, "batch: { pause: 50ms, max_batches: 100 }\n"),
        ("autocommit", all, "mode: autocommit\n"),
        (
            "autocommit-batch",
            batch,
            "mode: autocommit\nbatch: { pause: 50ms, max_batches: 100 }\n",
        ),
    ]
}

/// Four processes of rule `name` at once: every one exits 0, exactly one
/// is `fixed`, the others `skipped` or `clean`.
pub(crate) fn race_four(case: &Case, name: &str) {
    let outputs = case.run_at_once(4, &["run", "--output", "json"]);
    let outcomes: Vec<String> = outputs.iter().map(|o| o.outcome(name, "app")).collect();
    for o in &outputs {
        o.assert_code(0);
    }
    let fixed = outcomes.iter().filter(|o| *o == "fixed").count();
    assert_eq!(fixed, 1, "{name}: {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| ["fixed", "skipped", "clean"].contains(&o.as_str())),
        "{name}: {outcomes:?}"
    );
}

/// Each of the 40 rows is in the key-less archive exactly once.
pub(crate) async fn assert_archived_once(db: &TestDb, name: &str) {
    assert_eq!(
        db.scalar("SELECT count(*) FROM archive").await,
        40,
        "{name}"
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT id) FROM archive").await,
        40,
        "{name}"
    );
}

/// No advisory lock in the database, seen from a direct connection.
pub(crate) async fn assert_no_advisory_lock(db: &TestDb) {
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = '{}'",
            db.name
        ))
        .await,
        0,
        "an advisory lock is left"
    );
}

/// From a direct connection: no advisory lock in the database; through the
/// pooler, on both server connections at once: no setting dbjanitor made.
pub(crate) async fn assert_nothing_left(db: &TestDb) {
    assert_no_advisory_lock(db).await;
    let settings = "SELECT name FROM pg_settings WHERE source = 'session' AND name NOT IN \
        ('application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'IntervalStyle', 'standard_conforming_strings')";
    // Two clients in open transactions hold both server connections of the pool.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client, connection) = tokio_postgres::connect(&pooled(db), NoTls)
            .await
            .expect("connect through PgBouncer");
        tokio::spawn(connection);
        client.batch_execute("BEGIN").await.expect("begin");
        clients.push(client);
    }
    let mut pids = Vec::new();
    for client in &clients {
        let pid = client
            .simple_query("SELECT pg_backend_pid()::text")
            .await
            .expect("pid");
        pids.push(format!("{pid:?}"));
        let left: Vec<String> = client
            .simple_query(settings)
            .await
            .expect("settings")
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert!(
            left.is_empty(),
            "settings left on a pooled connection: {left:?}"
        );
    }
    assert_ne!(pids[0], pids[1], "both server connections were inspected");
    for client in &clients {
        client.batch_execute("COMMIT").await.expect("commit");
    }
}

/// Starts rule `archive` of `case` and SIGKILLs it once it archived 4 rows.
pub(crate) async fn kill_a_holder(db: &TestDb, case: &Case) {
    let mut holder = case.spawn(&["run", "--output", "json"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while db
        .scalar("SELECT count(*) FROM job WHERE state = 'archived'")
        .await
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the holder never started its batches"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.kill().expect("SIGKILL");
    let _ = holder.wait();
}

/// Runs `case` again after [`kill_a_holder`]: it exits 0 `fixed` within
/// 30 s, with fencing token 2.
pub(crate) async fn take_over(db: &TestDb, case: &Case) {
    let killed_at = Instant::now();
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome("archive", "app"), "fixed", "{}", out.stdout);
    assert!(killed_at.elapsed() < Duration::from_secs(30));
    assert_eq!(
        db.scalar("SELECT token FROM dbjanitor_leases WHERE name = 'archive'")
            .await,
        2,
        "the second run took the lease with the next fencing token"
    );
}

/// Rule `archive` failed (exit 1) because its lease was lost before COMMIT,
/// and the report says the transaction rolled back (PostgreSQL asked
/// `pg_xact_status`; MySQL had its ROLLBACK acknowledged), not "unknown".
pub(crate) fn assert_lease_lost(out: &RunOutput) {
    out.assert_code(1);
    let record = out.record("archive", "app");
    assert_eq!(record["outcome"], "failed", "{}", out.stdout);
    let error = record["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expired or was taken by another run"),
        "{}",
        out.stdout
    );
    assert!(error.contains("rolled back"), "{}", out.stdout);
    assert_ne!(record["reason"], "commit_unknown", "{}", out.stdout);
}
