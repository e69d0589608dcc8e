//! Issue 11: a report-only detect on PostgreSQL counts its rows on the server
//! and fetches only the sample, from one statement (one snapshot): the count
//! and the sample are right, a million rows would not cross the wire, and a
//! detect that writes is still refused.

use serde_json::Value;

use crate::faults::FaultProxy;
use crate::util::{Case, Engine, TestDb};

const ROWS: u64 = 20_000;

async fn events() -> TestDb {
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE event (id integer PRIMARY KEY, state text NOT NULL, payload text NOT NULL);",
    )
    .await;
    db.exec(&format!(
        "INSERT INTO event SELECT g, CASE WHEN g % 10 = 0 THEN 'done' ELSE 'stuck' END, repeat('x', 100) \
         FROM generate_series(1, {}) g",
        ROWS * 10 / 9 + 1
    ))
    .await;
    db
}

fn found_rule(detect: &str) -> String {
    format!("name: events.stuck\ndatabase: main\ndetect: \"{detect}\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn report_only_detect_counts_on_the_server_and_fetches_the_sample() {
    let db = events().await;
    let stuck = db
        .scalar("SELECT count(*) FROM event WHERE state = 'stuck'")
        .await;
    let proxy = FaultProxy::in_front_of(db.url());
    let out = Case::new()
        .database("main", &proxy.url_for(db.url()))
        .rule(&found_rule(
            "SELECT id, state, payload FROM event WHERE state = 'stuck' ORDER BY id DESC -- newest first",
        ))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("events.stuck", "main");
    assert_eq!(r["outcome"], "found", "{r}");
    assert_eq!(r["detected"].as_i64(), Some(stuck), "{r}");
    assert_ne!(r["detected_is_lower_bound"], Value::Bool(true), "{r}");
    assert_eq!(
        r["sample"]["columns"],
        serde_json::json!(["id", "state", "payload"]),
        "{r}"
    );
    let max = db
        .scalar("SELECT max(id) FROM event WHERE state = 'stuck'")
        .await;
    let ids: Vec<i64> = r["sample"]["rows"]
        .as_array()
        .expect("sample rows")
        .iter()
        .map(|row| row[0].as_str().and_then(|v| v.parse().ok()).expect("id"))
        .collect();
    let expected: Vec<i64> = db
        .strings(&format!(
            "SELECT id FROM event WHERE state = 'stuck' AND id <= {max} ORDER BY id DESC LIMIT 5"
        ))
        .await
        .iter()
        .map(|v| v.parse().expect("id"))
        .collect();
    assert_eq!(ids, expected, "{r}");
    // 20,000 rows of 100 bytes would be over 2 MB; the sample is a few hundred bytes.
    assert!(
        proxy.bytes_down() < 200_000,
        "{} bytes came back for a count and 5 rows",
        proxy.bytes_down()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn report_only_detect_that_writes_is_refused() {
    let db = events().await;
    db.exec(
        "CREATE FUNCTION zap() RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN DELETE FROM event WHERE state = 'done'; RETURN 1; END $$",
    )
    .await;
    let before = db.scalar("SELECT count(*) FROM event").await;
    let detect = "SELECT id FROM event WHERE state = 'stuck' AND zap() = 1";
    let out = Case::new()
        .database("main", db.url())
        .rule(&found_rule(detect))
        .run(&["run", "--output", "json"]);
    out.assert_code(1);
    let r = out.record("events.stuck", "main");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["reason"], "unsafe_sql", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("detect tried to write"),
        "{r}"
    );
    // DML with RETURNING and data-modifying CTEs do not get that far: the
    // loader refuses them (exit 2).
    for detect in [
        "WITH gone AS (DELETE FROM event WHERE state = 'done' RETURNING id) SELECT id FROM gone",
        "DELETE FROM event WHERE state = 'done' RETURNING id",
    ] {
        Case::new()
            .database("main", db.url())
            .rule(&found_rule(detect))
            .run(&["run", "--output", "json"])
            .assert_code(2);
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM event").await,
        before,
        "no row may change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn report_only_detect_finding_nothing_is_clean() {
    let db = events().await;
    let out = Case::new()
        .database("main", db.url())
        .rule(&found_rule("SELECT id FROM event WHERE state = 'gone'"))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("events.stuck", "main");
    assert_eq!(r["outcome"], "clean", "{r}");
    assert_eq!(r["detected"].as_u64(), Some(0), "{r}");
}

/// Third round: the count is not a cursor, so PostgreSQL may plan it in
/// parallel as it does for `psql` (it never parallelises a cursor). The
/// database is set to prefer parallel plans (costs 0, the leader not
/// scanning), and detect counts only rows a parallel worker read: through
/// a cursor that is none (`clean`), outside one every row (`found`).
#[tokio::test(flavor = "multi_thread")]
async fn report_only_count_may_run_in_parallel_like_psql() {
    let db = events().await;
    db.exec(&format!(
        "ALTER DATABASE {} SET parallel_setup_cost = 0;
         ALTER DATABASE {0} SET parallel_tuple_cost = 0;
         ALTER DATABASE {0} SET min_parallel_table_scan_size = 0;
         ALTER DATABASE {0} SET max_parallel_workers_per_gather = 2;
         ALTER DATABASE {0} SET parallel_leader_participation = off;
         CREATE FUNCTION in_parallel_worker() RETURNS boolean LANGUAGE plpgsql STABLE PARALLEL SAFE AS
           $$ BEGIN RETURN (SELECT backend_type = 'parallel worker' FROM pg_stat_activity WHERE pid = pg_backend_pid()); END $$;",
        db.name
    ))
    .await;
    let stuck = db
        .scalar("SELECT count(*) FROM event WHERE state = 'stuck'")
        .await;
    let detect = "SELECT id FROM event WHERE state = 'stuck' AND in_parallel_worker()";
    // Workers are a shared resource: a run that got none counts 0 either
    // way, so a few attempts are allowed; a cursor never gets any.
    let mut detected = Vec::new();
    for _ in 0..3 {
        let out = Case::new()
            .database("main", db.url())
            .rule(&found_rule(detect))
            .run(&["run", "--output", "json"]);
        out.assert_code(0);
        let r = out.record("events.stuck", "main");
        detected.push(r["detected"].as_i64().unwrap_or(-1));
        if detected.last() == Some(&stuck) {
            assert_eq!(r["outcome"], "found", "{r}");
            return;
        }
    }
    panic!("the count never ran in parallel workers: detected {detected:?} of {stuck}");
}
