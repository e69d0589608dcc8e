//! Locks across processes: the guarantees that let two CronJob pods, a
//! daemon and a panicking operator run at once without a double fix.

use crate::daemon_util::wait_until_update_ran;
use crate::util::{Case, Engine, TestDb};

async fn jobs(engine: Engine) -> TestDb {
    TestDb::with_sql(
        engine,
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL); \
         INSERT INTO job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'stuck'), (4, 'done');",
    )
    .await
}

/// Detect takes ~3 seconds on every engine, so eight processes overlap.
const SLOW_RULE: &str = r"name: jobs.slow
database: [pg, my, lite]
detect:
  postgres: SELECT j.id FROM job j CROSS JOIN (SELECT pg_sleep(3)) s WHERE j.state = 'stuck'
  mysql: SELECT j.id FROM job j CROSS JOIN (SELECT SLEEP(3)) s WHERE j.state = 'stuck'
  sqlite: >-
    SELECT id FROM job WHERE state = 'stuck' AND (WITH RECURSIVE c(x) AS
    (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) SELECT count(*) FROM c) > 0
fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'
max_rows: 3
";

#[tokio::test(flavor = "multi_thread")]
async fn eight_processes_fix_each_database_exactly_once() {
    let (pg, my, lite) = (
        jobs(Engine::Postgres).await,
        jobs(Engine::MySql).await,
        jobs(Engine::Sqlite).await,
    );
    let case = Case::new()
        .database("pg", pg.url())
        .database("my", my.url())
        .database("lite", lite.url())
        .rule(SLOW_RULE);
    let outputs = case.run_at_once(8, &["run", "--output", "json"]);
    for db in ["pg", "my", "lite"] {
        let outcomes: Vec<String> = outputs.iter().map(|o| o.outcome("jobs.slow", db)).collect();
        let fixed = outcomes.iter().filter(|o| *o == "fixed").count();
        let skipped = outcomes.iter().filter(|o| *o == "skipped").count();
        assert_eq!((fixed, skipped), (1, 7), "{db}: {outcomes:?}");
    }
    for o in &outputs {
        o.assert_code(0);
    }
    for db in [&pg, &my, &lite] {
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
                .await,
            3
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'done'")
                .await,
            1
        );
    }
}

/// The fix runs an UPDATE and then a slow statement in the same transaction;
/// the process is killed with SIGKILL while the slow statement runs.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_fix_leaves_no_partial_change() {
    for engine in Engine::ALL {
        let db = jobs(engine).await;
        let slow = match engine {
            Engine::Postgres => "SELECT pg_sleep(5)",
            Engine::MySql => "DO SLEEP(5)",
            Engine::Sqlite => {
                "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000000) SELECT x FROM c)"
            }
        };
        let rule = format!(
            "name: jobs.killed\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'stuck'\nfix: |\n  UPDATE job SET state = 'failed' WHERE state = 'stuck';\n  {slow}\nmax_rows: 3\ntimeout: 60s\nlock: {{ name: jobs, wait: 30s }}\n"
        );
        let case = Case::new().database("main", db.url()).rule(&rule);
        let mut child = case.spawn(&["run", "--output", "json"]);
        wait_until_update_ran(&db).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
                .await,
            3,
            "{engine:?}: the killed transaction must leave no change"
        );
        // The next run (without the slow statement) waits for the lock the dead
        // session held and fixes everything.
        let next = Case::new()
            .database("main", db.url())
            .rule(&rule.replace(&format!("\n  {slow}"), ""))
            .run(&["run", "--output", "json"]);
        next.assert_code(0);
        assert_eq!(next.outcome("jobs.killed", "main"), "fixed", "{engine:?}");
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
                .await,
            3,
            "{engine:?}"
        );
    }
}
