//! The commands an operator reaches for around the main job: `init` (a
//! starter config `check` accepts), `completions`, `man`, `version`,
//! `notify-test` against real webhook servers, and the `run` flags
//! `--no-notify` and `--max-rows`, with the rows checked afterwards.

use std::process::Command;

use crate::sinks::{HttpSink, refused_url};
use crate::util::{Case, Engine, TestDb};

/// `dbjanitor` with `args`, outside any config (for the commands that need none).
fn dbjanitor(args: &[&str]) -> crate::util::RunOutput {
    crate::util::RunOutput::from(
        Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
            .args(args)
            .output()
            .expect("run dbjanitor"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_config_that_check_accepts_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("dir");
    let target = dir.path().join("janitor");
    let target_text = target.display().to_string();
    let out = dbjanitor(&["init", &target_text]);
    out.assert_code(0);
    assert!(out.stdout.contains("wrote "), "{}", out.stdout);
    let config = target.join("dbjanitor.yaml");
    let rule = target.join("rules/example/stuck-jobs.yaml");
    let written = std::fs::read_to_string(&rule).expect("example rule");

    // `check` accepts it as written, once the URL variable is set.
    let db = TestDb::new(Engine::Sqlite).await;
    let check = Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(["--config", &config.display().to_string(), "check"])
        .env("APP_DB_URL", db.url())
        .output()
        .expect("check");
    let check = crate::util::RunOutput::from(check);
    check.assert_code(0);
    assert!(
        check.stdout.contains("ok: 1 rule, 1 database"),
        "{}",
        check.stdout
    );

    // A second init refuses, names the file, and changes nothing.
    std::fs::write(&rule, "# edited by the operator\n").expect("edit");
    let again = dbjanitor(&["init", &target_text]);
    again.assert_code(2);
    assert!(
        again.stderr.contains("dbjanitor.yaml already exists"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&rule).expect("rule"),
        "# edited by the operator\n"
    );
    assert!(written.contains("name: example.stuck-jobs"));
}

#[test]
fn completions_are_valid_scripts_that_know_every_command() {
    let out = dbjanitor(&["completions", "bash"]);
    out.assert_code(0);
    for command in [
        "run",
        "check",
        "daemon",
        "init",
        "notify-test",
        "completions",
    ] {
        assert!(
            out.stdout.contains(command),
            "bash completion lacks {command}"
        );
    }
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("dbjanitor.bash");
    std::fs::write(&script, &out.stdout).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let zsh = dbjanitor(&["completions", "zsh"]);
    zsh.assert_code(0);
    assert!(
        zsh.stdout.starts_with("#compdef dbjanitor"),
        "{}",
        zsh.stdout
    );
    dbjanitor(&["completions", "tcsh"]).assert_code(2);
}

#[test]
fn man_page_and_version() {
    let man = dbjanitor(&["man"]);
    man.assert_code(0);
    assert!(man.stdout.contains(".TH dbjanitor"), "{}", man.stdout);
    assert!(man.stdout.contains("notify\\-test"), "{}", man.stdout);
    let version = dbjanitor(&["version"]);
    version.assert_code(0);
    assert!(
        version
            .stdout
            .starts_with(&format!("dbjanitor {}\n", env!("CARGO_PKG_VERSION"))),
        "{}",
        version.stdout
    );
    assert!(version.stdout.contains("audit schema: up to version "));
    for command in [
        "run",
        "check",
        "list",
        "daemon",
        "demo",
        "init",
        "notify-test",
        "completions",
        "man",
        "version",
        "history",
        "show",
    ] {
        let help = dbjanitor(&[command, "--help"]);
        help.assert_code(0);
        assert!(
            help.stdout.contains("Example"),
            "`{command} --help` shows no example"
        );
    }
}

/// A config with a database, no rule, and `notifiers` YAML.
async fn notifier_case(notifiers: &str) -> (TestDb, Case) {
    let db = TestDb::new(Engine::Sqlite).await;
    let case = Case::new().database("main", db.url()).config(notifiers);
    (db, case)
}

const FAST: &str = "timeout: 2s, retries: 1, backoff: 50ms, deadline: 10s";

#[tokio::test(flavor = "multi_thread")]
async fn notify_test_sends_a_marked_message_and_reports_delivery() {
    let sink = HttpSink::ok().await;
    let (_db, case) = notifier_case(&format!(
        "notifiers:\n  ops:\n    webhook: {{ url: \"{}\", format: json, {FAST} }}\n  \
         dead:\n    webhook: {{ url: \"{}\", format: slack, {FAST} }}\n",
        sink.url("/hooks/SECRET-TOKEN"),
        refused_url("/hooks/OTHER-SECRET")
    ))
    .await;

    let one = case.run(&["notify-test", "ops"]);
    one.assert_code(0);
    assert!(one.stdout.contains("ops"), "{}", one.stdout);
    assert!(
        one.stdout.contains("delivered (1 attempt)"),
        "{}",
        one.stdout
    );
    let requests = sink.requests().await;
    assert_eq!(requests.len(), 1);
    let run = &requests[0].json["runs"][0];
    assert_eq!(run["rule"], "dbjanitor.notify-test");
    assert!(
        run["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("TEST MESSAGE"),
        "{}",
        requests[0].raw
    );

    // Every notifier: the dead one is reported, exit 1, no secret shown.
    let all = case.run(&["notify-test"]);
    all.assert_code(1);
    assert!(all.stdout.contains("not delivered"), "{}", all.stdout);
    assert!(
        all.stdout.contains("1 delivered, 1 not delivered"),
        "{}",
        all.stdout
    );
    assert_eq!(sink.requests().await.len(), 2);
    for text in [&all.stdout, &all.stderr] {
        assert!(!text.contains("SECRET"), "{text}");
    }

    let unknown = case.run(&["notify-test", "pager"]);
    unknown.assert_code(2);
    assert!(
        unknown.stderr.contains("no notifier named pager"),
        "{}",
        unknown.stderr
    );
}

/// Three stuck jobs and one done, with a webhook on every outcome but clean.
async fn stuck_jobs(sink: &HttpSink, max_rows: u64) -> (TestDb, Case) {
    let db = TestDb::with_sql(
        Engine::Sqlite,
        "CREATE TABLE job (id integer PRIMARY KEY, state text NOT NULL);
         INSERT INTO job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck'), (4, 'done');",
    )
    .await;
    let case = Case::new()
        .database("main", db.url())
        .rule(&format!(
            "name: jobs.stuck\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'stuck'\n\
             fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: {max_rows}\nnotify: [ops]\n"
        ))
        .config(&format!(
            "notifiers:\n  ops:\n    webhook: {{ url: \"{}\", format: json, {FAST} }}\n",
            sink.url("/hook")
        ));
    (db, case)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_notify_sends_nothing_and_still_fixes() {
    let sink = HttpSink::ok().await;
    let (db, case) = stuck_jobs(&sink, 5).await;
    case.run(&["run", "--dry-run", "--no-notify"])
        .assert_code(0);
    assert!(sink.requests().await.is_empty());
    case.run(&["run", "--no-notify"]).assert_code(0);
    assert!(sink.requests().await.is_empty());
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    // Without the flag, the same kind of run notifies (the test can fail).
    db.exec("UPDATE job SET state = 'stuck' WHERE id = 1").await;
    case.run(&["run"]).assert_code(0);
    assert_eq!(sink.requests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rows_override_clears_a_backlog_for_named_rules_only() {
    let sink = HttpSink::ok().await;
    let (db, case) = stuck_jobs(&sink, 2).await;
    let guarded = case.run(&["run", "--no-notify"]);
    guarded.assert_code(3);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3
    );

    // Refused without a rule name: nothing runs.
    let refused = case.run(&["run", "--max-rows", "10"]);
    refused.assert_code(2);
    assert!(
        refused
            .stderr
            .contains("--max-rows applies only to rules named on the command line"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3
    );

    // Named: the override holds for this run only.
    case.run(&["run", "jobs.stuck", "--max-rows", "10", "--no-notify"])
        .assert_code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    db.exec("UPDATE job SET state = 'stuck' WHERE id IN (1, 2, 3)")
        .await;
    case.run(&["run", "--no-notify"]).assert_code(3);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3
    );
}
