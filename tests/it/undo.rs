//! Issue 14 (undo), step 1: every run has one id, the same in the text and
//! JSON reports, the log lines, the audit row, the webhook JSON, the Slack message and the
//! mail, on every engine.

use serde_json::Value;

use crate::audit::{STUCK, audited, jobs};
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
