//! Issue 12, the operator's commands: `history` (the audit table on every
//! engine, from `init` to a dry run to a fix to reading it back), with its
//! exit statuses when there is no audit table or it cannot be reached.

use std::process::Command;

use serde_json::Value;

use crate::audit_util::{STUCK, audited, jobs};
use crate::util::{Case, Engine, RunOutput, TestDb};

on_every_engine!(history_reads_the_audit_table_newest_first);

/// A timestamp literal each engine stores in its `started_at` column.
fn long_ago(engine: Engine) -> &'static str {
    match engine {
        // sqlx stores SQLite times as RFC 3339 text; they compare as text.
        Engine::Sqlite => "2020-01-01T00:00:00+00:00",
        Engine::Postgres | Engine::MySql => "2020-01-01 00:00:00",
    }
}

async fn history_reads_the_audit_table_newest_first(engine: Engine) {
    let app = jobs(engine).await;
    let audit = TestDb::new(engine).await;
    let case = audited(&app, &audit).rule(STUCK);

    // Before any run: nothing recorded, and reading created nothing.
    let empty = case.run(&["history"]);
    empty.assert_code(0);
    assert!(
        empty.stdout.contains("no runs recorded that match"),
        "{}",
        empty.stdout
    );

    case.run(&["run", "--dry-run"]).assert_code(0);
    let fixed = case.run(&["run", "--output", "json"]);
    fixed.assert_code(0);
    let run_id = fixed.record("jobs.stuck", "main")["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );

    let json = case.run(&["history", "--output", "json"]);
    json.assert_code(0);
    let runs: Vec<Value> = json.json()["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 2, "{}", json.stdout);
    // Newest first: the fix, then the dry run.
    assert_eq!(runs[0]["outcome"], "fixed");
    assert_eq!(runs[0]["dry_run"], false);
    assert_eq!(runs[0]["detected"], 3);
    assert_eq!(runs[0]["changed"], 3);
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(runs[0]["rule"], "jobs.stuck");
    assert_eq!(runs[0]["database"], "main");
    assert!(runs[0]["duration_ms"].is_u64());
    assert_eq!(runs[1]["outcome"], "would_fix");
    assert_eq!(runs[1]["dry_run"], true);

    let text = case.run(&["history", "jobs.stuck"]);
    text.assert_code(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines[0].contains("STARTED (UTC)"), "{}", text.stdout);
    assert!(
        lines[1].contains("fixed") && lines[1].contains(&run_id),
        "{}",
        text.stdout
    );
    assert!(lines[2].contains("would_fix (dry run)"), "{}", text.stdout);
    assert!(text.stdout.contains("2 runs"), "{}", text.stdout);

    history_filters(&case, &audit, engine).await;
    // The two runs' rows are still there: history only reads.
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 2);
}

/// `history`'s filters on the two runs of
/// `history_reads_the_audit_table_newest_first`: another rule, another
/// database, `--since`, `--limit`, and a bad `--since`.
async fn history_filters(case: &Case, audit: &TestDb, engine: Engine) {
    let other = case.run(&["history", "jobs.other"]);
    other.assert_code(0);
    assert!(other.stdout.contains("no runs recorded that match"));
    audit
        .exec(&format!(
            "UPDATE dbjanitor_runs SET started_at = '{}' WHERE rule = 'jobs.stuck' AND outcome = 'would_fix'",
            long_ago(engine)
        ))
        .await;
    let recent = case.run(&["history", "--since", "24h", "--output", "json"]);
    recent.assert_code(0);
    let recent = recent.json()["runs"].as_array().expect("runs").clone();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["outcome"], "fixed");
    let one = case.run(&["history", "--limit", "1"]);
    one.assert_code(0);
    assert!(
        one.stdout
            .contains("1 run (the newest 1; --limit N shows more)"),
        "{}",
        one.stdout
    );
    let unknown = case.run(&["history", "--database", "nope"]);
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("unknown database \"nope\""));
    let bad = case.run(&["history", "--since", "yesterday"]);
    bad.assert_code(2);
    assert!(
        bad.stderr.contains("is not a duration such as 24h"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_without_audit_exits_2_and_unreachable_exits_1() {
    let app = jobs(Engine::Sqlite).await;
    let bare = Case::new().database("main", app.url()).rule(STUCK);
    let out = bare.run(&["history"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("has no `audit:` section"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    // A PostgreSQL audit database on a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = Case::new()
        .database("main", app.url())
        .database(
            "janitor",
            &format!("postgres://postgres:s3cret@127.0.0.1:{port}/x"),
        )
        .config("audit:\n  database: janitor\n  timeout: 2s")
        .rule(STUCK);
    let out = down.run(&["history"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("cannot read the run history from the audit database janitor"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
}

/// Issue 12's "Done when": `init`, a dry run, a fix, then `history`, with the
/// starter files as written.
#[tokio::test(flavor = "multi_thread")]
async fn from_init_to_a_fix_to_history() {
    let dir = tempfile::tempdir().expect("dir");
    let init = RunOutput::from(
        Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
            .args(["init", &dir.path().display().to_string()])
            .output()
            .expect("init"),
    );
    init.assert_code(0);
    let db = TestDb::with_sql(
        Engine::Sqlite,
        "CREATE TABLE job (id integer PRIMARY KEY, state text NOT NULL, worker text, heartbeat_at text);
         INSERT INTO job VALUES (1, 'running', 'w1', datetime('now', '-1 hour')),
                                (2, 'running', 'w2', datetime('now'));",
    )
    .await;
    let config = dir.path().join("dbjanitor.yaml").display().to_string();
    let dbjanitor = |args: &[&str]| {
        RunOutput::from(
            Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("APP_DB_URL", db.url())
                .env_remove("RUST_LOG")
                .output()
                .expect("dbjanitor"),
        )
    };
    dbjanitor(&["run", "example.stuck-jobs", "--dry-run"]).assert_code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        0
    );
    dbjanitor(&["run", "example.stuck-jobs"]).assert_code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        1
    );
    let history = dbjanitor(&["history"]);
    history.assert_code(0);
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert!(
        lines[1].contains("example.stuck-jobs") && lines[1].contains(" fixed "),
        "{}",
        history.stdout
    );
    assert!(
        lines[2].contains("would_fix (dry run)"),
        "{}",
        history.stdout
    );
}

/// The guard's message names the next commands, and following them literally
/// clears the backlog: first a dry run that changes nothing, then the fix.
#[tokio::test(flavor = "multi_thread")]
async fn guard_message_says_what_to_do_next_and_it_works() {
    let app = jobs(Engine::Sqlite).await;
    let case = Case::new()
        .database("main", app.url())
        .rule(&STUCK.replace("max_rows: 5", "max_rows: 2"));
    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(3);
    let message = out.record("jobs.stuck", "main")["message"]
        .as_str()
        .expect("message")
        .to_owned();
    let review = "`dbjanitor run jobs.stuck --dry-run --max-rows 3`";
    let fix = "`dbjanitor run jobs.stuck --max-rows 3`";
    assert!(
        message.starts_with("detect found 3 rows, more than max_rows 2; the fix was not run.")
            && message.contains(review)
            && message.contains(fix),
        "{message}"
    );
    let stuck = "SELECT count(*) FROM job WHERE state = 'stuck'";
    assert_eq!(app.scalar(stuck).await, 3);
    let args = |command: &str| -> Vec<String> {
        command
            .trim_matches('`')
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    let review_args = args(review);
    let review_args: Vec<&str> = review_args.iter().map(String::as_str).collect();
    let dry = case.run(&review_args);
    dry.assert_code(0);
    assert!(dry.stdout.contains("would_fix"), "{}", dry.stdout);
    assert_eq!(app.scalar(stuck).await, 3);
    let fix_args = args(fix);
    let fix_args: Vec<&str> = fix_args.iter().map(String::as_str).collect();
    case.run(&fix_args).assert_code(0);
    assert_eq!(app.scalar(stuck).await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
}

/// `run --due` that runs nothing says which pair comes due next and when,
/// and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn due_with_nothing_due_names_the_next_rule_and_when() {
    use chrono::{Duration, Timelike, Utc};
    let app = jobs(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    // A minute half an hour away: no tick can fall between the two runs.
    let now = Utc::now();
    let minute = (now.minute() + 30) % 60;
    let case = audited(&app, &audit)
        .rule(&format!("{STUCK}schedule: \"{minute} * * * *\"\n"))
        .rule(
            &(STUCK
                .replace("jobs.stuck", "jobs.yearly")
                .replace("'stuck'", "'none'")
                + "schedule: \"0 0 1 1 *\"\n"),
        );
    // First --due: never ran, so both are due.
    case.run(&["run", "--due"]).assert_code(0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
    app.exec("UPDATE job SET state = 'stuck' WHERE id = 1")
        .await;

    let out = case.run(&["run", "--due"]);
    out.assert_code(0);
    let mut expected = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .and_then(|t| t.with_minute(minute))
        .expect("time");
    if expected <= now {
        expected += Duration::hours(1);
    }
    let line = format!(
        "nothing is due; next due: jobs.stuck on main at {} UTC (in ",
        expected.format("%Y-%m-%d %H:%M:%S")
    );
    assert!(out.stdout.contains(&line), "{line}\n{}", out.stdout);
    // The same for machines: `next_due` in the JSON report, no rules.
    let json = case.run(&["run", "--due", "--output", "json"]);
    json.assert_code(0);
    let report = json.json();
    assert_eq!(report["rules"], serde_json::json!([]));
    assert_eq!(
        report["next_due"],
        serde_json::json!({
            "rule": "jobs.stuck",
            "database": "main",
            "at": expected.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        })
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        1,
        "nothing ran"
    );
    assert_eq!(audit.scalar("SELECT count(*) FROM dbjanitor_runs").await, 2);
}

/// `check RULE...`, `check --database D`, `list RULE...` and `list --output
/// json`: a broken rule elsewhere does not fail a check narrowed to a good
/// one, unknown names exit 2, and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn check_and_list_narrow_to_rules_and_databases() {
    let app = jobs(Engine::Sqlite).await;
    let other = jobs(Engine::Sqlite).await;
    let case = Case::new()
        .database("main", app.url())
        .database("other", other.url())
        .rule(&format!("{STUCK}schedule: \"*/5 * * * *\"\ntags: [jobs]\n"))
        .rule(
            &STUCK
                .replace("jobs.stuck", "jobs.broken")
                .replace("FROM job", "FROM no_such_table"),
        )
        .rule(
            &STUCK
                .replace("jobs.stuck", "jobs.other")
                .replace("database: main", "database: other"),
        );

    let all = case.run(&["check", "--connect"]);
    all.assert_code(2);
    assert!(all.stdout.contains("jobs.broken"), "{}", all.stdout);

    let one = case.run(&["check", "--connect", "jobs.stuck"]);
    one.assert_code(0);
    assert!(one.stdout.contains("jobs.stuck"), "{}", one.stdout);
    assert!(!one.stdout.contains("jobs.broken"), "{}", one.stdout);
    assert!(one.stdout.contains("1 pair: 1 ok"), "{}", one.stdout);

    let on_other = case.run(&["check", "--connect", "--database", "other"]);
    on_other.assert_code(0);
    assert!(
        on_other.stdout.contains("jobs.other"),
        "{}",
        on_other.stdout
    );
    assert!(
        !on_other.stdout.contains("jobs.stuck"),
        "{}",
        on_other.stdout
    );

    let unknown = case.run(&["check", "jobs.nope"]);
    unknown.assert_code(2);
    assert!(
        unknown.stderr.contains("no rule named \"jobs.nope\""),
        "{}",
        unknown.stderr
    );
    let bad_db = case.run(&["check", "--connect", "--database", "nope"]);
    bad_db.assert_code(2);

    let list = case.run(&["list", "jobs.stuck", "--output", "json"]);
    list.assert_code(0);
    let json = list.json();
    let rules = json["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{}", list.stdout);
    assert_eq!(rules[0]["name"], "jobs.stuck");
    assert_eq!(rules[0]["databases"][0], "main");
    assert_eq!(rules[0]["schedule"], "*/5 * * * *");
    assert_eq!(rules[0]["tags"][0], "jobs");
    assert_eq!(rules[0]["enabled"], true);
    assert!(rules[0]["next_run"].is_string(), "{}", list.stdout);
    let databases = json["databases"].as_array().expect("databases");
    assert_eq!(databases.len(), 1);
    assert_eq!(databases[0]["name"], "main");

    let text = case.run(&["list", "jobs.other"]);
    text.assert_code(0);
    assert!(text.stdout.contains("jobs.other") && !text.stdout.contains("jobs.stuck"));
    case.run(&["list", "jobs.nope"]).assert_code(2);

    // Nothing ran anywhere.
    for db in [&app, &other] {
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
                .await,
            3
        );
    }
}

/// `show RULE`: each setting with its origin (rule file line, defaults,
/// built-in) and the SQL each database receives; no database is contacted.
#[tokio::test(flavor = "multi_thread")]
async fn show_names_each_settings_origin_and_the_sql_per_dialect() {
    let app = jobs(Engine::Sqlite).await;
    let case = Case::new()
        .database("main", app.url())
        // Never contacted: `show` reads only the config.
        .database("pg", "postgres://postgres:s3cret@127.0.0.1:1/nope")
        .config("defaults:\n  timezone: Europe/Berlin")
        .rule(
            "name: jobs.stuck\ndatabase: [main, pg]\nschedule: \"*/5 * * * *\"\ndetect:\n  \
             postgres: SELECT id FROM job WHERE state = 'stuck' AND id > 0\n  \
             sqlite: SELECT id FROM job WHERE state = 'stuck'\n\
             fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'; DELETE FROM job WHERE state = 'gone'\n\
             max_rows: 5\ntimeout: 30s\n",
        );
    let out = case.run(&["show", "jobs.stuck"]);
    out.assert_code(0);
    let row = |setting: &str| -> Vec<String> {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(setting))
            .unwrap_or_else(|| panic!("no {setting} in\n{}", out.stdout))
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert!(row("timeout")[1] == "30s" && row("timeout")[2].ends_with("rule01.yaml:9"));
    assert_eq!(row("timezone")[1], "Europe/Berlin");
    assert!(
        row("timezone")[2].starts_with("defaults (")
            && row("timezone")[2].ends_with("dbjanitor.yaml:8)"),
        "{:?}",
        row("timezone")
    );
    assert_eq!(row("verify")[1..], ["true", "built-in"]);
    assert_eq!(row("mode")[1..], ["transactional", "built-in"]);
    assert!(row("max_rows")[2].ends_with("rule01.yaml:8"));
    let sqlite_at = out
        .stdout
        .find("on main (sqlite):")
        .expect("sqlite section");
    let pg_at = out
        .stdout
        .find("on pg (postgres):")
        .expect("postgres section");
    assert!(
        out.stdout[sqlite_at..pg_at].contains("SELECT id FROM job WHERE state = 'stuck'\n")
            && out.stdout[pg_at..].contains("AND id > 0")
            && out.stdout[pg_at..]
                .contains("fix statement 2:\n    DELETE FROM job WHERE state = 'gone'"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("s3cret"));
    let unknown = case.run(&["show", "jobs.nope"]);
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("no rule named \"jobs.nope\""));
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        3
    );
}

/// A database that is down: the error names host and port (never the user
/// or password), the text report states it once per database, and the rules
/// on a reachable database still fix.
#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_name_the_server_once_per_database() {
    let app = jobs(Engine::Sqlite).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let case = Case::new()
        .database("main", app.url())
        .database(
            "down",
            &format!("postgres://janitor:s3cret@127.0.0.1:{port}/app"),
        )
        .rule(STUCK)
        .rule("name: down.one\ndatabase: down\ndetect: SELECT 1\n")
        .rule("name: down.two\ndatabase: down\ndetect: SELECT 2\n");
    let out = case.run(&["run"]);
    out.assert_code(1);
    let named = format!("cannot connect to database down at 127.0.0.1:{port}: ");
    assert_eq!(out.stdout.matches(&named).count(), 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("error: database down unreachable, see down.one @ down above"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("s3cret") && !out.stdout.contains("janitor:"));
    assert!(!out.stderr.contains("s3cret"));
    // The log says it once too, with the address: the second rule of the
    // unreachable database is not tried (it would wait out its own connect
    // timeout and log the same error again).
    let warned: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("rule failed"))
        .collect();
    assert_eq!(warned.len(), 1, "{}", out.stderr);
    assert!(warned[0].contains(&named), "{}", out.stderr);
    // JSON keeps each run's own full error, with the address.
    let json = case.run(&["run", "--output", "json"]);
    json.assert_code(1);
    for rule in ["down.one", "down.two"] {
        let error = json.record(rule, "down")["error"]
            .as_str()
            .expect("error")
            .to_owned();
        assert!(error.starts_with(&named), "{error}");
        assert_eq!(
            error.contains("not tried: the connection for rule down.one failed just before"),
            rule == "down.two",
            "{error}"
        );
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        3
    );
}
