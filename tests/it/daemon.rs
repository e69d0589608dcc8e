//! `dbjanitor daemon` as a supervisor runs it: a rule every second against a
//! real database with the audit rows as proof, the HTTP endpoints, and
//! SIGTERM in the middle of a slow fix (finished within the grace period, or
//! cancelled: rolled back and the lock released), always exiting 0.
//!
//! Nothing here asserts timing: the tests poll for a state with a generous
//! deadline and then assert on content.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::audit_util::{STUCK, audit_rows, audited, jobs, parse_metrics, sample};
use crate::daemon_util::{DEADLINE, body, eventually, exited, free_port, http_get, sigterm};
use crate::util::{Engine, RunOutput, TestDb};

on_every_engine!(
    a_rule_every_second_with_audit_rows_as_proof,
    sigterm_cancels_a_slow_fix_after_the_grace_period,
);

async fn a_rule_every_second_with_audit_rows_as_proof(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let case = audited(&app, &audit).rule(&format!("{STUCK}schedule: \"@every 1s\"\n"));
    let port = free_port();
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    // The schema is migrated before the server starts: once /livez answers,
    // the audit table exists.
    eventually("/livez", async || {
        http_get(port, "/livez").filter(|r| r.0 == 200)
    })
    .await;
    let rows = eventually("3 audit rows", async || {
        let rows = audit_rows(&audit).await;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    let healthz = eventually("/healthz 200", async || {
        http_get(port, "/healthz").filter(|r| r.0 == 200)
    })
    .await;
    assert!(
        body(&healthz.1).contains("database main: ok"),
        "{}",
        healthz.1
    );
    let (status, response) = http_get(port, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
    );
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(0);
    assert_one_run_per_tick(engine, &app, &audit, &rows).await;
    assert_daemon_metrics(body(&response));
}

/// The audit rows of `a_rule_every_second_with_audit_rows_as_proof`: the
/// first run fixed the three stuck jobs, the next ones were clean, one run
/// per tick.
async fn assert_one_run_per_tick(
    engine: Engine,
    app: &TestDb,
    audit: &TestDb,
    rows: &[(String, String, String, String, bool)],
) {
    assert_eq!(
        rows[0],
        (
            "jobs.stuck".to_owned(),
            "fixed".to_owned(),
            "3".to_owned(),
            "3".to_owned(),
            false
        ),
        "{engine:?}"
    );
    for row in &rows[1..] {
        assert_eq!(
            (row.1.as_str(), row.2.as_str()),
            ("clean", "0"),
            "{engine:?}: {rows:?}"
        );
    }
    // One run per tick: never two runs with the same start second.
    let all = audit.scalar("SELECT count(*) FROM dbjanitor_runs").await;
    let per_second = audit
        .rows("SELECT started_at FROM dbjanitor_runs")
        .await
        .into_iter()
        .map(|r| {
            r[0].clone()
                .unwrap_or_default()
                .chars()
                .take(19)
                .collect::<String>()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(i64::try_from(per_second).expect("count"), all, "{engine:?}");
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
}

/// The daemon's `/metrics` after those runs, read by a Prometheus
/// text-format parser.
fn assert_daemon_metrics(response: &str) {
    let metrics = parse_metrics(response);
    let pair = [("rule", "jobs.stuck"), ("database", "main")];
    let outcome = |o: &'static str| [("rule", "jobs.stuck"), ("database", "main"), ("outcome", o)];
    assert_eq!(
        sample(&metrics, "dbjanitor_runs_total", &outcome("fixed")),
        Some(1.0)
    );
    let clean = sample(&metrics, "dbjanitor_runs_total", &outcome("clean")).expect("clean");
    assert!(clean >= 2.0, "{clean}");
    assert_eq!(
        sample(&metrics, "dbjanitor_runs_total", &outcome("failed")),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "dbjanitor_rows_detected_total", &pair),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "dbjanitor_rows_changed_total", &pair),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "dbjanitor_lock_skips_total", &pair),
        Some(0.0)
    );
    assert!(sample(&metrics, "dbjanitor_overlap_skips_total", &pair).is_some());
    assert_eq!(
        sample(&metrics, "dbjanitor_run_duration_seconds_count", &pair),
        Some(clean + 1.0)
    );
    let last_success =
        sample(&metrics, "dbjanitor_last_success_timestamp_seconds", &pair).expect("last success");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        last_success > now - 600.0 && last_success <= now + 1.0,
        "{last_success}"
    );
    assert!(
        sample(&metrics, "dbjanitor_next_run_timestamp_seconds", &pair)
            .is_some_and(|t| t >= last_success)
    );
    assert_eq!(
        sample(&metrics, "dbjanitor_database_up", &[("database", "main")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "dbjanitor_database_up",
            &[("database", "janitor")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "dbjanitor_audit_errors_total", &[]),
        Some(0.0)
    );
}

/// A fix that runs an UPDATE, then a slow statement, in one transaction.
fn slow_rule(engine: Engine) -> (String, String) {
    let slow = match engine {
        Engine::Postgres => "SELECT pg_sleep(5)",
        Engine::MySql => "DO SLEEP(5)",
        Engine::Sqlite => {
            "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000000) SELECT x FROM c)"
        }
    };
    let rule = format!(
        "name: jobs.killed\ndatabase: main\nschedule: \"@every 1s\"\ndetect: SELECT id FROM job WHERE state = 'stuck'\nfix: |\n  UPDATE job SET state = 'failed' WHERE state = 'stuck';\n  {slow}\nmax_rows: 5\ntimeout: 120s\nlock: {{ name: jobs, wait: 30s }}\n"
    );
    let fast = rule.replace(&format!("\n  {slow}"), "");
    (rule, fast)
}

async fn sigterm_cancels_a_slow_fix_after_the_grace_period(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let (slow, fast) = slow_rule(engine);
    // Kept until the end: the config folder must outlive the daemon.
    let case = audited(&app, &audit)
        .config("daemon: { shutdown_grace: 1s }")
        .rule(&slow);
    let child = case.spawn(&["daemon"]);
    crate::daemon_util::wait_until_update_ran(&app).await;
    // Let the next tick come while the fix is still running: it is skipped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(0);
    assert!(
        out.stderr.contains("this tick is skipped (overlap)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cancelling the running rules"),
        "{}",
        out.stderr
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3,
        "{engine:?}: the cancelled fix was rolled back"
    );
    let rows = audit
        .rows("SELECT outcome, reason FROM dbjanitor_runs WHERE rule = 'jobs.killed'")
        .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("failed".to_owned()),
            Some("cancelled".to_owned())
        ]],
        "{engine:?}"
    );
    // The lock went with the connection: the next run takes it and fixes.
    let next = audited(&app, &audit)
        .rule(&fast)
        .run(&["run", "--output", "json"]);
    next.assert_code(0);
    assert_eq!(next.outcome("jobs.killed", "main"), "fixed", "{engine:?}");
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
}

/// Within the grace period a running fix finishes and is committed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_fix_finish_within_the_grace_period() {
    for engine in [Engine::Postgres, Engine::MySql] {
        let app = jobs(engine).await;
        let audit = TestDb::new(engine).await;
        let (slow, _) = slow_rule(engine);
        let case = audited(&app, &audit)
            .config("daemon: { shutdown_grace: 60s }")
            .rule(&slow);
        let child = case.spawn(&["daemon"]);
        crate::daemon_util::wait_until_update_ran(&app).await;
        sigterm(&child);
        let out = exited(child).await;
        out.assert_code(0);
        assert!(
            out.stderr.contains("stopping: no new runs"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("cancelling"), "{}", out.stderr);
        assert_eq!(
            app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
                .await,
            3,
            "{engine:?}: the fix finished and was committed"
        );
        let outcomes: Vec<String> = audit_rows(&audit).await.into_iter().map(|r| r.1).collect();
        assert_eq!(
            outcomes,
            ["fixed"],
            "{engine:?}: one run, no new one after SIGTERM"
        );
    }
}

/// Issue 9.3: HTTP clients cannot hold the shutdown: a half-sent request
/// (no blank line), an idle keep-alive connection and a client that never
/// reads its answer are all open at SIGTERM, and the daemon still exits 0
/// within `shutdown_grace` plus a generous margin.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_is_not_held_by_http_clients() {
    let app = jobs(Engine::Sqlite).await;
    let case = crate::util::Case::new()
        .database("main", app.url())
        .config("daemon: { shutdown_grace: 2s }")
        .rule(&format!("{STUCK}schedule: \"@every 1h\"\n"));
    let port = free_port();
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    eventually("/livez", async || {
        http_get(port, "/livez").filter(|r| r.0 == 200)
    })
    .await;
    let connect = || {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
            .expect("connect")
    };
    let mut half = connect();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let mut idle = connect();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("a keep-alive request");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    let mut never_reads = connect();
    for _ in 0..50 {
        never_reads
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("pipelined requests");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    sigterm(&child);
    let mut child = child;
    let limit = Duration::from_secs(2 + 20);
    while child.try_wait().expect("try_wait").is_none() {
        if signalled.elapsed() > limit {
            let _ = child.kill();
            let out = RunOutput::from(child.wait_with_output().expect("wait"));
            panic!(
                "the daemon was still alive {}s after SIGTERM\nstderr:\n{}",
                limit.as_secs(),
                out.stderr
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = RunOutput::from(child.wait_with_output().expect("wait"));
    out.assert_code(0);
    assert!(out.stderr.contains("daemon stopped"), "{}", out.stderr);
    drop((half, idle, never_reads));
}

/// Issue 9.4: ten slow rules on one PostgreSQL database with
/// `jobs_per_database: 2`: the server never sees more than two of their
/// sessions at once, and every rule still runs.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_runs_are_capped_per_database() {
    const RULES: usize = 10;
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let mut case = crate::util::Case::new()
        .database("main", app.url())
        .database("janitor", audit.url())
        .config("audit: { database: janitor }\ndaemon: { jobs: 8, jobs_per_database: 2, shutdown_grace: 30s }");
    for i in 0..RULES {
        case = case.rule(&format!(
            "name: slow.r{i}\ndatabase: main\nschedule: \"@every 1s\"\n\
             detect: SELECT 'dbj-cap-probe' AS marker FROM pg_sleep(0.7)\n"
        ));
    }
    let port = free_port();
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    let sessions = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'dbjanitor' \
         AND (query LIKE '%dbj-cap-probe%' OR query LIKE 'FETCH %dbjanitor_detect%') \
         AND query NOT LIKE '%pg_stat_activity%'",
        app.name
    );
    let mut most = 0;
    let mut ran = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        most = most.max(app.scalar(&sessions).await);
        if let Some((200, response)) = http_get(port, "/metrics") {
            let metrics = parse_metrics(body(&response));
            ran = (0..RULES)
                .filter(|i| {
                    let rule = format!("slow.r{i}");
                    let labels = [
                        ("rule", rule.as_str()),
                        ("database", "main"),
                        ("outcome", "found"),
                    ];
                    sample(&metrics, "dbjanitor_runs_total", &labels).unwrap_or(0.0) >= 1.0
                })
                .collect();
            assert!(
                sample(
                    &metrics,
                    "dbjanitor_waiting",
                    &[("rule", "slow.r0"), ("database", "main")]
                )
                .is_some(),
                "dbjanitor_waiting is exposed"
            );
        }
        if ran.len() == RULES && most >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(0);
    assert_eq!(ran.len(), RULES, "every rule ran once at least: {ran:?}");
    assert!(most <= 2, "{most} sessions at once on one database, cap 2");
    assert_eq!(most, 2, "the two slots were used at once");
    assert!(!out.stderr.contains("too many clients"), "{}", out.stderr);
}

/// Report-only rules on one SQLite database take no write lock, so the
/// daemon runs them beside each other (up to `jobs_per_database`): both slow
/// rules are seen running at once. Before, every rule of a SQLite database
/// shared one lock key and ran one at a time.
#[tokio::test(flavor = "multi_thread")]
async fn report_only_sqlite_rules_run_beside_each_other() {
    let app = TestDb::new(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let mut case = crate::util::Case::new()
        .database("main", app.url())
        .database("janitor", audit.url())
        .config("audit: { database: janitor }\ndaemon: { jobs: 4, jobs_per_database: 2 }");
    for i in 0..2 {
        // About a second of SQLite's own work, no rows.
        case = case.rule(&format!(
            "name: slow.r{i}\ndatabase: main\nschedule: \"@every 1s\"\n\
             detect: WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT x FROM c WHERE x = 0\n"
        ));
    }
    let port = free_port();
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    let both = |metrics: &prometheus_parse::Scrape| {
        (0..2).all(|i| {
            let rule = format!("slow.r{i}");
            sample(
                metrics,
                "dbjanitor_running",
                &[("rule", rule.as_str()), ("database", "main")],
            ) == Some(1.0)
        })
    };
    let mut together = false;
    let deadline = Instant::now() + DEADLINE;
    while !together && Instant::now() < deadline {
        if let Some((200, response)) = http_get(port, "/metrics") {
            together = both(&parse_metrics(body(&response)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(0);
    assert!(together, "the two report-only rules never ran at once");
    assert!(!out.stderr.contains("skipped"), "{}", out.stderr);
}

/// A report-only rule reading beside a rule with a fix on one SQLite
/// database in rollback-journal mode: the fix's COMMIT needs every reader
/// gone, and with `lock.wait` 0 it would fail at once while the report
/// reads. The daemon lets report-only rules share their database's turn
/// with each other, never with a rule that writes: every run of the fix
/// commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_never_holds_up_the_commit_of_a_fix_on_sqlite() {
    let app = jobs(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let case = audited(&app, &audit)
        .rule(
            "name: slow.report\ndatabase: main\nschedule: \"@every 1s\"\n\
             detect: WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c WHERE x = 0\n",
        )
        .rule(
            "name: flip\ndatabase: main\nschedule: \"@every 1s\"\n\
             detect: SELECT id FROM job WHERE id = 4\n\
             fix: UPDATE job SET state = CASE state WHEN 'done' THEN 'again' ELSE 'done' END WHERE id = 4\n\
             max_rows: 1\nverify: false\n",
        );
    let child = case.spawn(&["daemon"]);
    let flips = async || {
        // The audit table exists once the daemon has migrated its database.
        let migrated = audit
            .scalar("SELECT count(*) FROM sqlite_master WHERE name = 'dbjanitor_runs'")
            .await;
        if migrated == 0 {
            return 0;
        }
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE rule = 'flip'")
            .await
    };
    eventually("five runs of the fix", async || {
        (flips().await >= 5).then_some(())
    })
    .await;
    sigterm(&child);
    exited(child).await.assert_code(0);
    let outcomes = audit
        .rows(
            "SELECT outcome, error FROM dbjanitor_runs WHERE rule = 'flip' AND outcome <> 'fixed'",
        )
        .await;
    assert_eq!(
        outcomes,
        Vec::<Vec<Option<String>>>::new(),
        "every run of the fix committed"
    );
    assert!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE rule = 'slow.report' AND outcome = 'clean'")
            .await
            >= 1
    );
}

/// Issue 12.7: `--listen localhost:PORT` is accepted (a host name, not only
/// an IP address) and serves the probes on the loopback address.
#[tokio::test(flavor = "multi_thread")]
async fn listen_accepts_a_host_name() {
    let app = jobs(Engine::Sqlite).await;
    let case = crate::util::Case::new()
        .database("main", app.url())
        .rule(&format!("{STUCK}schedule: \"@every 1h\"\n"));
    let port = free_port();
    let child = case.spawn(&["daemon", "--listen", &format!("localhost:{port}")]);
    eventually("/livez on localhost", async || {
        http_get(port, "/livez").filter(|r| r.0 == 200)
    })
    .await;
    sigterm(&child);
    let out = exited(child).await;
    out.assert_code(0);
    assert!(out.stderr.contains("daemon stopped"), "{}", out.stderr);
}
