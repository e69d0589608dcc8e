//! Issue 11: the rules of one run share one connection per database, in
//! order; a failing rule in the middle ends that connection and the next rule
//! runs on a new one with its result still right.
//!
//! Each rule's detect returns the session it ran on: PostgreSQL
//! `pg_backend_pid()`, MySQL/MariaDB `CONNECTION_ID()`. SQLite has no session
//! id; `total_changes()` (rows changed on this connection since it opened)
//! tells a reused connection (it counts the earlier rules' fixes) from a new
//! one (0).

use serde_json::Value;

use crate::util::{Case, Engine, RunOutput, TestDb};

on_every_engine!(
    five_rules_on_one_database_share_one_session,
    a_failing_rule_does_not_poison_the_next,
);

/// The SQL expression naming the session a detect runs on.
fn session(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "pg_backend_pid()",
        Engine::MySql => "CONNECTION_ID()",
        Engine::Sqlite => "total_changes()",
    }
}

async fn seeded(engine: Engine) -> TestDb {
    let db = TestDb::with_sql(
        engine,
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL);",
    )
    .await;
    db.exec(
        "INSERT INTO job (id, state) VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck'), (4, 'done');",
    )
    .await;
    db
}

/// A rule that fixes job `id` (or, with `column`, fails on a missing column);
/// its detect shows the session.
fn fix_rule(engine: Engine, name: &str, id: u32, column: &str) -> String {
    format!(
        "name: {name}\ndatabase: main\nmax_rows: 1\n\
         detect: \"SELECT id, {} AS session FROM job WHERE state = 'stuck' AND id = {id}\"\n\
         fix: \"UPDATE job SET {column} = 'failed' WHERE id = {id}\"\n",
        session(engine)
    )
}

/// A report-only rule whose one row is the session.
fn session_rule(engine: Engine, name: &str) -> String {
    format!(
        "name: {name}\ndatabase: main\ndetect: \"SELECT {} AS session\"\n",
        session(engine)
    )
}

/// The session column of a record's first sample row.
fn session_of(record: &Value) -> String {
    let columns = record["sample"]["columns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let index = columns
        .iter()
        .position(|c| c == "session")
        .unwrap_or_else(|| panic!("no session column: {record}"));
    record["sample"]["rows"][0][index]
        .as_str()
        .unwrap_or_else(|| panic!("no session value: {record}"))
        .to_owned()
}

async fn states(db: &TestDb) -> Vec<String> {
    db.strings("SELECT state FROM job ORDER BY id").await
}

const RULES: [&str; 5] = ["r1", "r2", "r3", "r4", "r5"];

/// The outcomes and the sessions of the five rules, in order.
fn outcomes_and_sessions(out: &RunOutput) -> (Vec<String>, Vec<String>) {
    RULES
        .iter()
        .map(|r| (out.outcome(r, "main"), session_of(&out.record(r, "main"))))
        .unzip()
}

async fn five_rules_on_one_database_share_one_session(engine: Engine) {
    let db = seeded(engine).await;
    let out = Case::new()
        .database("main", db.url())
        .rule(&fix_rule(engine, "r1", 1, "state"))
        .rule(&session_rule(engine, "r2"))
        .rule(&fix_rule(engine, "r3", 2, "state"))
        .rule(&fix_rule(engine, "r4", 3, "state"))
        .rule(&session_rule(engine, "r5"))
        .run(&["run", "--output", "json", "--jobs", "4"]);
    out.assert_code(0);
    let (outcomes, sessions) = outcomes_and_sessions(&out);
    assert_eq!(outcomes, ["fixed", "found", "fixed", "fixed", "found"]);
    if engine == Engine::Sqlite {
        // Each rule sees the rows the fixes before it changed on the same connection.
        assert_eq!(sessions, ["0", "1", "1", "2", "3"], "{}", out.stdout);
    } else {
        assert!(
            sessions.iter().all(|s| *s == sessions[0]),
            "one session for the five rules: {sessions:?}"
        );
    }
    assert_eq!(states(&db).await, ["failed", "failed", "failed", "done"]);
}

async fn a_failing_rule_does_not_poison_the_next(engine: Engine) {
    let db = seeded(engine).await;
    let out = Case::new()
        .database("main", db.url())
        .rule(&fix_rule(engine, "r1", 1, "state"))
        .rule(&session_rule(engine, "r2"))
        .rule(&fix_rule(engine, "r3", 2, "no_such_column"))
        .rule(&fix_rule(engine, "r4", 3, "state"))
        .rule(&session_rule(engine, "r5"))
        .run(&["run", "--output", "json"]);
    out.assert_code(1);
    let (outcomes, sessions) = outcomes_and_sessions(&out);
    assert_eq!(outcomes, ["fixed", "found", "failed", "fixed", "found"]);
    let r3 = out.record("r3", "main");
    assert_eq!(r3["reason"], "sql_error", "{r3}");
    if engine == Engine::Sqlite {
        // r4 runs on a new connection: nothing changed on it before.
        assert_eq!(sessions, ["0", "1", "1", "0", "1"], "{}", out.stdout);
    } else {
        assert_eq!(sessions[0], sessions[1], "{sessions:?}");
        assert_eq!(sessions[0], sessions[2], "{sessions:?}");
        assert_ne!(
            sessions[2], sessions[3],
            "the connection of the failed rule is not reused: {sessions:?}"
        );
        assert_eq!(sessions[3], sessions[4], "{sessions:?}");
    }
    // r3 changed nothing; r4 fixed its row.
    assert_eq!(states(&db).await, ["failed", "stuck", "failed", "done"]);
}
