//! `batch.max_replica_lag` against real replicas (`tests/replica/start.sh`):
//! a private PostgreSQL primary with a streaming standby that applies WAL
//! late (`recovery_min_apply_delay`), and a private MariaDB primary with a
//! replica that applies events late (`MASTER_DELAY`). The shared servers
//! are not touched (they allow no replication and have no binary log).
//!
//! Each case asserts the rows left in the primary, the report (outcome,
//! reason, batches, `lag_waited_ms`) and the exit status: a lagging replica
//! pauses the batches and they resume once it caught up; a replica that
//! never catches up stops the run after `max_lag_wait` with exactly the
//! committed batches' rows gone; an unreadable replica (no standby, a
//! replica URL nobody answers) is waited for like a lagging one and named;
//! SIGTERM ends the wait at once.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon_util::{exited, sigterm};
use crate::util::{Case, Engine, RunOutput, TestDb, repo};

/// A private primary and its delayed replica, stopped and deleted on drop.
struct Replicated {
    dir: PathBuf,
    port: u16,
}

impl Replicated {
    /// Starts `kind` (`pg` or `mariadb`) with the replica `delay` seconds
    /// behind. Tried twice, on new ports: another test (or process) may take
    /// a port between the choice and the server's bind.
    fn start(kind: &str, delay: u64) -> Replicated {
        let mut failures = Vec::new();
        for _ in 0..2 {
            let port = free_port_pair();
            let dir =
                std::env::temp_dir().join(format!("dbj-replica-{}-{port}", std::process::id()));
            let out = Command::new("bash")
                .arg(repo("tests/replica/start.sh"))
                .args([kind, &port.to_string(), &delay.to_string()])
                .arg(&dir)
                .output()
                .expect("run tests/replica/start.sh");
            // Dropped (stopped and deleted) on failure too.
            let replicated = Replicated { dir, port };
            if out.status.success() {
                return replicated;
            }
            failures.push(format!(
                "{:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        panic!("tests/replica/start.sh {kind} failed: {failures:#?}");
    }

    fn pg_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn mysql_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/lagtest", self.port)
    }

    fn mysql_replica_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port + 1)
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo("tests/replica/start.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// A port whose successor is free too (primary and replica).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of ports");
}

const ROWS: i64 = 60;

/// A batch rule deleting 10 rows of `job` per batch, with `batch` settings.
fn purge_rule(batch: &str) -> String {
    format!(
        "name: purge\ndatabase: main\ndetect: SELECT id FROM job\n\
         fix: DELETE FROM job WHERE id IN (SELECT id FROM (SELECT id FROM job ORDER BY id LIMIT 10) AS b)\n\
         max_rows: 1000\nverify: false\ntimeout: 1s\nbatch: {{ {batch} }}\n"
    )
}

fn values() -> String {
    (1..=ROWS)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `sql` on the private primary with the engine's own client; its output.
fn primary_sql(kind: &str, port: u16, sql: &str) -> String {
    let port = port.to_string();
    let out = if kind == "pg" {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-Atqc",
                sql,
            ])
            .output()
    } else {
        Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h127.0.0.1",
                "-uroot",
                "-N",
                "-P",
                &port,
                "-e",
                sql,
            ])
            .output()
    }
    .expect("run the client");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn num(record: &Value, key: &str) -> u64 {
    record[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {record}"))
}

/// The run paused for a lagging replica and resumed: every row purged, the
/// wait in the report, nothing stopped early.
fn assert_paused_and_resumed(record: &Value, left: i64) {
    assert_eq!(left, 0, "every row purged: {record}");
    assert_eq!(record["outcome"], "fixed", "{record}");
    assert!(record.get("reason").is_none(), "{record}");
    assert_eq!(num(record, "changed"), ROWS as u64);
    assert_eq!(
        num(record, "batches"),
        ROWS as u64 / 10 + 1,
        "the last batch changes 0 rows"
    );
    assert!(
        num(record, "lag_waited_ms") > 0,
        "the run waited for the replica: {record}"
    );
}

/// The run stopped after `max_lag_wait`: outcome fixed, reason
/// `replica_lag_wait_exceeded`, and exactly the committed batches' rows gone.
fn assert_stopped_by_lag(record: &Value, left: i64, max_wait_ms: u64, replica: &str) {
    assert_eq!(record["outcome"], "fixed", "{record}");
    assert_eq!(record["reason"], "replica_lag_wait_exceeded", "{record}");
    let batches = num(record, "batches");
    let changed = num(record, "changed");
    assert!(
        batches >= 1 && batches < ROWS as u64 / 10,
        "stopped early: {record}"
    );
    assert_eq!(changed, batches * 10, "{record}");
    assert_eq!(
        left,
        ROWS - changed as i64,
        "rows committed so far, exactly"
    );
    let waited = num(record, "lag_waited_ms");
    assert!(
        waited >= max_wait_ms && waited < max_wait_ms + 5_000,
        "waited {waited} ms: {record}"
    );
    let message = record["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(replica),
        "the message names the replica: {message}"
    );
}

/// Starts `kind` (`pg`, `mariadb`) with its replica `delay` seconds behind,
/// fills `job` on the primary and purges it with `batch`: the run's output,
/// the rows left and how reports name the replica. With `stall`, the
/// replica stops applying changes from before the run until `stall` into
/// it, and the rule takes a lease lock (see [`LEASE`]).
async fn purge_behind(
    kind: &'static str,
    delay: u64,
    batch: &str,
    stall: Option<Duration>,
) -> (RunOutput, i64, String) {
    let servers = Replicated::start(kind, delay);
    let lock = if stall.is_some() { LEASE } else { "" };
    let (table, url, extra, replica) = if kind == "pg" {
        let replica = "walreceiver from 127.0.0.1".to_owned();
        ("job", servers.pg_url(), lock.to_owned(), replica)
    } else {
        let replicas = format!("replicas: [\"{}\"]", servers.mysql_replica_url());
        let replica = format!("replica 127.0.0.1:{}", servers.port + 1);
        primary_sql(kind, servers.port, "CREATE DATABASE lagtest");
        (
            "lagtest.job",
            servers.mysql_url(),
            format!("{lock}\n    {replicas}"),
            replica,
        )
    };
    primary_sql(
        kind,
        servers.port,
        &format!("CREATE TABLE {table} (id int PRIMARY KEY)"),
    );
    primary_sql(
        kind,
        servers.port,
        &format!("INSERT INTO {table} VALUES {}", values()),
    );
    let (pause, resume) = match kind {
        "pg" => (
            "SELECT pg_wal_replay_pause()",
            "SELECT pg_wal_replay_resume()",
        ),
        _ => ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD"),
    };
    if stall.is_some() {
        primary_sql(kind, servers.port + 1, pause);
    }
    let case = Case::new()
        .rule(&purge_rule(batch))
        .database_with("main", &url, &extra);
    let run = tokio::task::spawn_blocking(move || case.run(&["run", "--output", "json"]));
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
        primary_sql(kind, servers.port + 1, resume);
    }
    let out = run.await.expect("the run");
    let left = primary_sql(kind, servers.port, &format!("SELECT count(*) FROM {table}"));
    (out, left.parse().expect("a count"), replica)
}

/// A lease lock: with the rules' 1 s timeout it lasts 3 s, less than a
/// stall, so a wait that did not renew it would lose it (the next batch then
/// fails with "the lease … expired").
const LEASE: &str = "lock: { kind: lease }";

const RESUMES: &str = "pause: 500ms, max_replica_lag: 1s, max_lag_wait: 60s";
const NEVER_CATCHES_UP: &str = "pause: 500ms, max_replica_lag: 1s, max_lag_wait: 3s";

#[tokio::test(flavor = "multi_thread")]
async fn postgres_batches_pause_while_the_standby_lags_and_resume() {
    let (out, left, _) = purge_behind("pg", 2, RESUMES, None).await;
    out.assert_code(0);
    assert_paused_and_resumed(&out.record("purge", "main"), left);
    assert!(
        out.stderr
            .contains("replica lag over batch.max_replica_lag"),
        "the wait is in the log: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stops_after_max_lag_wait_when_the_standby_never_catches_up() {
    let (out, left, replica) = purge_behind("pg", 3600, NEVER_CATCHES_UP, None).await;
    out.assert_code(0);
    assert_stopped_by_lag(&out.record("purge", "main"), left, 3_000, &replica);
}

/// A `job` table of [`ROWS`] rows in a new database on the shared `engine`.
async fn shared_jobs(engine: Engine) -> TestDb {
    let db = TestDb::new(engine).await;
    db.exec("CREATE TABLE job (id int PRIMARY KEY)").await;
    db.exec(&format!("INSERT INTO job VALUES {}", values()))
        .await;
    db
}

/// On the shared `engine` (database entry `extra`), a replica that cannot
/// be read stops the run after the first batch and `max_lag_wait` (2 s),
/// with `why` in the message; the output, for more checks.
async fn stops_unreadable(engine: Engine, extra: &str, why: &str) -> RunOutput {
    let db = shared_jobs(engine).await;
    let out = Case::new()
        .database_with("main", db.url(), extra)
        .rule(&purge_rule(
            "pause: 10ms, max_replica_lag: 5s, max_lag_wait: 2s",
        ))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let record = out.record("purge", "main");
    assert_eq!(num(&record, "batches"), 1, "{record}");
    let left = db.scalar("SELECT count(*) FROM job").await;
    assert_stopped_by_lag(&record, left, 2_000, why);
    out
}

/// The shared PostgreSQL has no standby: nothing to read is not "no lag".
#[tokio::test(flavor = "multi_thread")]
async fn postgres_without_a_standby_waits_then_stops_and_says_why() {
    stops_unreadable(Engine::Postgres, "", "no standby is connected").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_batches_pause_while_the_replica_lags_and_resume() {
    let (out, left, _) = purge_behind("mariadb", 3, RESUMES, None).await;
    out.assert_code(0);
    assert_paused_and_resumed(&out.record("purge", "main"), left);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_stops_after_max_lag_wait_when_the_replica_never_catches_up() {
    let (out, left, replica) = purge_behind("mariadb", 3600, NEVER_CATCHES_UP, None).await;
    out.assert_code(0);
    assert_stopped_by_lag(&out.record("purge", "main"), left, 3_000, &replica);
}

/// A replica that stops applying (PostgreSQL `pg_wal_replay_pause()`,
/// MariaDB `STOP SLAVE SQL_THREAD`) holds the batches until it applies
/// again, 8 s after the run started; the rule's 3 s lease is renewed while it waits.
async fn a_stalled_replica_holds_the_batches_and_the_lease(kind: &'static str) {
    let stall = Duration::from_secs(8);
    let (out, left, _) = purge_behind(kind, 0, RESUMES, Some(stall)).await;
    out.assert_code(0);
    let record = out.record("purge", "main");
    assert_paused_and_resumed(&record, left);
    assert!(
        num(&record, "lag_waited_ms") >= 3_500,
        "longer than the lease: {record}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_stalled_standby_holds_the_batches_and_the_lease() {
    a_stalled_replica_holds_the_batches_and_the_lease("pg").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_a_stalled_replica_holds_the_batches_and_the_lease() {
    a_stalled_replica_holds_the_batches_and_the_lease("mariadb").await;
}

/// A replica URL nobody answers counts as over the limit: the run waits
/// `max_lag_wait`, stops, and names the replica, never its password.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_replica_is_waited_for_then_named() {
    let closed = free_port_pair();
    let extra = format!("replicas: [\"mysql://root:s3cret-pw@127.0.0.1:{closed}/\"]");
    let why = format!("replica 127.0.0.1:{closed}: lag unreadable: cannot connect");
    let out = stops_unreadable(Engine::MySql, &extra, &why).await;
    assert!(!out.stdout.contains("s3cret-pw") && !out.stderr.contains("s3cret-pw"));
}

/// A replica URL that names a server which is no replica (here the shared
/// MariaDB itself) is unreadable too, and the message says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_url_that_is_no_replica_is_named() {
    let extra = "replicas: [\"mysql://root@127.0.0.1:3306/\"]";
    let why = "replica 127.0.0.1:3306: lag unreadable: it is not a replica";
    stops_unreadable(Engine::MySql, extra, why).await;
}

/// SIGTERM during the wait ends it at once: `failed`/`cancelled`, and the
/// batch committed before the wait stays committed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_wait_at_once() {
    let db = shared_jobs(Engine::Postgres).await;
    let case = Case::new().database("main", db.url()).rule(&purge_rule(
        "pause: 10ms, max_replica_lag: 5s, max_lag_wait: 10m",
    ));
    let child = case.spawn(&["run", "--output", "json"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let signalled = Instant::now();
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(1);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the wait ended at once"
    );
    let record = out.record("purge", "main");
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["reason"], "cancelled", "{record}");
    assert_eq!(num(&record, "changed"), 10);
    assert!(num(&record, "lag_waited_ms") >= 2_000, "{record}");
    assert_eq!(db.scalar("SELECT count(*) FROM job").await, ROWS - 10);
}

/// `check --connect` reads every `replicas:` URL of a MariaDB database as
/// the lag gate does and reports each, URL redacted: a real replica is ok;
/// beside it, a port nobody answers and a server that is no replica (the
/// shared MariaDB) each make check exit 1, naming why, never the password.
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_reads_each_replica() {
    let servers = Replicated::start("mariadb", 0);
    primary_sql("mariadb", servers.port, "CREATE DATABASE lagtest");
    let good = servers.mysql_replica_url();
    let rule = "name: purge\ndatabase: main\ndetect: SELECT 1 AS id\n";
    let check = |replicas: &str| {
        Case::new()
            .rule(rule)
            .database_with(
                "main",
                &servers.mysql_url(),
                &format!("replicas: [{replicas}]"),
            )
            .run(&["check", "--connect"])
    };
    let ok_line = format!("replica {good} of database main: ok (");

    let out = check(&format!("\"{good}\""));
    out.assert_code(0);
    assert!(out.stdout.contains(&ok_line), "{}", out.stdout);

    let closed = free_port_pair();
    let out = check(&format!(
        "\"{good}\", \"mysql://root:s3cret-pw@127.0.0.1:{closed}/\", \"mysql://root@127.0.0.1:3306/\""
    ));
    out.assert_code(1);
    for line in [
        ok_line,
        format!(
            "replica mysql://root:***@127.0.0.1:{closed}/ of database main: unusable: cannot connect"
        ),
        "replica mysql://root@127.0.0.1:3306/ of database main: unusable: it is not a replica"
            .to_owned(),
    ] {
        assert!(out.stdout.contains(&line), "{line:?} in:\n{}", out.stdout);
    }
    assert!(
        !out.stdout.contains("s3cret-pw") && !out.stderr.contains("s3cret-pw"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
