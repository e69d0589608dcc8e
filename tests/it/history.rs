//! Run history that stays right: two daemon replicas (or a daemon and a
//! timer) notify a state once (a `skipped` run is not a state), even when
//! the audit database fails at the claim's COMMIT; alert fatigue follows the notifications
//! that were delivered, retention keeps what `--due` needs, a dry run leaves
//! the metrics series alone, `check --connect` checks the audit database, a
//! stalled audit database never holds up the schedule, and a MySQL migration
//! waits for its metadata lock within a bound and recovers by itself.
//!
//! Real servers throughout: PostgreSQL and MariaDB, SQLite files, a real HTTP
//! server (wiremock) for webhooks, two real daemon processes, and the fault
//! proxy (`faults`) in front of the audit database.

use std::time::{Duration, Instant};

use dbjanitor::audit::SCHEMA_VERSION;
use serde_json::Value;
use sqlx::{Connection, Executor};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::audit_util::{STUCK, audited, jobs, parse_metrics, store, truthy};
use crate::daemon_util::{FLIP, alternate, stop};
use crate::daemon_util::{eventually, free_port};
use crate::faults::{FaultProxy, When};
use crate::util::{Case, Engine, RunOutput, TestDb};

on_every_engine!(
    alert_fatigue_follows_delivered_notifications,
    retention_keeps_the_rows_due_and_notifications_read,
);

// ---------------------------------------------------------------- helpers

/// The body of `GET path` on the daemon when it answers 200, else `None`.
fn http_get(port: u16, path: &str) -> Option<String> {
    crate::daemon_util::http_get(port, path)
        .filter(|(status, _)| *status == 200)
        .map(|(_, response)| crate::daemon_util::body(&response).to_owned())
}

/// A webhook notifier `ops` at `url`: no retries, so a 500 is simply not delivered.
fn webhook(url: &str) -> String {
    format!(
        "notifiers:\n  ops:\n    webhook: {{ url: \"{url}\", timeout: 5s, retries: 0, deadline: 10s }}\n"
    )
}

/// A webhook server answering every POST with `status`.
async fn answer(server: &MockServer, status: u16) {
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(server)
        .await;
}

/// The JSON payloads the webhook server received since its last reset.
async fn payloads(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

/// Sum of every sample of `name` in an OpenMetrics text.
fn metric_sum(text: &str, name: &str) -> f64 {
    parse_metrics(text)
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

// ------------------------------------------------------ 9.1: two replicas

/// Issue 9 item 1: k8s/daemon ships 2 replicas. The one that loses the lock
/// records `skipped`; that must not make the next `found` look new.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemon_replicas_notify_an_unchanged_state_once() {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let hook = MockServer::start().await;
    answer(&hook, 200).await;
    // Detect holds the lock for a while, so the replicas' ticks collide.
    let case = audited(&app, &audit)
        .rule(
            "name: slow.found\ndatabase: main\nschedule: \"@every 1s\"\nnotify: [ops]\n\
             detect: SELECT 1 AS x FROM pg_sleep(0.5)\n",
        )
        .config(&webhook(&format!("{}/hook", hook.uri())));
    case.write_config();
    let first = case.spawn(&["daemon"]);
    let second = case.spawn(&["daemon"]);
    eventually("10 found runs and 2 skipped runs", async || {
        audit.try_exec("SELECT 1 FROM dbjanitor_runs").await.ok()?;
        let rows = audit
            .rows(
                "SELECT \
                 (SELECT count(*) FROM dbjanitor_runs WHERE outcome = 'found'), \
                 (SELECT count(*) FROM dbjanitor_runs WHERE outcome = 'skipped')",
            )
            .await;
        let n = |i: usize| {
            rows[0][i]
                .as_deref()
                .unwrap_or("0")
                .parse::<i64>()
                .unwrap_or(0)
        };
        (n(0) >= 10 && n(1) >= 2).then_some(())
    })
    .await;
    stop(first).await.assert_code(0);
    stop(second).await.assert_code(0);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 1, "one notification for one state: {sent:#?}");
    assert_eq!(sent[0]["runs"][0]["outcome"], "found");
    assert_eq!(sent[0]["runs"][0]["change"], "new");
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE notified")
            .await,
        1
    );
}

/// The messages the webhook got, after checking that each is a change of
/// the flipping rule's state: `found` (new) and `clean` (recovered)
/// alternate, never the same state twice in a row.
async fn each_change_told_once(hook: &MockServer) -> Vec<Value> {
    let sent = payloads(hook).await;
    let told: Vec<(String, String)> = sent
        .iter()
        .map(|p| {
            let run = &p["runs"][0];
            (
                run["outcome"].as_str().unwrap_or("?").to_owned(),
                run["change"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    alternate(&told);
    sent
}

/// A webhook server that answers 200 after 700 ms: each teller is slow,
/// so the others read the history while it is still telling.
async fn slow_hook() -> MockServer {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(700)))
        .mount(&hook)
        .await;
    hook
}

/// Issue 9 "Done when": two replicas behave like one towards people. Both run
/// a quick report-only rule every second whose state flips every 3 s (found,
/// clean, found, ...), and the webhook answers slowly, so each replica reads
/// the history while the other is still telling. Without the per-pair claim
/// both told most changes (each read the history before the other recorded).
/// The audit table on each engine; the rule's own database is PostgreSQL.
async fn two_daemon_replicas_tell_each_state_change_once(audit_engine: Engine) {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(audit_engine).await;
    let hook = slow_hook().await;
    let case = audited(&app, &audit)
        .rule(FLIP)
        .config(&webhook(&format!("{}/hook", hook.uri())));
    case.write_config();
    let first = case.spawn(&["daemon"]);
    let second = case.spawn(&["daemon"]);
    eventually("6 notifications", async || {
        (payloads(&hook).await.len() >= 6).then_some(())
    })
    .await;
    let first = stop(first).await;
    first.assert_code(0);
    stop(second).await.assert_code(0);
    let sent = each_change_told_once(&hook).await;
    // Both replicas did real runs (not only skipped ones), and the audit
    // table's notified rows are exactly the messages.
    let found = audit
        .scalar("SELECT count(*) FROM dbjanitor_runs WHERE outcome IN ('found', 'clean')")
        .await;
    assert!(found >= 10, "real runs: {found}");
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE notified")
            .await,
        i64::try_from(sent.len()).unwrap_or(-1),
        "{sent:#?}"
    );
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_pairs WHERE rule = 'flip' AND database_name = 'main'")
            .await,
        1
    );
}

mod two_daemon_replicas_tell_each_state_change_once {
    use crate::util::Engine;
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        super::two_daemon_replicas_tell_each_state_change_once(Engine::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn mysql() {
        super::two_daemon_replicas_tell_each_state_change_once(Engine::MySql).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        super::two_daemon_replicas_tell_each_state_change_once(Engine::Sqlite).await
    }
}

/// Issue 9: a daemon and a timer (one-shot `run`, e.g. a CronJob kept
/// during a migration to the daemon) on the same pair. Before, `run` read
/// the history and recorded afterwards without the pair's claim, so while
/// one of them was telling a change (slow webhook) the other read a history
/// without it and told it again. Now `run` judges and records under the
/// same claim before it notifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_and_a_timer_tell_each_state_change_once() {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let hook = slow_hook().await;
    let case = audited(&app, &audit)
        .rule(FLIP)
        .config(&webhook(&format!("{}/hook", hook.uri())));
    case.write_config();
    let daemon = case.spawn(&["daemon"]);
    let until = Instant::now() + Duration::from_secs(14);
    let mut timer_runs = 0;
    while Instant::now() < until {
        let out = case.run(&["run"]);
        out.assert_code(0);
        timer_runs += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(daemon).await.assert_code(0);
    let sent = each_change_told_once(&hook).await;
    assert!(sent.len() >= 4, "{sent:#?}");
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE notified")
            .await,
        i64::try_from(sent.len()).unwrap_or(-1)
    );
    let recorded = audit.scalar("SELECT count(*) FROM dbjanitor_runs").await;
    assert!(
        recorded > timer_runs + 8,
        "timer runs {timer_runs}, rows {recorded}"
    );
}

/// How the audit database fails when replica A records its decision.
#[derive(Debug, Clone, Copy)]
enum AtCommit {
    /// The recording never commits: the connection is cut right after the
    /// run's row reached the server (rolled back), and the audit database
    /// then stays stalled for A — the soak's failure on stop 18.
    Lost,
    /// The COMMIT reaches the server (committed); its answer does not, and
    /// the audit database stays stalled for A.
    AnswerLost,
}

/// Issue 9, the soak's one duplicate: replica A judges `found` as news under
/// the pair's claim and the audit database fails as A records it; replica
/// B (direct to the audit database) then claims the pair. Before, A had
/// already told the receivers (delivery came before the COMMIT), so with
/// the COMMIT lost B read a history without A's row and told the same
/// change again; with only the answer lost, A inserted its runs a second
/// time (refused by the unique run id, retried for two minutes, logged as
/// not recorded). Now the decision is committed before anyone is told, and
/// A, unsure, tells nobody until a new claim shows whether its runs are
/// there: each change told once, each run recorded once.
async fn a_failure_at_the_claims_commit_tells_the_change_once(at: AtCommit) {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let proxy = FaultProxy::in_front_of(audit.url());
    let hook = MockServer::start().await;
    answer(&hook, 200).await;
    let replica = |audit_url: &str, every: &str| {
        Case::new()
            .database("main", app.url())
            .database("janitor", audit_url)
            .config("audit: { database: janitor, timeout: 2s }")
            .config(&webhook(&format!("{}/hook", hook.uri())))
            .rule(&format!(
                "name: steady\ndatabase: main\nschedule: \"@every {every}\"\nnotify: [ops]\ndetect: SELECT 1 AS x\n"
            ))
    };
    let a = replica(&proxy.url_for(audit.url()), "3s");
    let b = replica(audit.url(), "1s");
    let port = free_port();
    // A's ticks are whole multiples of 3 s since the epoch: start it just
    // after one, so that its first run comes about 3 s later, after the fault
    // below is armed (started just before one, A recorded and told its first
    // run before the fault, and the test failed at "nobody is told").
    let into_tick = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 3000;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(3050 - into_tick).unwrap_or(0),
    ))
    .await;
    let first = a.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    // Serving: its audit schema is migrated (a COMMIT of its own), and the
    // first tick is about 3 s away.
    eventually("/livez of A", async || http_get(port, "/livez")).await;
    match at {
        AtCommit::Lost => {
            // The outcome `found` bound as a text parameter of the run's INSERT.
            proxy.cut_when(b"\x00\x00\x00\x05found", When::After);
            proxy.stall_when(b"\x00\x00\x00\x05found", When::After);
        }
        // A simple-query COMMIT (the BEGIN's "READ COMMITTED" has no NUL after it).
        AtCommit::AnswerLost => proxy.stall_when(b"COMMIT\0", When::After),
    }
    eventually("the fault at A's recording", async || {
        proxy.triggers_fired().then_some(())
    })
    .await;
    let runs = async || {
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE rule = 'steady'")
            .await
    };
    assert_eq!(
        payloads(&hook).await.len(),
        0,
        "nobody is told before the decision is recorded"
    );
    let second = b.spawn(&["daemon"]);
    eventually("B's runs recorded while A's audit is stalled", async || {
        (runs().await >= 4).then_some(())
    })
    .await;
    proxy.release();
    // A retries with backoff (up to 8 s); its later runs queue behind.
    let released = runs().await;
    eventually("A recording again", async || {
        (runs().await >= released + 16).then_some(())
    })
    .await;
    let first = stop(first).await;
    let second = stop(second).await;
    first.assert_code(0);
    second.assert_code(0);
    assert_told_once_recorded_once(at, &audit, &hook, &first, &second).await;
}

/// After `a_failure_at_the_claims_commit_tells_the_change_once`: one message,
/// one notified row, every run either daemon finished recorded exactly once,
/// and A's log says how it settled the unconfirmed COMMIT.
async fn assert_told_once_recorded_once(
    at: AtCommit,
    audit: &TestDb,
    hook: &MockServer,
    first: &RunOutput,
    second: &RunOutput,
) {
    let sent = payloads(hook).await;
    assert_eq!(
        sent.len(),
        1,
        "one message for one change: {sent:#?}\nA:\n{}",
        first.stderr
    );
    assert_eq!(sent[0]["runs"][0]["change"], "new");
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE notified")
            .await,
        1
    );
    // Each run recorded once, none lost: every run either daemon finished.
    let finished = first.stderr.matches("rule finished").count()
        + second.stderr.matches("rule finished").count();
    let runs = audit
        .scalar("SELECT count(*) FROM dbjanitor_runs WHERE rule = 'steady'")
        .await;
    assert_eq!(
        usize::try_from(runs).unwrap_or(0),
        finished,
        "A:\n{}",
        first.stderr
    );
    assert_eq!(
        audit
            .scalar("SELECT count(*) - count(DISTINCT run_id) FROM dbjanitor_runs")
            .await,
        0
    );
    assert!(
        !first.stderr.contains("could not be recorded"),
        "A:\n{}",
        first.stderr
    );
    let expected = match at {
        AtCommit::Lost => "judged again against the history as it is now",
        AtCommit::AnswerLost => "recorded though the COMMIT's answer was lost",
    };
    assert!(first.stderr.contains(expected), "A:\n{}", first.stderr);
}

mod a_failure_at_the_claims_commit_tells_the_change_once {
    use super::AtCommit;
    #[tokio::test(flavor = "multi_thread")]
    async fn commit_lost() {
        super::a_failure_at_the_claims_commit_tells_the_change_once(AtCommit::Lost).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn answer_lost() {
        super::a_failure_at_the_claims_commit_tells_the_change_once(AtCommit::AnswerLost).await
    }
}

/// Issue 9: while the audit database is stalled the history cannot be read;
/// that is not "no history". The daemon judges the runs against its own last
/// known state of the pair: an unchanged `found` it already told stays
/// quiet (before: told again as `untracked` on every run of the stall), and
/// every run is still recorded once the database answers.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_history_falls_back_to_the_last_known_state() {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let proxy = FaultProxy::in_front_of(audit.url());
    let hook = MockServer::start().await;
    answer(&hook, 200).await;
    let port = free_port();
    let case = Case::new()
        .database("main", app.url())
        .database("janitor", &proxy.url_for(audit.url()))
        .config("audit: { database: janitor, timeout: 1s }")
        .config(&webhook(&format!("{}/hook", hook.uri())))
        .rule(
            "name: still.found\ndatabase: main\nschedule: \"@every 1s\"\nnotify: [ops]\ndetect: SELECT 1 AS x\n",
        );
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    eventually("/livez", async || http_get(port, "/livez")).await;
    let recorded = async || audit.scalar("SELECT count(*) FROM dbjanitor_runs").await;
    eventually("2 audit rows", async || {
        (recorded().await >= 2).then_some(())
    })
    .await;
    assert_eq!(payloads(&hook).await.len(), 1, "found is told once");
    proxy.stall();
    // Longer than the wait for the history (4 × audit.timeout).
    tokio::time::sleep(Duration::from_secs(9)).await;
    let during = http_get(port, "/metrics").expect("/metrics");
    assert!(
        metric_sum(&during, "dbjanitor_audit_errors_total") >= 2.0,
        "{during}"
    );
    proxy.cut();
    proxy.release();
    let stalled_rows = recorded().await;
    eventually("rows recorded again after the stall", async || {
        (recorded().await > stalled_rows + 2).then_some(())
    })
    .await;
    let out = stop(child).await;
    out.assert_code(0);
    assert!(
        out.stderr.contains("cannot read the run history"),
        "the fallback is logged\n{}",
        out.stderr
    );
    let sent = payloads(&hook).await;
    assert_eq!(
        sent.len(),
        1,
        "an unchanged state is not told again because the history was unreadable: {sent:#?}"
    );
    assert_eq!(sent[0]["runs"][0]["change"], "new");
    // No audit row lost: every run logged is recorded.
    let logged = out.stderr.matches("rule finished").count();
    assert_eq!(
        usize::try_from(recorded().await).unwrap_or(0),
        logged,
        "{}",
        out.stderr
    );
}

/// A one-shot run whose audit database does not answer cannot know whether
/// its outcome is news: it tells it with `change: unknown`, never `new`.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_without_a_readable_history_says_the_previous_state_is_unknown() {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let proxy = FaultProxy::in_front_of(audit.url());
    let hook = MockServer::start().await;
    answer(&hook, 200).await;
    let case = Case::new()
        .database("main", app.url())
        .database("janitor", &proxy.url_for(audit.url()))
        .config("audit: { database: janitor, timeout: 1s }")
        .config(&webhook(&format!("{}/hook", hook.uri())))
        .rule("name: one.found\ndatabase: main\nnotify: [ops]\ndetect: SELECT 1 AS x\n");
    case.run(&["run"]).assert_code(0);
    proxy.stall();
    let out = case.run(&["run"]);
    proxy.cut();
    proxy.release();
    out.assert_code(1);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0]["runs"][0]["change"], "new");
    assert_eq!(sent[1]["runs"][0]["change"], "unknown", "{sent:#?}");
    assert_eq!(sent[1]["runs"][0]["previous_outcome"], Value::Null);
    // Only the first run's row: the second could not be recorded.
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 1);
}

// ----------------------------------------------- 16.10: delivered, real state

/// Issue 16 item 10: found (notified) → failed (webhook 500, not delivered) →
/// failed again: notified now; a dry run in between does not count; the
/// later clean is a recovery from the failure the receivers were told of.
async fn alert_fatigue_follows_delivered_notifications(engine: Engine) {
    let app = TestDb::with_sql(
        engine,
        "CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t VALUES (1);",
    )
    .await;
    let audit = TestDb::new(engine).await;
    let hook = MockServer::start().await;
    answer(&hook, 200).await;
    let case = audited(&app, &audit)
        .rule("name: t.rows\ndatabase: main\nnotify: [ops]\ndetect: SELECT id FROM t\n")
        .config(&webhook(&format!("{}/hook", hook.uri())));
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--output", "json"];
        all.extend_from_slice(args);
        case.run(&all)
    };

    run(&[]).assert_code(0);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["runs"][0]["outcome"], "found");

    // The table is gone: failed, and the webhook answers 500 (not delivered).
    app.exec("DROP TABLE t").await;
    answer(&hook, 500).await;
    let out = run(&[]);
    out.assert_code(1);
    assert!(
        !out.record("t.rows", "main")["notify_errors"]
            .as_array()
            .expect("notify_errors")
            .is_empty()
    );
    assert_eq!(payloads(&hook).await.len(), 1, "attempted once");

    // Still failing, webhook back: nobody was told of the failure, so it is news.
    answer(&hook, 200).await;
    run(&[]).assert_code(1);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 1, "the failure is notified now: {sent:#?}");
    assert_eq!(sent[0]["runs"][0]["outcome"], "failed");
    assert_eq!(sent[0]["runs"][0]["change"], "new");
    assert_eq!(sent[0]["runs"][0]["previous_outcome"], "failed");

    // Unchanged and told: quiet. A dry run is notified on its own terms
    // (untracked) and changes nothing of that.
    answer(&hook, 200).await;
    run(&[]).assert_code(1);
    assert!(payloads(&hook).await.is_empty(), "unchanged: quiet");
    run(&["--dry-run"]).assert_code(1);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["runs"][0]["change"], "untracked");
    assert_eq!(sent[0]["dry_run"], true);
    let case = if engine == Engine::Sqlite {
        case
    } else {
        // The real notification is now 2 hours old, the dry run's is fresh:
        // the reminder is due, whatever the dry run was told.
        let two_hours_ago = match engine {
            Engine::Postgres => "started_at - interval '2 hours'",
            _ => "started_at - INTERVAL 2 HOUR",
        };
        audit
            .exec(&format!(
                "UPDATE dbjanitor_runs SET started_at = {two_hours_ago} WHERE NOT dry_run"
            ))
            .await;
        let case = case.config("defaults: { renotify_after: 1h }");
        answer(&hook, 200).await;
        case.run(&["run"]).assert_code(1);
        let sent = payloads(&hook).await;
        assert_eq!(sent.len(), 1, "a reminder: {sent:#?}");
        assert_eq!(sent[0]["runs"][0]["change"], "repeated");
        case
    };

    // The table is back, empty: clean, a recovery from the failure people were told of.
    answer(&hook, 200).await;
    app.exec("CREATE TABLE t (id integer PRIMARY KEY)").await;
    case.run(&["run"]).assert_code(0);
    let sent = payloads(&hook).await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["runs"][0]["outcome"], "clean");
    assert_eq!(sent[0]["runs"][0]["change"], "recovered");
    assert_eq!(sent[0]["runs"][0]["previous_outcome"], "failed");
    answer(&hook, 200).await;
    case.run(&["run"]).assert_code(0);
    assert!(payloads(&hook).await.is_empty(), "a recovery is told once");
}

// ------------------------------------------------------- 16.11: retention

/// Issue 16 item 11: retention deleted a yearly rule's only row, and `--due`
/// ran it again at once.
async fn retention_keeps_the_rows_due_and_notifications_read(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let case = audited(&app, &audit)
        .config("  keep: 1s")
        .rule("name: a.yearly\ndatabase: main\nschedule: \"@yearly\"\ndetect: SELECT id FROM job WHERE state = 'done'\n")
        .rule("name: b.manual\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'done'\n");
    let json = |args: &[&str]| {
        let mut all = vec!["run", "--output", "json"];
        all.extend_from_slice(args);
        case.run(&all)
    };
    let first = json(&["--due"]);
    first.assert_code(0);
    assert_eq!(first.outcome("a.yearly", "main"), "found");
    json(&["a.yearly"]).assert_code(0);
    json(&["a.yearly", "--dry-run"]).assert_code(0);
    let count = async |filter: &str| {
        audit
            .scalar(&format!(
                "SELECT count(*) FROM dbjanitor_runs WHERE rule = 'a.yearly' AND {filter}"
            ))
            .await
    };
    // The claim row of a pair nobody has claimed for long (a rule removed).
    audit
        .exec(
            "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) \
             VALUES ('gone', 'main', 'old-host', '2020-01-01 00:00:00')",
        )
        .await;
    // Everything is older than `keep` now; another run prunes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    json(&["b.manual"]).assert_code(0);
    assert_eq!(
        audit
            .strings("SELECT rule FROM dbjanitor_pairs ORDER BY rule")
            .await,
        ["b.manual"],
        "claim rows of pairs unclaimed for longer than keep go; the pair just claimed stays"
    );
    assert_eq!(count("dry_run = TRUE").await, 0, "old dry runs go");
    assert_eq!(
        count("dry_run = FALSE").await,
        1,
        "the latest real run stays"
    );
    // The yearly rule ran this year: nothing is due.
    let due = json(&["--due"]);
    due.assert_code(0);
    assert_eq!(due.json()["rules"], serde_json::json!([]), "{}", due.stdout);
    assert_eq!(count("dry_run = FALSE").await, 1);
}

// ------------------------------------------------ 16.13: dry-run metrics

/// Issue 16 item 13: a dry run set `last_success_timestamp_seconds` and the
/// outcome series of a pair whose real state was a failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_leaves_the_metrics_of_the_real_state_alone() {
    let app = TestDb::new(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let case = audited(&app, &audit).rule(STUCK);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("dbjanitor.prom");
    let file = path.display().to_string();
    let read = || parse_metrics(&std::fs::read_to_string(&path).expect("metrics file"));
    let series = |scrape: &prometheus_parse::Scrape, name: &str, outcome: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("rule") == Some("jobs.stuck")
                    && outcome.is_none_or(|o| s.labels.get("outcome") == Some(o))
            })
            .map(|s| s.value.clone())
    };
    // No table yet: the real run fails.
    case.run(&["run", "--metrics-file", &file]).assert_code(1);
    let failed = read();
    let one = Some(prometheus_parse::Value::Gauge(1.0));
    assert_eq!(
        series(&failed, "dbjanitor_last_run_outcome", Some("failed")),
        one
    );
    assert_eq!(
        series(&failed, "dbjanitor_last_success_timestamp_seconds", None),
        None
    );
    // The table appears; a dry run would fix it.
    app.exec(
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL); \
         INSERT INTO job VALUES (1, 'stuck');",
    )
    .await;
    case.run(&["run", "--dry-run", "--metrics-file", &file])
        .assert_code(0);
    let dry = read();
    assert_eq!(
        series(&dry, "dbjanitor_last_run_outcome", Some("failed")),
        one,
        "the real state is still the failure"
    );
    assert_eq!(
        series(&dry, "dbjanitor_last_run_outcome", Some("would_fix")),
        Some(prometheus_parse::Value::Gauge(0.0))
    );
    assert_eq!(
        series(&dry, "dbjanitor_last_success_timestamp_seconds", None),
        None
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        1
    );
    // The real fix moves them.
    case.run(&["run", "--metrics-file", &file]).assert_code(0);
    let fixed = read();
    assert_eq!(
        series(&fixed, "dbjanitor_last_run_outcome", Some("fixed")),
        one
    );
    assert!(series(&fixed, "dbjanitor_last_success_timestamp_seconds", None).is_some());
}

// ------------------------------------------------- 9.5: check --connect

/// Issue 9 item 5: `check --connect` said ok with the audit database down.
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_checks_the_audit_database() {
    let app = jobs(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Postgres).await;
    let dead = format!("postgres://postgres@127.0.0.1:{}/nothing", free_port());
    let down = Case::new()
        .database("main", app.url())
        .database("janitor", &dead)
        .config("audit: { database: janitor, timeout: 3s }")
        .rule(STUCK)
        .run(&["check", "--connect"]);
    down.assert_code(1);
    assert!(
        down.stdout.contains("audit database janitor: unreachable"),
        "{}",
        down.stdout
    );
    let case = audited(&app, &audit).rule(STUCK);
    let fresh = case.run(&["check", "--connect"]);
    fresh.assert_code(0);
    assert!(
        fresh
            .stdout
            .contains("audit database janitor: ok (no schema yet"),
        "{}",
        fresh.stdout
    );
    case.run(&["run"]).assert_code(0);
    let migrated = case.run(&["check", "--connect"]);
    migrated.assert_code(0);
    assert!(
        migrated.stdout.contains(&format!(
            "audit database janitor: ok (schema version {SCHEMA_VERSION})"
        )),
        "{}",
        migrated.stdout
    );
    // check changed nothing: one run, one row.
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 1);
}

// ------------------------------------------- 9.2: a stalled audit database

async fn a_stalled_audit_database_never_holds_up_the_schedule(engine: Engine) {
    let app = TestDb::new(engine).await;
    let audit = TestDb::new(engine).await;
    let proxy = FaultProxy::in_front_of(audit.url());
    let port = free_port();
    let case = Case::new()
        .database("main", app.url())
        .database("janitor", &proxy.url_for(audit.url()))
        .config("audit: { database: janitor, timeout: 2s }")
        .rule(
            "name: every.second\ndatabase: main\nschedule: \"@every 1s\"\ndetect: SELECT 1 AS x\n",
        );
    let child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    // The schema is migrated before the server starts.
    eventually("/livez", async || http_get(port, "/livez")).await;
    let recorded = async || audit.scalar("SELECT count(*) FROM dbjanitor_runs").await;
    eventually("2 audit rows", async || {
        (recorded().await >= 2).then_some(())
    })
    .await;
    let before = http_get(port, "/metrics").expect("/metrics");
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = http_get(port, "/metrics").expect("/metrics");
    let runs = |text: &str| metric_sum(text, "dbjanitor_runs_total");
    assert!(
        runs(&during) - runs(&before) >= 5.0,
        "the rule kept its schedule: {} runs in 10 s\n{during}",
        runs(&during) - runs(&before)
    );
    assert!(
        metric_sum(&during, "dbjanitor_audit_errors_total") >= 1.0,
        "audit failures are counted\n{during}"
    );
    assert!(
        metric_sum(&during, "dbjanitor_overlap_skips_total") <= 2.0,
        "no tick waited for the audit database\n{during}"
    );
    // Whatever the stalled connections still hold is lost with them, as
    // when a network path dies; then the database answers again.
    proxy.cut();
    proxy.release();
    let stalled_rows = recorded().await;
    eventually("rows recorded again after the stall", async || {
        (recorded().await > stalled_rows).then_some(())
    })
    .await;
    let out = stop(child).await;
    out.assert_code(0);
    // No audit row is lost: every run the daemon logged, those during the
    // stall included, is recorded (retried once the database answers).
    let logged = out.stderr.matches("rule finished").count();
    assert!(logged >= 10, "runs logged: {logged}\n{}", out.stderr);
    assert_eq!(
        usize::try_from(recorded().await).unwrap_or(0),
        logged,
        "every run the daemon logged has its audit row\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("the run history did not take the runs")
            || out.stderr.contains("cannot read the run history"),
        "audit failures are logged\n{}",
        out.stderr
    );
}

mod a_stalled_audit_database_never_holds_up_the_schedule {
    use crate::util::Engine;
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        super::a_stalled_audit_database_never_holds_up_the_schedule(Engine::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn mysql() {
        super::a_stalled_audit_database_never_holds_up_the_schedule(Engine::MySql).await
    }
}

// ------------------------------------ 16.12: MySQL migration and metadata lock

/// Issue 16 item 12: an open reader of the table (here an open transaction
/// that read it, as `mysqldump --single-transaction` keeps one) blocks the
/// v2 ALTER. The migration waits `migrate_lock_wait`, says why, applies
/// nothing and leaves nothing dirty; the next run, the reader gone, migrates.
#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_migration_waits_for_its_metadata_lock_within_a_bound() {
    let app = jobs(Engine::MySql).await;
    let audit = TestDb::new(Engine::MySql).await;
    store(&audit).migrate_to(1).await.expect("schema v1");
    let mut reader = audit.mysql().await;
    reader.execute("START TRANSACTION").await.expect("begin");
    reader
        .execute("SELECT count(*) FROM dbjanitor_runs")
        .await
        .expect("read");
    let case = audited(&app, &audit)
        .config("  migrate_lock_wait: 3s")
        .rule(STUCK);
    let started = Instant::now();
    let blocked = case.run(&["run", "--output", "json"]);
    blocked.assert_code(1);
    assert!(started.elapsed() < Duration::from_mins(1), "bounded");
    assert_eq!(
        blocked.outcome("jobs.stuck", "main"),
        "fixed",
        "the rules ran"
    );
    let error = blocked.json()["audit_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("could not get the metadata lock") && error.contains("Nothing was applied"),
        "{error}\n{}",
        blocked.stderr
    );
    assert!(
        blocked.stderr.contains("waiting for the metadata lock"),
        "{}",
        blocked.stderr
    );
    let versions = audit
        .rows("SELECT version, dirty FROM dbjanitor_schema_version ORDER BY version")
        .await;
    assert_eq!(
        versions.len(),
        1,
        "v2 not recorded, not dirty: {versions:?}"
    );
    assert!(!truthy(versions[0][1].as_ref()));
    reader.execute("COMMIT").await.expect("commit");
    let _ = reader.close().await;
    // The reader is gone: the next run migrates and records.
    case.run(&["run"]).assert_code(0);
    let versions = audit
        .rows("SELECT version, dirty FROM dbjanitor_schema_version ORDER BY version")
        .await;
    assert_eq!(versions.len(), SCHEMA_VERSION as usize);
    assert!(versions.iter().all(|v| !truthy(v[1].as_ref())));
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 1);
}

/// A dirty row whose step the schema shows completed, or not started, is
/// resolved by the next start on its own; a half-applied one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_mysql_migration_recovers_from_the_schema() {
    let app = jobs(Engine::MySql).await;
    // Completed: v2's columns are there.
    let audit = TestDb::new(Engine::MySql).await;
    store(&audit).migrate().await.expect("schema");
    audit
        .exec("UPDATE dbjanitor_schema_version SET dirty = TRUE WHERE version = 2")
        .await;
    audited(&app, &audit)
        .rule(STUCK)
        .run(&["run"])
        .assert_code(0);
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_schema_version WHERE dirty = FALSE")
            .await,
        i64::from(SCHEMA_VERSION)
    );
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 1);
    // Not started: the row is there, none of v2's columns.
    let audit = TestDb::new(Engine::MySql).await;
    store(&audit).migrate_to(1).await.expect("schema v1");
    audit
        .exec(
            "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) \
             VALUES (2, 'notified', NOW(6), TRUE, 'killed')",
        )
        .await;
    audited(&app, &audit)
        .rule(STUCK)
        .run(&["run"])
        .assert_code(0);
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_schema_version WHERE dirty = FALSE")
            .await,
        i64::from(SCHEMA_VERSION)
    );
    assert_eq!(
        audit
            .scalar("SELECT count(*) FROM dbjanitor_runs WHERE notified = FALSE")
            .await,
        1
    );
}
