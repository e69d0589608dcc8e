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
