//! Notifications against real servers on loopback (see `sinks`): what the
//! webhook and mail say, that one run sends one digest per notifier, that a
//! dead, slow or flaky endpoint never costs a fix nor changes the exit
//! status, that no password leaks, and the alert-fatigue policy over a real
//! run history (`MemoryHistory`).

use std::time::Duration;

use chrono::Utc;
use dbjanitor::engine::{RunOptions, run_plan};
use dbjanitor::history::{History, MemoryHistory};
use dbjanitor::notify::deliver_at;
use dbjanitor::plan::{Plan, Selection};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::sinks::{HttpSink, SmtpSink, refused_url};
use crate::util::{Case, Engine, TestDb, pg_server};

/// Jobs 1–3 are stuck (the rot), 4 is done, 5 and 6 are running.
const SCHEMA: &str =
    "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL, owner varchar(32));
INSERT INTO job VALUES (1, 'stuck', 'w1'), (2, 'stuck', 'w2'), (3, 'stuck', NULL),
  (4, 'done', 'w1'), (5, 'running', 'w2'), (6, 'running', 'w3');";

const DESCRIPTION: &str = "Jobs stay stuck when their worker dies.";

/// Retry settings that keep failing deliveries short.
const FAST: &str = "timeout: 2s, retries: 1, backoff: 50ms, deadline: 10s";

/// The rule that fixes the stuck jobs, plus `extra` YAML lines.
fn stuck_rule(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndescription: |\n  {DESCRIPTION}\n  Marks them failed.\ndatabase: main\n\
         detect: SELECT id, state, owner FROM job WHERE state = 'stuck' ORDER BY id\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n{extra}"
    )
}

/// A report-only rule finding the done job.
fn found_rule(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'done'\n{extra}"
    )
}

/// A rule whose guard trips: two running jobs, max_rows 1.
fn guard_rule(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'running'\n\
         fix: UPDATE job SET state = 'failed' WHERE state = 'running'\nmax_rows: 1\n{extra}"
    )
}

/// The stuck-jobs rule on `db`, notifying `notifier`, with `notifiers` YAML.
fn stuck_case(db: &TestDb, notifier: &str, notifiers: &str) -> Case {
    Case::new()
        .database("main", db.url())
        .rule(&stuck_rule(
            "jobs.stuck",
            &format!("notify: [{notifier}]\n"),
        ))
        .config(notifiers)
}

/// The report-only rule on `db`, notifying the JSON webhook at `sink`, with
/// `renotify_after: 1h`.
fn found_case(db: &TestDb, sink: &HttpSink) -> Case {
    Case::new()
        .database("main", db.url())
        .rule(&found_rule(
            "jobs.done",
            "notify: [ops]\nrenotify_after: 1h\n",
        ))
        .config(&webhook(&sink.url("/hook"), "json"))
}

async fn jobs() -> TestDb {
    TestDb::with_sql(Engine::Sqlite, SCHEMA).await
}

async fn states(db: &TestDb) -> Vec<String> {
    db.rows("SELECT state FROM job ORDER BY id")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

fn fixed_states() -> Vec<String> {
    ["failed", "failed", "failed", "done", "running", "running"]
        .map(str::to_owned)
        .to_vec()
}

fn webhook(url: &str, format: &str) -> String {
    format!("notifiers:\n  ops:\n    webhook: {{ url: \"{url}\", format: {format}, {FAST} }}\n")
}

fn email(smtp: &str, extra: &str) -> String {
    format!(
        "notifiers:\n  dba:\n    email:\n      smtp: \"{smtp}\"\n      tls: none\n      \
         from: \"Janitor <janitor@example.org>\"\n      to: [dba@example.org, ops@example.org]\n      \
         cc: [lead@example.org]\n      {}\n{extra}",
        FAST.replace(", ", "\n      ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn json_webhook_carries_the_versioned_payload_and_headers() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let out = stuck_case(
        &db,
        "ops",
        &format!(
            "notifiers:\n  ops:\n    webhook:\n      url: \"{}\"\n      format: json\n      \
             headers: {{ Authorization: \"Bearer ${{HOOK_TOKEN}}\", X-Team: dba }}\n",
            sink.url("/hooks/janitor")
        ),
    )
    .env("HOOK_TOKEN", "tok-123")
    .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());
    assert_eq!(
        out.record("jobs.stuck", "main")["notify_errors"],
        Value::Null
    );

    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/janitor");
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer tok-123"));
    assert_eq!(request.header("x-team"), Some("dba"));
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("dbjanitor/")),
        "{request:#?}"
    );

    let body = &request.json;
    assert_eq!(body["schema"], "dbjanitor.notification");
    assert_eq!(body["version"], 1);
    assert_eq!(body["title"], "[dbjanitor] fixed: jobs.stuck on main");
    assert!(
        body["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{body}"
    );
    assert_eq!(body["dry_run"], false);
    assert_eq!(body["summary"]["total"], 1);
    assert_eq!(body["summary"]["worst"], "fixed");
    assert_eq!(body["summary"]["counts"]["fixed"], 1);
    let run = &body["runs"][0];
    assert_eq!(run["rule"], "jobs.stuck");
    assert_eq!(run["database"], "main");
    assert_eq!(run["outcome"], "fixed");
    assert_eq!(run["detected"], 3);
    assert_eq!(run["changed"], 3);
    assert_eq!(run["remaining"], 0);
    assert_eq!(run["dry_run"], false);
    assert_eq!(run["reason"], Value::Null);
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["change"], "untracked");
    assert!(run["duration_ms"].is_u64());
    assert!(
        run["description"]
            .as_str()
            .is_some_and(|d| d.starts_with(DESCRIPTION)),
        "{run}"
    );
    assert_eq!(
        run["sample"]["columns"],
        serde_json::json!(["id", "state", "owner"])
    );
    assert_eq!(
        run["sample"]["rows"],
        serde_json::json!([
            ["1", "stuck", "w1"],
            ["2", "stuck", "w2"],
            ["3", "stuck", null]
        ])
    );
    // The database is named, never located.
    assert!(!request.raw.contains(db.url()), "{}", request.raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_webhook_sends_text_and_attachments() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let out = stuck_case(
        &db,
        "ops",
        &webhook(&sink.url("/services/T0/B0/x"), "slack"),
    )
    .run(&["run", "--dry-run"]);
    out.assert_code(0);
    // Dry run: the data is as it was.
    assert_eq!(states(&db).await[..3], ["stuck", "stuck", "stuck"]);
    assert!(out.stdout.contains("would_fix"), "{}", out.stdout);

    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let body = &requests[0].json;
    assert_eq!(
        requests[0].content_type.as_deref(),
        Some("application/json")
    );
    let text = body["text"].as_str().expect("text");
    assert!(
        text.starts_with("[dbjanitor] would_fix: jobs.stuck on main (dry run) on "),
        "{text}"
    );
    let attachments = body["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1);
    let a = &attachments[0];
    assert_eq!(a["fallback"], "would_fix: jobs.stuck on main (dry run)");
    assert_eq!(a["title"], "would_fix: jobs.stuck on main (dry run)");
    assert!(a["color"].as_str().is_some_and(|c| c.starts_with('#')));
    assert_eq!(a["mrkdwn_in"], serde_json::json!(["text"]));
    let text = a["text"].as_str().expect("attachment text");
    assert!(text.starts_with(DESCRIPTION), "{text}");
    assert!(text.contains("sample (3 of 3 rows):\n```\n"), "{text}");
    assert!(text.contains("NULL"), "{text}");
    let fields: Vec<(String, String)> = a["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap_or_default().to_owned(),
                f["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        fields.contains(&("detected".to_owned(), "3".to_owned())),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("changed".to_owned(), "3".to_owned())),
        "{fields:?}"
    );
    // Slack's own layout only: no Block Kit, which Mattermost drops.
    assert!(body.get("blocks").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn email_has_recipients_subject_and_plain_text_body() {
    let db = jobs().await;
    let smtp = SmtpSink::plain();
    let out = stuck_case(&db, "dba", &email(&smtp.url(), "")).run(&["run"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "janitor@example.org");
    let mut recipients = mail.recipients.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        ["dba@example.org", "lead@example.org", "ops@example.org"]
    );
    assert_eq!(mail.subject(), "[dbjanitor] fixed: jobs.stuck on main");
    assert_eq!(
        mail.header("To").as_deref(),
        Some("dba@example.org, ops@example.org")
    );
    assert_eq!(mail.header("Cc").as_deref(), Some("lead@example.org"));
    assert_eq!(
        mail.header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        mail.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    let body = mail.body();
    for needle in [
        "fixed: jobs.stuck on main\n",
        DESCRIPTION,
        "  detected:  3\n",
        "  changed:   3\n",
        "  remaining: 0\n",
        "  sample (3 of 3 rows):\n",
        " id  state  owner",
        " 3   stuck  NULL",
        // The signature separator survives the transfer encoding.
        "\n-- \nSent by dbjanitor on ",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_run_sends_one_digest_per_notifier() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let smtp = SmtpSink::plain();
    let notifiers = format!(
        "{}{}",
        webhook(&sink.url("/hook"), "json"),
        email(&smtp.url(), "").replace("notifiers:\n", "")
    );
    let out = Case::new()
        .database("main", db.url())
        .rule(&stuck_rule("a.stuck", ""))
        .rule(&found_rule("b.done", ""))
        .rule(&guard_rule("c.running", ""))
        .config(&notifiers)
        .config("defaults: { notify: [ops, dba] }")
        .run(&["run", "--output", "json"]);
    // A guard tripped: exit 3, whatever the notifiers did.
    out.assert_code(3);
    assert_eq!(out.outcome("a.stuck", "main"), "fixed");
    assert_eq!(out.outcome("b.done", "main"), "found");
    assert_eq!(out.outcome("c.running", "main"), "guard_tripped");
    assert_eq!(states(&db).await, fixed_states());

    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1, "one POST for three rules: {requests:#?}");
    let body = &requests[0].json;
    assert_eq!(body["summary"]["total"], 3);
    assert_eq!(body["summary"]["worst"], "guard_tripped");
    let order: Vec<&str> = body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(order, ["c.running", "b.done", "a.stuck"], "worst first");
    assert_eq!(
        body["title"],
        "[dbjanitor] 1 guard_tripped, 1 found, 1 fixed: 3 rule runs"
    );
    assert_eq!(body["runs"][0]["reason"], "detect_over_max_rows");

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one mail for three rules: {mails:#?}");
    assert_eq!(
        mails[0].subject(),
        "[dbjanitor] 1 guard_tripped, 1 found, 1 fixed: 3 rule runs"
    );
    let body = mails[0].body();
    let positions: Vec<usize> = [
        "guard_tripped: c.running on main",
        "found: b.done on main",
        "fixed: a.stuck on main",
    ]
    .iter()
    .map(|h| {
        body.find(h)
            .unwrap_or_else(|| panic!("{h:?} missing in:\n{body}"))
    })
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "worst first:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_on_decides_which_runs_are_sent() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let case = Case::new()
        .database("main", db.url())
        // fixed, but only failures are wanted: not sent.
        .rule(&stuck_rule(
            "a.stuck",
            "notify: [ops]\nnotify_on: [failed]\n",
        ))
        // found, wanted by default: sent.
        .rule(&found_rule("b.done", "notify: [ops]\n"))
        // clean: not wanted by default.
        .rule(&found_rule("c.none", "notify: [ops]\n").replace("'done'", "'none'"))
        // found, but the rule names no notifier.
        .rule(&found_rule("d.quiet", "notify: []\n"))
        .config(&webhook(&sink.url("/hook"), "json"));
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome("a.stuck", "main"), "fixed");
    assert_eq!(out.outcome("c.none", "main"), "clean");
    assert_eq!(out.outcome("d.quiet", "main"), "found");
    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let rules: Vec<&str> = requests[0].json["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(rules, ["b.done"]);

    // A run with nothing to say sends nothing at all.
    let out = case.run(&["run", "a.stuck", "c.none", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome("a.stuck", "main"), "clean");
    assert_eq!(sink.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_costs_no_fix_and_no_exit_status() {
    let db = jobs().await;
    let url = refused_url("/hook");
    let out = stuck_case(&db, "ops", &webhook(&url, "slack")).run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());
    let record = out.record("jobs.stuck", "main");
    assert_eq!(record["outcome"], "fixed");
    let errors = record["notify_errors"].as_array().expect("notify_errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].as_str().expect("text");
    assert!(
        error.starts_with("ops (webhook): cannot connect: "),
        "{error}"
    );
    assert!(error.contains("2 attempts, no retries left"), "{error}");
    assert!(!error.contains(&url), "the URL may hold a token: {error}");
    assert!(out.stderr.contains("notification failed"), "{}", out.stderr);
    assert!(out.stderr.contains("WARN"), "{}", out.stderr);

    // The text report lists it too.
    db.exec("UPDATE job SET state = 'stuck' WHERE id = 1").await;
    let out = stuck_case(&db, "ops", &webhook(&url, "slack")).run(&["run"]);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("  notify error: ops (webhook): cannot connect"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_endpoint_is_cut_off_by_the_timeout() {
    let db = jobs().await;
    let sink = HttpSink::slow(Duration::from_mins(1)).await;
    let out = stuck_case(
        &db,
        "ops",
        &format!(
            "notifiers:\n  ops:\n    webhook: {{ url: \"{}\", timeout: 300ms, retries: 1, backoff: 50ms, deadline: 10s }}\n",
            sink.url("/hook")
        ))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());
    let record = out.record("jobs.stuck", "main");
    let error = record["notify_errors"][0].as_str().expect("notify error");
    assert!(error.starts_with("ops (webhook): "), "{error}");
    assert!(error.contains("timed out"), "{error}");
    assert!(error.contains("2 attempts"), "{error}");
    // Both attempts reached the server and were abandoned.
    assert_eq!(sink.requests().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_is_retried() {
    let db = jobs().await;
    let sink = HttpSink::failing(500, 1).await;
    let out = stuck_case(&db, "ops", &webhook(&sink.url("/hook"), "json"))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(
        out.record("jobs.stuck", "main")["notify_errors"],
        Value::Null
    );
    let requests = sink.requests().await;
    assert_eq!(requests.len(), 2, "500, then 200: {requests:#?}");
    assert_eq!(requests[0].json, requests[1].json, "the same message again");
    assert!(out.stderr.contains("notification sent"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_error_is_not_retried() {
    let db = jobs().await;
    let sink = HttpSink::failing(404, 5).await;
    let out = stuck_case(&db, "ops", &webhook(&sink.url("/hook"), "json"))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let error = out.record("jobs.stuck", "main")["notify_errors"][0]
        .as_str()
        .expect("notify error")
        .to_owned();
    assert!(
        error.contains("HTTP 404 Not Found: try again later (1 attempt, not retried"),
        "{error}"
    );
    assert_eq!(sink.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_smtp_refusal_is_retried() {
    let db = jobs().await;
    let smtp = SmtpSink::refusing(1);
    let out = stuck_case(&db, "dba", &email(&smtp.url(), "")).run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(
        out.record("jobs.stuck", "main")["notify_errors"],
        Value::Null
    );
    assert_eq!(smtp.mails().len(), 1, "451 once, then accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_is_required_when_asked_for() {
    let db = jobs().await;
    // This relay offers no STARTTLS: never fall back to plain text.
    let smtp = SmtpSink::plain();
    let out = stuck_case(
        &db,
        "dba",
        &email(&smtp.url(), "").replace("tls: none", "tls: starttls"),
    )
    .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());
    let error = out.record("jobs.stuck", "main")["notify_errors"][0]
        .as_str()
        .expect("notify error")
        .to_owned();
    assert!(error.starts_with("dba (email): "), "{error}");
    assert!(error.to_lowercase().contains("starttls"), "{error}");
    assert!(smtp.mails().is_empty());
}

const DB_PASSWORD: &str = "Db-pw-7Hq2x9";
const SMTP_PASSWORD: &str = "Smtp-pw-K3m8v";
const HOOK_TOKEN: &str = "Hook-tok-R5n1c";

#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_any_message() {
    // PostgreSQL here trusts local connections: a URL with a password connects.
    let db = TestDb::with_sql(Engine::Postgres, SCHEMA).await;
    let url =
        pg_server().replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1) + "/" + &db.name;
    assert!(url.contains(DB_PASSWORD));
    // A second database that refuses connections: its error text goes into the messages.
    let broken = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/none");
    let sink = HttpSink::ok().await;
    let smtp = SmtpSink::starttls();
    let case = Case::new()
        .database("main", &url)
        .database("broken", &broken)
        .rule(&stuck_rule("jobs.stuck", ""))
        .rule(&stuck_rule("jobs.broken", "").replace("database: main", "database: broken"))
        .config(&format!(
            "notifiers:\n  ops:\n    webhook:\n      url: \"{}\"\n      \
             headers: {{ Authorization: \"Bearer ${{HOOK_TOKEN}}\" }}\n  dba:\n    email:\n      \
             smtp: \"{}\"\n      tls: starttls\n      ca_file: ca.pem\n      \
             from: janitor@example.org\n      to: [dba@example.org]\n      username: janitor\n      \
             password_env: SMTP_PASSWORD\n      retries: 0\n\
             defaults: {{ notify: [ops, dba] }}\n",
            sink.url("/hook"),
            smtp.url()
        ))
        .env("HOOK_TOKEN", HOOK_TOKEN)
        .env("SMTP_PASSWORD", SMTP_PASSWORD)
        .env("RUST_LOG", "debug");
    std::fs::write(
        case.dir().join("ca.pem"),
        smtp.ca_pem.as_deref().expect("CA"),
    )
    .expect("ca.pem");
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(1);
    assert_eq!(out.outcome("jobs.stuck", "main"), "fixed");
    assert_eq!(out.outcome("jobs.broken", "broken"), "failed");
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    assert!(
        !out.stdout.contains("notify_errors"),
        "both notifiers delivered:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // The relay got the SMTP password through AUTH (over TLS), and nowhere else.
    assert_eq!(
        smtp.logins(),
        [("janitor".to_owned(), SMTP_PASSWORD.to_owned())]
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].subject(),
        "[dbjanitor] 1 failed, 1 fixed: 2 rule runs"
    );
    assert!(mails[0].body().contains("error:"), "{}", mails[0].body());
    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {HOOK_TOKEN}").as_str())
    );
    let failed = &requests[0].json["runs"][0];
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["reason"], "connect");

    let mut everything = vec![
        ("mail".to_owned(), mails[0].data.clone()),
        ("stdout".to_owned(), out.stdout.clone()),
        ("stderr".to_owned(), out.stderr.clone()),
    ];
    for request in &requests {
        let mut text = request.everything();
        // The token is meant for its one header; everywhere else it is a leak.
        text = text.replacen(&format!("authorization: Bearer {HOOK_TOKEN}"), "", 1);
        everything.push(("webhook request".to_owned(), text));
    }
    for (what, text) in everything {
        for secret in [DB_PASSWORD, SMTP_PASSWORD, HOOK_TOKEN] {
            assert!(!text.contains(secret), "{secret} in the {what}:\n{text}");
        }
    }
}

/// The alert-fatigue policy over a real history: the engine runs for real on
/// SQLite, delivery goes to a real HTTP server, `MemoryHistory` remembers.
#[tokio::test(flavor = "multi_thread")]
async fn with_history_only_changes_recoveries_and_reminders_are_sent() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let case = found_case(&db, &sink);
    let config = dbjanitor::config::load(&case.write_config()).expect("valid config");
    let plan = Plan::select(&config, &Selection::default()).expect("plan");
    let history = MemoryHistory::default();
    let cancel = CancellationToken::new();
    let sent = || async { sink.requests().await };

    // Each step: run the engine, deliver at `hours` from now, check the result.
    let step = |hours: i64| {
        let (config, plan, history, cancel) = (&config, &plan, &history, &cancel);
        async move {
            let mut records = run_plan(plan, &RunOptions::default(), cancel).await;
            let now = Utc::now() + chrono::Duration::hours(hours);
            let notified = deliver_at(config, &mut records, Some(history), now).await;
            // The caller records the runs with the flags, as `run` and the daemon do.
            history
                .record(&records, &notified)
                .await
                .expect("record history");
            (records[0].outcome.to_string(), notified)
        }
    };

    // 1. First run finds the done job: news.
    assert_eq!(step(0).await, ("found".to_owned(), vec![true]));
    assert_eq!(sent().await.len(), 1);
    assert_eq!(sent().await[0].json["runs"][0]["change"], "new");
    // 2. Same state a minute later: quiet.
    assert_eq!(step(0).await, ("found".to_owned(), vec![false]));
    assert_eq!(sent().await.len(), 1);
    // 3. Same state after renotify_after: a reminder.
    assert_eq!(step(2).await, ("found".to_owned(), vec![true]));
    let requests = sent().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].json["runs"][0]["change"], "repeated");
    assert_eq!(requests[1].json["runs"][0]["previous_outcome"], "found");
    // 4. Someone removed the row: recovery, although clean is not in notify_on.
    db.exec("UPDATE job SET state = 'archived' WHERE state = 'done'")
        .await;
    assert_eq!(step(2).await, ("clean".to_owned(), vec![true]));
    let requests = sent().await;
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].json["runs"][0]["change"], "recovered");
    assert_eq!(requests[2].json["runs"][0]["outcome"], "clean");
    assert_eq!(
        requests[2].json["title"],
        "[dbjanitor] recovered (clean): jobs.done on main"
    );
    // 5. Still clean: quiet.
    assert_eq!(step(3).await, ("clean".to_owned(), vec![false]));
    assert_eq!(sent().await.len(), 3);
    // 6. The table is gone: the first failure is news at once.
    db.exec("DROP TABLE job").await;
    assert_eq!(step(3).await, ("failed".to_owned(), vec![true]));
    let requests = sent().await;
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[3].json["runs"][0]["outcome"], "failed");
    assert_eq!(requests[3].json["runs"][0]["change"], "new");
    assert!(
        requests[3].json["runs"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("job"))
    );
}

/// Without history (a one-shot run, no audit table) every matching run is sent.
#[tokio::test(flavor = "multi_thread")]
async fn without_history_every_matching_run_is_sent() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let case = found_case(&db, &sink);
    for _ in 0..2 {
        case.run(&["run"]).assert_code(0);
    }
    let requests = sink.requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].json["runs"][0]["change"], "untracked");
}

/// With an audit table, one-shot runs (CronJob, timer) remember what they
/// notified: the second identical run is quiet, and the audit rows say so.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_table_quiets_repeats_of_one_shot_runs() {
    let db = jobs().await;
    let sink = HttpSink::ok().await;
    let case = found_case(&db, &sink).config("audit: { database: main }");
    for _ in 0..2 {
        case.run(&["run"]).assert_code(0);
    }
    let requests = sink.requests().await;
    assert_eq!(
        requests.len(),
        1,
        "the repeat of an unchanged state is quiet"
    );
    assert_eq!(requests[0].json["runs"][0]["change"], "new");
    let rows = db
        .rows("SELECT outcome, notified FROM dbjanitor_runs ORDER BY id")
        .await;
    let rows: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("found".to_owned(), "1".to_owned()),
            ("found".to_owned(), "0".to_owned())
        ]
    );
}

/// Issue 9.7: a receiver that echoes the request (Express answers 404
/// `Cannot POST /hooks/SECRET-TOKEN`) must not carry the URL's path, query or
/// a header value into stderr (even at trace level), the report or the run's
/// `notify_errors`. Only scheme, host and port may show.
#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_webhook_path_is_scrubbed_everywhere() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};
    const PATH_TOKEN: &str = "SECRET-TOKEN-4711";
    const QUERY_TOKEN: &str = "QUERY-SECRET-0815";
    const HEADER_TOKEN: &str = "HEADER-SECRET-1234";
    let server = MockServer::builder().start().await;
    Mock::given(method("POST"))
        .respond_with(|request: &Request| {
            let header = request
                .headers
                .get("x-hook-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let target = format!(
                "{}?{}",
                request.url.path(),
                request.url.query().unwrap_or_default()
            );
            ResponseTemplate::new(404).set_body_string(format!(
                "Cannot POST {target} (key {header}; {})",
                request.url
            ))
        })
        .mount(&server)
        .await;
    let db = jobs().await;
    let url = format!("{}/hooks/{PATH_TOKEN}?key={QUERY_TOKEN}", server.uri());
    let out = stuck_case(
        &db,
        "ops",
        &format!(
            "notifiers:\n  ops:\n    webhook: {{ url: \"{url}\", headers: {{ X-Hook-Key: \"{HEADER_TOKEN}\" }}, {FAST} }}\n"
        ),
    )
    .env("RUST_LOG", "trace")
    .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(states(&db).await, fixed_states());
    let error = out.record("jobs.stuck", "main")["notify_errors"][0]
        .as_str()
        .expect("notify error")
        .to_owned();
    assert!(
        error.contains("HTTP 404 Not Found: Cannot POST ***"),
        "{error}"
    );
    assert_eq!(server.received_requests().await.map_or(0, |r| r.len()), 1);
    for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for secret in [PATH_TOKEN, QUERY_TOKEN, HEADER_TOKEN, "hooks/"] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
}
