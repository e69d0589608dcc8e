//! The malformed-config corpus in `tests/fixtures/bad/`: each folder holds a
//! config (and rules) with one mistake and `expect.txt`, the first line the
//! binary must print: `file:line:column: message`. Every case must exit 2
//! from both `check` and `run`, without a panic.

use std::process::Command;

use crate::util::{Case, Engine, TestDb, fixture};

#[test]
fn every_malformed_config_names_file_line_and_column() {
    let root = fixture("bad");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/fixtures/bad")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "the corpus must hold at least 20 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let expected = std::fs::read_to_string(dir.join("expect.txt"))
            .unwrap_or_else(|e| panic!("{}: expect.txt: {e}", dir.display()));
        let expected = expected.trim_end();
        let (file_line_col, _) = expected
            .split_once(": ")
            .expect("expect.txt: file:line:col: message");
        assert_eq!(
            file_line_col.split(':').count(),
            3,
            "{}: {expected}",
            dir.display()
        );
        for command in ["check", "run"] {
            let out = Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
                .args(["--config", "dbjanitor.yaml", command])
                .current_dir(dir)
                .env_remove("RUST_LOG")
                .env_remove("DBJ_TEST_SURELY_UNSET_VARIABLE")
                .output()
                .expect("run dbjanitor");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or_default();
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if out.status.code() != Some(2)
                || first != expected
                || stderr.contains("panicked")
                || !out.stdout.is_empty()
            {
                failures.push(format!(
                    "{name} ({command}): exit {:?}\n  expected: {expected}\n  got:      {first}",
                    out.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(["--config", "nope.yaml", "run"])
        .current_dir(dir.path())
        .output()
        .expect("run dbjanitor");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("nope.yaml:1:1: cannot read file"),
        "{stderr}"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let out = Case::new()
        .database("main", "sqlite:///nonexistent/x.db")
        .rule("name: a\ndatabase: main\ndetect: SELECT 1\nschedule: nope\n")
        .rule("name: b\ndatabase: other\ndetect: SELECT 1\n")
        .run(&["check"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("rule01.yaml:4:11: invalid schedule"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rule02.yaml:2:11: unknown database \"other\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("2 problems in the configuration"),
        "{}",
        out.stderr
    );
}

/// A broken rule next to a good one: nothing runs, so nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_rule_stops_the_whole_run_before_any_change() {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE t (id int PRIMARY KEY, state text); INSERT INTO t VALUES (1, 'bad'), (2, 'ok');",
    )
    .await;
    let out = Case::new()
        .database("main", db.url())
        .rule("name: good\ndatabase: main\ndetect: SELECT id FROM t WHERE state = 'bad'\nfix: UPDATE t SET state = 'ok' WHERE state = 'bad'\nmax_rows: 5\n")
        .rule("name: broken\ndatabase: main\ndetect: SELECT 1\nfix: UPDATE t SET state = 'x'\n")
        .run(&["run"]);
    out.assert_code(2);
    assert!(
        out.stdout.is_empty(),
        "no report when nothing ran: {}",
        out.stdout
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE state = 'bad'")
            .await,
        1
    );
}

/// Runs `check` in `dir` with a deadline (a symlink loop used to run away).
fn check_within(dir: &std::path::Path, env: &[(&str, &std::ffi::OsStr)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbjanitor"));
    command
        .args(["--config", "dbjanitor.yaml", "check"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("run dbjanitor");
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("check did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 9.6: `ln -s .. rules/sub/up` (and a second such link) is an error
/// naming each link, once; every rule file is read once, so no false
/// "duplicate rule name"; and `check` ends at once.
#[test]
fn symlink_loops_in_a_rule_folder_are_named_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("rules/sub/deeper")).expect("mkdir");
    std::fs::write(
        root.join("dbjanitor.yaml"),
        "databases:\n  main:\n    url: \"sqlite:///nonexistent/x.db\"\nrules: [rules]\n",
    )
    .expect("config");
    for (i, path) in [
        "rules/a.yaml",
        "rules/sub/b.yaml",
        "rules/sub/deeper/c.yaml",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(
            root.join(path),
            format!("name: r.{i}\ndatabase: main\ndetect: SELECT 1\n"),
        )
        .expect("rule");
    }
    std::os::unix::fs::symlink("..", root.join("rules/sub/up")).expect("symlink");
    std::os::unix::fs::symlink("../..", root.join("rules/sub/deeper/up2")).expect("symlink");
    // Not a loop: a second path to a folder already read is read once, silently.
    std::os::unix::fs::symlink("sub/deeper", root.join("rules/also")).expect("symlink");
    let (code, stderr) = check_within(root, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("duplicate rule name"), "{stderr}");
    // Each loop is named once, by the path it was met on (`rules/also` is
    // walked first, so `up2` is met as `rules/also/up2`).
    for link in ["/up", "/up2"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("{link} loops back to its own parent folder")))
            .collect();
        assert_eq!(lines.len(), 1, "{link}:\n{stderr}");
        assert!(
            lines[0].starts_with("dbjanitor.yaml:4:9: rule folder rules: the symlink rules/"),
            "{}",
            lines[0]
        );
    }
    assert!(
        stderr.contains("2 problems in the configuration"),
        "{stderr}"
    );
    // Without the loops, the three rules load, each once.
    std::fs::remove_file(root.join("rules/sub/up")).expect("rm");
    std::fs::remove_file(root.join("rules/sub/deeper/up2")).expect("rm");
    let (code, stderr) = check_within(root, &[]);
    assert_eq!(code, 0, "{stderr}");
}

/// Issue 9.11: a variable set to bytes that are not UTF-8 is reported as
/// such, not as "not set"; `$${` is a literal `${`.
#[test]
fn non_utf8_variables_and_the_dollar_escape() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("mkdir");
    std::fs::write(
        dir.path().join("rules/r.yaml"),
        "name: r.a\ndatabase: main\ndetect: SELECT 1\n",
    )
    .expect("rule");
    std::fs::write(
        dir.path().join("dbjanitor.yaml"),
        "databases:\n  main:\n    url: \"${DBJ_TEST_LATIN1_URL}\"\nrules: [rules]\n",
    )
    .expect("config");
    let latin1 = std::ffi::OsStr::from_bytes(b"sqlite:///tmp/caf\xe9.db");
    let (code, stderr) = check_within(dir.path(), &[("DBJ_TEST_LATIN1_URL", latin1)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(
            "dbjanitor.yaml:3:10: environment variable DBJ_TEST_LATIN1_URL is not valid UTF-8"
        ),
        "{stderr}"
    );
    // `$${` stays a literal `${` (here in an SQLite path, which `list` prints as is).
    std::fs::write(
        dir.path().join("dbjanitor.yaml"),
        "databases:\n  main:\n    url: \"sqlite:///tmp/a$${HOME}b-$$-${DBJ_TEST_PART}.db\"\nrules: [rules]\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(["--config", "dbjanitor.yaml", "list"])
        .current_dir(dir.path())
        .env("DBJ_TEST_PART", "x")
        .output()
        .expect("run dbjanitor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // (`list` prints URLs through the URL parser, which escapes the braces.)
    assert!(
        stdout.contains("sqlite:///tmp/a$%7BHOME%7Db-$$-x.db"),
        "{stdout}"
    );
}

/// `check` in `dir` on `config`, with `unset` removed from the environment:
/// exit code and the lines of stderr.
fn check_lines(dir: &std::path::Path, config: &str, unset: &[&str]) -> (i32, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbjanitor"));
    command
        .args(["--config", config, "check"])
        .current_dir(dir)
        .env_remove("RUST_LOG");
    for name in unset {
        command.env_remove(name);
    }
    let out = command.output().expect("run dbjanitor");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// Issue 12.3: the shipped example with its variables unset lists each
/// variable once, and no rule echoes "unknown database" or "unknown
/// notifier" for a database or notifier whose own error is already listed.
#[test]
fn unset_variables_in_the_example_are_reported_once_without_echoes() {
    let (code, lines) = check_lines(
        &crate::util::repo("examples"),
        "dbjanitor.yaml",
        &[
            "APP_DB_URL",
            "CLOUDSTACK_DB_URL",
            "DRAGONFLY_DB_URL",
            "ICINGADB_DB_URL",
            "NIGHTINGALE_DB_URL",
            "OPS_WEBHOOK_URL",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(
        lines,
        [
            "dbjanitor.yaml:30:10: environment variable APP_DB_URL is not set",
            "dbjanitor.yaml:26:10: environment variable CLOUDSTACK_DB_URL is not set",
            "dbjanitor.yaml:22:10: environment variable DRAGONFLY_DB_URL is not set",
            "dbjanitor.yaml:28:10: environment variable ICINGADB_DB_URL is not set",
            "dbjanitor.yaml:24:10: environment variable NIGHTINGALE_DB_URL is not set",
            "dbjanitor.yaml:47:12: environment variable OPS_WEBHOOK_URL is not set",
            "6 problems in the configuration; nothing was run",
        ]
    );
}

/// Issue 12.3: one variable used by two databases is reported once; the
/// rules, `audit:` and `notify:` naming what failed add nothing; a truly
/// unknown name is still reported (and the list of known names includes the
/// database that failed).
#[test]
fn consequences_of_a_reported_error_are_not_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("rules")).expect("mkdir");
    std::fs::write(
        dir.path().join("dbjanitor.yaml"),
        "databases:\n  a:\n    url: \"${DBJ_TEST_UNSET_12_3}\"\n  b:\n    url: \"${DBJ_TEST_UNSET_12_3}/b\"\n\
         rules: [rules]\naudit:\n  database: a\ndefaults:\n  notify: [ops]\n\
         notifiers:\n  ops:\n    webhook:\n      url: \"${DBJ_TEST_UNSET_12_3_HOOK}\"\n",
    )
    .expect("config");
    std::fs::write(
        dir.path().join("rules/r1.yaml"),
        "name: r.one\ndatabase: [a, b]\ndetect: SELECT 1\nnotify: [ops]\n",
    )
    .expect("rule");
    std::fs::write(
        dir.path().join("rules/r2.yaml"),
        "name: r.two\ndatabase: nope\ndetect: SELECT 1\n",
    )
    .expect("rule");
    let (code, lines) = check_lines(
        dir.path(),
        "dbjanitor.yaml",
        &["DBJ_TEST_UNSET_12_3", "DBJ_TEST_UNSET_12_3_HOOK"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        lines,
        [
            "dbjanitor.yaml:3:10: environment variable DBJ_TEST_UNSET_12_3 is not set",
            "dbjanitor.yaml:14:12: environment variable DBJ_TEST_UNSET_12_3_HOOK is not set",
            &format!(
                "{}: unknown database \"nope\"; databases in the config: [\"a\", \"b\"]",
                "rules/r2.yaml:2:11"
            ),
            "3 problems in the configuration; nothing was run",
        ]
    );
}

/// Issue 12.4: every unknown key of a file is reported in one pass, each
/// with the key it most likely meant.
#[test]
fn every_unknown_key_of_a_file_is_reported_with_a_suggestion() {
    let (code, lines) = check_lines(&fixture("bad/three-typos"), "dbjanitor.yaml", &[]);
    assert_eq!(code, 2);
    assert_eq!(
        lines,
        [
            "rules/r.yaml:3:1: unknown key `detcet`: did you mean `detect`?",
            "rules/r.yaml:5:1: unknown key `max_row`: did you mean `max_rows`?",
            "rules/r.yaml:6:1: unknown key `shedule`: did you mean `schedule`?",
            "3 problems in the configuration; nothing was run",
        ]
    );
}

/// Issue 12.5: `to: dba@example.org` is a list of one address; a list still
/// works, and a bad address in either form is named.
#[test]
fn a_single_email_address_is_accepted_for_to() {
    let email = |to: &str| {
        format!(
            "notifiers:\n  mail:\n    email:\n      smtp: \"smtp://127.0.0.1:2525\"\n      from: dbj@example.org\n      to: {to}\n"
        )
    };
    for (to, code) in [
        ("dba@example.org", 0),
        ("[dba@example.org, ops@example.org]", 0),
        ("not-an-address", 2),
    ] {
        let out = Case::new()
            .database("main", "sqlite:///nonexistent/x.db")
            .rule("name: a\ndatabase: main\ndetect: SELECT 1\n")
            .config(&email(to))
            .run(&["check"]);
        assert_eq!(out.code, code, "to: {to}\n{}", out.stderr);
        if code == 2 {
            assert!(
                out.stderr.contains(
                    "dbjanitor.yaml:10:11: to: \"not-an-address\" is not an email address"
                ),
                "{}",
                out.stderr
            );
        }
    }
}

/// Issue 12.9: a notifier with `optional: true` is off when its URL
/// variable is unset or empty: the run works (and fixes) without it, rules
/// and defaults naming it are not in error; set, it is a notifier like any
/// other; without `optional`, the unset variable stays an error.
#[tokio::test(flavor = "multi_thread")]
async fn an_optional_notifier_is_off_when_its_url_variable_is_unset() {
    let db = TestDb::with_sql(
        Engine::Sqlite,
        "CREATE TABLE t (id int PRIMARY KEY, state text); INSERT INTO t VALUES (1, 'bad'), (2, 'ok');",
    )
    .await;
    let notifier = |optional: &str| {
        format!(
            "defaults:\n  notify: [ops]\nnotifiers:\n  ops:\n{optional}    webhook:\n      url: \"${{DBJ_TEST_OPTIONAL_HOOK}}\"\n      format: slack\n"
        )
    };
    let case = |optional: &str| {
        Case::new()
            .database("main", db.url())
            .rule("name: fix.bad\ndatabase: main\ndetect: SELECT id FROM t WHERE state = 'bad'\nfix: UPDATE t SET state = 'ok' WHERE state = 'bad'\nmax_rows: 5\nnotify: [ops]\n")
            .config(&notifier(optional))
    };
    let optional = case("    optional: true\n");
    let check = optional.run(&["check"]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("ok: 1 rule, 1 database, 0 notifiers"),
        "{}",
        check.stdout
    );
    let run = optional.run(&["run", "--output", "json"]);
    run.assert_code(0);
    assert_eq!(run.outcome("fix.bad", "main"), "fixed");
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE state = 'bad'")
            .await,
        0
    );
    let set = case("    optional: true\n")
        .env("DBJ_TEST_OPTIONAL_HOOK", "http://127.0.0.1:9/hook")
        .run(&["check"]);
    set.assert_code(0);
    assert!(set.stdout.contains("1 notifier\n"), "{}", set.stdout);
    let required = case("").run(&["check"]);
    required.assert_code(2);
    let config = required_config_path(&required.stderr);
    assert_eq!(
        required.stderr.lines().collect::<Vec<_>>(),
        [
            format!("{config}:10:12: environment variable DBJ_TEST_OPTIONAL_HOOK is not set"),
            "1 problem in the configuration; nothing was run".to_owned(),
        ]
    );
}

/// The config path a message starts with (a temporary folder, no `:`).
fn required_config_path(stderr: &str) -> &str {
    stderr.split(':').next().unwrap_or_default()
}

/// Issue 13.4: an email notifier reports every wrong key in one pass, as a
/// rule does, instead of stopping at the first.
#[test]
fn every_problem_of_an_email_notifier_is_reported_at_once() {
    let out = Case::new()
        .database("main", "sqlite:///nonexistent/x.db")
        .rule("name: a\ndatabase: main\ndetect: SELECT 1\n")
        .config(
            "notifiers:\n  mail:\n    email:\n      smtp: \"http://127.0.0.1:2525\"\n      from: not-a-sender\n      to: [dba@example.org, nobody]\n      retries: 99\n      timeout: 0s\n",
        )
        .run(&["check"]);
    out.assert_code(2);
    for expected in [
        "dbjanitor.yaml:8:13: email smtp must look like smtp://host:port",
        "dbjanitor.yaml:9:13: from \"not-a-sender\" is not an email address",
        "dbjanitor.yaml:10:11: to: \"nobody\" is not an email address",
        "dbjanitor.yaml:11:16: retries must be between 0 and 10, found 99",
        "dbjanitor.yaml:12:16: duration must be greater than 0",
        "5 problems in the configuration",
    ] {
        assert!(out.stderr.contains(expected), "{expected}\n{}", out.stderr);
    }
}

/// Issue 13.5: an empty `lock.name` is reported where it is written, not at 1:1.
#[test]
fn an_empty_lock_name_is_reported_at_its_position() {
    let out = Case::new()
        .database("main", "sqlite:///nonexistent/x.db")
        .rule("name: a\ndatabase: main\ndetect: SELECT 1\nlock:\n  name: \"  \"\n")
        .run(&["check"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("rule01.yaml:5:9: lock.name must not be empty"),
        "{}",
        out.stderr
    );
}
