//! The rule pack (`rules/`) against the fixtures that reproduce each system's
//! schema (`tests/fixtures/<system>/<engine>/`): every rule on every engine it
//! claims. For each rule, on a freshly loaded fixture:
//!
//! - the dry run detects exactly the rotten rows, reports what the fix would
//!   change, and changes nothing;
//! - the run changes exactly the rotten rows (deleted, or updated into the
//!   state the rule promises) and leaves every other row of every fixture table
//!   identical;
//! - the re-run is clean; report-only rules find the same rows and change
//!   nothing, every time.
//!
//! The expected rows are the ones listed at the top of each fixture's data.sql.
//! Also here: the Nightingale primary-key drift proven end to end (the second
//! host's insert fails before the fix and succeeds after it), `check` on the
//! whole pack and `check --connect` on every fixture.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::{Case, Engine, RunOutput, TestDb, repo};

/// A fixture table, snapshotted before and after each run.
struct Snap {
    name: &'static str,
    /// The snapshot query: the first `key_len` columns identify a row (for a
    /// table without a key, duplicates count as a multiset).
    sql: String,
    key_len: usize,
}

/// The rows the fix must change.
#[derive(Clone)]
enum Rotten {
    /// Keys as `a|b|c` over the first `key_len` columns of the snapshot.
    Keys(&'static [&'static str]),
    /// A query on the pristine fixture returning those keys.
    Query(&'static str),
}

/// What happens to the rotten rows.
#[derive(Clone)]
enum Effect {
    /// Deleted; everything else unchanged.
    Delete,
    /// Still there; this query must count every rotten row in its new state.
    Update(&'static str),
    /// Report-only: nothing changes, the rule reports `found`.
    Report,
}

/// What one rule must do to its system's fixture.
#[derive(Clone)]
struct Expect {
    rule: &'static str,
    /// The snapshot (table) the rule works on.
    table: &'static str,
    rotten: Rotten,
    effect: Effect,
    /// Batch rules: rows changed by the first batch, which is all a dry run
    /// executes (PostgreSQL, MySQL/MariaDB, SQLite). `None`: not a batch rule.
    first_batch: Option<[u64; 3]>,
    /// Rows the fix changes in all, when it is not one per rotten row (a fix
    /// of several statements that also updates `side`).
    changed: Option<u64>,
    /// A second table the same fix updates, in the same transaction.
    side: Option<Side>,
    /// Fixture files loaded after schema.sql and data.sql.
    extra: &'static [&'static str],
}

/// A second table a fix updates: its rotten rows change, every other row stays.
#[derive(Clone)]
struct Side {
    table: &'static str,
    /// Keys over the first `key_len` columns of that table's snapshot.
    rotten: &'static [&'static str],
    /// Counts every rotten row in its new state.
    check: &'static str,
}

/// A system of the pack: its rules folder, database name, engines, tables, rules.
struct System {
    name: &'static str,
    database: &'static str,
    engines: &'static [Engine],
    snaps: fn(Engine) -> Vec<Snap>,
    rules: Vec<Expect>,
}

fn snap(name: &'static str, key_len: usize, sql: impl Into<String>) -> Snap {
    Snap {
        name,
        sql: sql.into(),
        key_len,
    }
}

/// Hex text of a binary column, the same on MySQL/MariaDB and PostgreSQL.
fn hex(engine: Engine, column: &str) -> String {
    match engine {
        Engine::MySql => format!("LOWER(HEX({column}))"),
        _ => format!("encode({column}, 'hex')"),
    }
}

fn expect(rule: &'static str, table: &'static str, rotten: Rotten, effect: Effect) -> Expect {
    Expect {
        rule,
        table,
        rotten,
        effect,
        first_batch: None,
        changed: None,
        side: None,
        extra: &[],
    }
}

fn dragonfly() -> System {
    System {
        name: "dragonfly",
        database: "dragonfly",
        engines: &[Engine::MySql, Engine::Postgres, Engine::Sqlite],
        snaps: |_| {
            vec![
                snap("scheduler", 1, "SELECT id, scheduler.* FROM scheduler"),
                snap("seed_peer", 1, "SELECT id, seed_peer.* FROM seed_peer"),
            ]
        },
        rules: vec![
            expect(
                "dragonfly.duplicate-active-schedulers",
                "scheduler",
                Rotten::Keys(&["1", "2"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM scheduler WHERE id IN (1, 2) AND state = 'inactive'",
                ),
            ),
            expect(
                "dragonfly.duplicate-active-seed-peers",
                "seed_peer",
                Rotten::Keys(&["1", "7"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM seed_peer WHERE id IN (1, 7) AND state = 'inactive'",
                ),
            ),
            expect(
                "dragonfly.stale-scheduler-keepalive",
                "scheduler",
                Rotten::Keys(&["6"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM scheduler WHERE id = 6 AND state = 'inactive'",
                ),
            ),
            expect(
                "dragonfly.sweep-inactive-schedulers",
                "scheduler",
                Rotten::Keys(&["8", "11"]),
                Effect::Delete,
            ),
            expect(
                "dragonfly.sweep-inactive-seed-peers",
                "seed_peer",
                Rotten::Keys(&["4"]),
                Effect::Delete,
            ),
        ],
    }
}

/// The Nightingale shard tables that hold fixture rows (task id % 100).
const TASK_HOST_SHARDS: [&str; 10] = [
    "task_host_41",
    "task_host_42",
    "task_host_43",
    "task_host_44",
    "task_host_45",
    "task_host_46",
    "task_host_47",
    "task_host_48",
    "task_host_49",
    "task_host_50",
];

#[allow(
    clippy::too_many_lines,
    reason = "a fixture: the system's tables and its rules' expectations, one literal table"
)]
fn nightingale() -> System {
    System {
        name: "nightingale",
        database: "nightingale",
        engines: &[Engine::MySql, Engine::Postgres],
        snaps: |_| {
            let mut snaps = vec![
                // No key: (id, host, action) identify a row, copies count twice.
                snap(
                    "task_host_doing",
                    3,
                    "SELECT id, host, action, clock FROM task_host_doing",
                ),
                snap(
                    "task_scheduler",
                    1,
                    "SELECT id, scheduler FROM task_scheduler",
                ),
                snap(
                    "task_scheduler_health",
                    1,
                    "SELECT scheduler, clock FROM task_scheduler_health",
                ),
                snap("task_meta", 1, "SELECT id, timeout, created FROM task_meta"),
                snap(
                    "task_action",
                    1,
                    "SELECT id, action, clock FROM task_action",
                ),
            ];
            // The shard tables that hold rows (task id % 100).
            for shard in 41..=50 {
                snaps.push(snap(
                    TASK_HOST_SHARDS[shard - 41],
                    2,
                    format!("SELECT id, host, status, stdout, stderr FROM task_host_{shard}"),
                ));
            }
            snaps
        },
        rules: vec![
            // The SQL init files create the table without a primary key: clean.
            expect(
                "nightingale.task-host-doing-pk-drift",
                "task_host_doing",
                Rotten::Keys(&[]),
                Effect::Delete,
            ),
            Expect {
                first_batch: Some([2, 1, 0]),
                ..expect(
                    "nightingale.duplicate-doing-rows",
                    "task_host_doing",
                    Rotten::Keys(&["43|host-c|start", "45|host-d|start"]),
                    Effect::Delete,
                )
            },
            // What ibex MarkDoneStatus does for a host past its timeout: the host's
            // task_host_N row (N = id % 100) becomes 'timeout', the doing row goes.
            // `changed` is the largest count of one statement (README "Counting"):
            // the 3 host rows of task_host_42, and the 3 doing rows deleted.
            Expect {
                side: Some(Side {
                    table: "task_host_42",
                    rotten: &["42|host-e", "42|host-f", "142|host-j"],
                    check: "SELECT COUNT(*) FROM task_host_42 WHERE id IN (42, 142) \
                            AND status = 'timeout' AND stdout = '' AND stderr = ''",
                }),
                ..expect(
                    "nightingale.orphaned-doing-rows",
                    "task_host_doing",
                    Rotten::Keys(&["142|host-j|start", "42|host-e|start", "42|host-f|start"]),
                    Effect::Delete,
                )
            },
            expect(
                "nightingale.tasks-pinned-to-dead-scheduler",
                "task_scheduler",
                Rotten::Keys(&["44", "50"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM task_scheduler WHERE id IN (44, 50) AND scheduler = ''",
                ),
            ),
            expect(
                "nightingale.doing-rows-past-timeout",
                "task_host_doing",
                Rotten::Keys(&["43|host-c|start", "43|host-c|start"]),
                Effect::Report,
            ),
        ],
    }
}

fn cloudstack() -> System {
    System {
        name: "cloudstack",
        database: "cloudstack",
        engines: &[Engine::MySql, Engine::Sqlite],
        snaps: |_| {
            vec![
                snap("op_ha_work", 1, "SELECT id, op_ha_work.* FROM op_ha_work"),
                snap("alert", 1, "SELECT id, alert.* FROM alert"),
                snap("mshost", 1, "SELECT id, mshost.* FROM mshost"),
                snap(
                    "vm_instance",
                    1,
                    "SELECT id, vm_instance.* FROM vm_instance",
                ),
                snap("host", 1, "SELECT id, host.* FROM host"),
            ]
        },
        rules: vec![
            expect(
                "cloudstack.duplicate-pending-ha-work",
                "op_ha_work",
                Rotten::Keys(&["2", "21", "3", "5"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM op_ha_work WHERE id IN (2, 3, 5, 21) AND step = 'Cancelled'",
                ),
            ),
            expect(
                "cloudstack.duplicate-vm-alerts",
                "alert",
                Rotten::Keys(&["2", "3", "5", "14"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM alert WHERE id IN (2, 3, 5, 14) AND archived = 1",
                ),
            ),
            expect(
                "cloudstack.release-ha-work-of-down-mgmt-server",
                "op_ha_work",
                Rotten::Keys(&["11", "14", "17"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM op_ha_work WHERE id IN (11, 14, 17) \
                     AND mgmt_server_id IS NULL AND taken IS NULL AND step IN ('Scheduled', 'Investigating')",
                ),
            ),
            expect(
                "cloudstack.ha-done-vm-not-running",
                "op_ha_work",
                Rotten::Keys(&["13"]),
                Effect::Report,
            ),
        ],
    }
}

fn icingadb() -> System {
    System {
        name: "icingadb",
        database: "icingadb",
        engines: &[Engine::MySql, Engine::Postgres],
        snaps: |e| {
            let by_id = |name: &'static str| {
                snap(
                    name,
                    1,
                    format!("SELECT {}, {name}.* FROM {name}", hex(e, "id")),
                )
            };
            vec![
                by_id("host_state"),
                by_id("service_state"),
                by_id("redundancy_group_state"),
                by_id("dependency_edge_state"),
                by_id("host"),
                by_id("service"),
                by_id("redundancy_group"),
                by_id("dependency_edge"),
                by_id("dependency_node"),
                by_id("icingadb_instance"),
                by_id("environment"),
            ]
        },
        // Report-only: during an initial sync (environment e3 of the fixture) a
        // state row arrives before its object and looks exactly like an orphan,
        // so the rows are reported, never deleted (icingadb cmd/icingadb/main.go).
        rules: vec![
            expect(
                "icingadb.orphaned-host-state",
                "host_state",
                Rotten::Keys(&[
                    "a000000000000000000000000000000000000003",
                    "a000000000000000000000000000000000000006",
                    "a000000000000000000000000000000000000009",
                ]),
                Effect::Report,
            ),
            expect(
                "icingadb.orphaned-service-state",
                "service_state",
                Rotten::Keys(&[
                    "b000000000000000000000000000000000000003",
                    "b000000000000000000000000000000000000007",
                    "b000000000000000000000000000000000000009",
                ]),
                Effect::Report,
            ),
            expect(
                "icingadb.orphaned-redundancy-group-state",
                "redundancy_group_state",
                Rotten::Keys(&[
                    "c000000000000000000000000000000000000002",
                    "c000000000000000000000000000000000000009",
                ]),
                Effect::Report,
            ),
            expect(
                "icingadb.orphaned-dependency-edge-state",
                "dependency_edge_state",
                Rotten::Keys(&[
                    "f100000000000000000000000000000000000002",
                    "f100000000000000000000000000000000000005",
                    "f100000000000000000000000000000000000009",
                ]),
                Effect::Report,
            ),
        ],
    }
}

fn generic() -> System {
    System {
        name: "generic",
        database: "app",
        engines: &[Engine::MySql, Engine::Postgres, Engine::Sqlite],
        snaps: |_| {
            vec![
                snap("jobs", 1, "SELECT id, jobs.* FROM jobs"),
                snap("sessions", 1, "SELECT id, sessions.* FROM sessions"),
                snap(
                    "event_history",
                    1,
                    "SELECT id, event_history.* FROM event_history",
                ),
                snap("orders", 1, "SELECT id, orders.* FROM orders"),
                snap(
                    "order_items",
                    1,
                    "SELECT id, order_items.* FROM order_items",
                ),
            ]
        },
        rules: vec![
            expect(
                "generic.stuck-jobs",
                "jobs",
                Rotten::Keys(&["1", "2"]),
                Effect::Update(
                    "SELECT COUNT(*) FROM jobs WHERE id IN (1, 2) AND status = 'queued' \
                     AND worker IS NULL AND heartbeat_at IS NULL AND attempts IN (1, 3)",
                ),
            ),
            expect(
                "generic.expired-sessions",
                "sessions",
                Rotten::Keys(&["expired-2d", "expired-3h", "expired-2h"]),
                Effect::Delete,
            ),
            Expect {
                first_batch: Some([1000, 1000, 1000]),
                ..expect(
                    "generic.history-retention",
                    "event_history",
                    Rotten::Query("SELECT id FROM event_history WHERE event = 'login'"),
                    Effect::Delete,
                )
            },
            expect(
                "generic.orphaned-children",
                "order_items",
                Rotten::Keys(&["4", "5"]),
                Effect::Delete,
            ),
        ],
    }
}

/// One snapshot row: its key and every value.
type Row = (String, Vec<Option<String>>);

fn cell(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "NULL".to_owned())
}

async fn take(db: &TestDb, snap: &Snap) -> Vec<Row> {
    let mut rows: Vec<Row> = db
        .rows(&snap.sql)
        .await
        .into_iter()
        .map(|r| {
            let key = r[..snap.key_len]
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join("|");
            (key, r)
        })
        .collect();
    rows.sort();
    rows
}

async fn take_all(db: &TestDb, snaps: &[Snap]) -> Vec<Vec<Row>> {
    let mut all = Vec::new();
    for s in snaps {
        all.push(take(db, s).await);
    }
    all
}

fn engine_index(engine: Engine) -> usize {
    match engine {
        Engine::Postgres => 0,
        Engine::MySql => 1,
        Engine::Sqlite => 2,
    }
}

async fn fixture_db(system: &str, engine: Engine, extra: &[&str]) -> TestDb {
    let db = TestDb::new(engine).await;
    for file in ["schema.sql", "data.sql"].iter().chain(extra) {
        db.load_fixture(&format!("{system}/{}/{file}", engine.key()))
            .await;
    }
    db
}

fn case(system: &System, db: &TestDb) -> Case {
    Case::new()
        .database(system.database, db.url())
        .repo_rules(&format!("rules/{}", system.name))
}

fn num(record: &Value, field: &str) -> Option<u64> {
    record[field].as_u64()
}

/// The rows a rule must find, as keys of its table's snapshot.
async fn rotten_keys(db: &TestDb, expect: &Expect) -> Vec<String> {
    match &expect.rotten {
        Rotten::Keys(keys) => keys.iter().map(|k| (*k).to_owned()).collect(),
        Rotten::Query(sql) => {
            let keys: Vec<String> = db.rows(sql).await.iter().map(|r| cell(&r[0])).collect();
            // A query that finds nothing would turn the case into a quiet
            // `clean` check that passes whatever the rule does.
            assert!(
                !keys.is_empty(),
                "{}: the rotten-rows query finds nothing on the fixture: {sql}",
                expect.rule
            );
            keys
        }
    }
}

/// Rows the fix changes in all (the dry run of a batch rule: its first batch).
fn expected_changed(expect: &Expect, engine: Engine, n: u64, dry_run: bool) -> u64 {
    match (dry_run, expect.first_batch) {
        (true, Some(batch)) => batch[engine_index(engine)],
        _ => expect.changed.unwrap_or(n),
    }
}

/// A report lists the rows it found: with at most 5 (the sample), the sample's
/// first column is exactly the first part of each rotten key.
fn assert_sample_is(what: &str, rec: &Value, rotten: &[String]) {
    if rotten.len() > 5 {
        return;
    }
    let mut found: Vec<String> = rec["sample"]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r[0].as_str().unwrap_or("NULL").to_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut expected: Vec<String> = rotten
        .iter()
        .map(|k| k.split('|').next().unwrap_or_default().to_owned())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "{what}: the rows reported\n{rec}");
}

/// The rotten rows of a table changed, every other row is identical, no row
/// was added or deleted.
fn assert_only_rotten_changed(
    what: &str,
    table: &str,
    before: &[Row],
    after: &[Row],
    rotten: &[String],
) {
    let keys = |rows: &[Row]| rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(after),
        keys(before),
        "{what}: rows added or deleted in {table}"
    );
    let healthy = |rows: &[Row]| {
        rows.iter()
            .filter(|(k, _)| !rotten.contains(k))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        healthy(after),
        healthy(before),
        "{what}: a healthy row of {table} changed"
    );
    for key in rotten {
        let was = before.iter().find(|(k, _)| k == key);
        let now = after.iter().find(|(k, _)| k == key);
        assert!(
            was.is_some() && was != now,
            "{what}: rotten row {key} of {table} did not change"
        );
    }
}

/// After the run: the rule's table changed as its effect says, the side table
/// (if any) only in its rotten rows, every other table not at all.
#[allow(clippy::too_many_arguments)]
async fn assert_effect(
    what: &str,
    db: &TestDb,
    expect: &Expect,
    snaps: &[Snap],
    before: &[Vec<Row>],
    after: &[Vec<Row>],
    table: usize,
    rotten: &[String],
) {
    for (i, s) in snaps.iter().enumerate() {
        match &expect.side {
            Some(side) if side.table == s.name => {
                let keys: Vec<String> = side.rotten.iter().map(|k| (*k).to_owned()).collect();
                assert_only_rotten_changed(what, s.name, &before[i], &after[i], &keys);
                assert_eq!(
                    db.scalar(side.check).await,
                    keys.len() as i64,
                    "{what}: {}",
                    side.check
                );
            }
            _ if i != table => assert!(after[i] == before[i], "{what}: table {} changed", s.name),
            _ => {}
        }
    }
    match &expect.effect {
        Effect::Report => assert!(
            after[table] == before[table],
            "{what}: a report-only rule changed data"
        ),
        Effect::Delete => {
            let mut expected = before[table].clone();
            for key in rotten {
                let at = expected
                    .iter()
                    .position(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("{what}: rotten key {key} is not in the fixture"));
                expected.remove(at);
            }
            assert_eq!(after[table], expected, "{what}: rows deleted");
        }
        Effect::Update(check) => {
            assert_only_rotten_changed(
                what,
                snaps[table].name,
                &before[table],
                &after[table],
                rotten,
            );
            assert_eq!(
                db.scalar(check).await,
                rotten.len() as i64,
                "{what}: {check}"
            );
        }
    }
}

/// One step's record in `check_rule`: its outcome, the rows detect counted
/// and, where the step fixes or would fix, the rows changed.
fn assert_step(
    what: &str,
    step: &str,
    out: &RunOutput,
    rec: &Value,
    outcome: &str,
    detected: u64,
    changed: Option<u64>,
) {
    assert_eq!(rec["outcome"], outcome, "{what}: {step}\n{}", out.stdout);
    assert_eq!(
        num(rec, "detected"),
        Some(detected),
        "{what}: {step} detected\n{}",
        out.stdout
    );
    if let Some(changed) = changed {
        assert_eq!(
            num(rec, "changed"),
            Some(changed),
            "{what}: {step} changed\n{}",
            out.stdout
        );
    }
}

/// Runs one rule three times (dry run, run, re-run) on a fresh fixture and
/// checks every table after each.
async fn check_rule(system: &System, engine: Engine, expect: &Expect) {
    let what = format!("{} on {}", expect.rule, engine.key());
    let db = fixture_db(system.name, engine, expect.extra).await;
    let snaps = (system.snaps)(engine);
    let table = snaps
        .iter()
        .position(|s| s.name == expect.table)
        .unwrap_or_else(|| panic!("{what}: no snapshot {}", expect.table));
    let before = take_all(&db, &snaps).await;
    let rotten = rotten_keys(&db, expect).await;
    let n = rotten.len() as u64;
    let case = case(system, &db);
    let (dry_outcome, run_outcome) = match (&expect.effect, n) {
        (_, 0) => ("clean", "clean"),
        (Effect::Report, _) => ("found", "found"),
        _ => ("would_fix", "fixed"),
    };

    // 1. Dry run: exact counts, nothing changed.
    let out = case.run(&["run", expect.rule, "--dry-run", "--output", "json"]);
    out.assert_code(0);
    let rec = out.record(expect.rule, system.database);
    let changed = (dry_outcome == "would_fix").then(|| expected_changed(expect, engine, n, true));
    assert_step(&what, "dry run", &out, &rec, dry_outcome, n, changed);
    if dry_outcome == "found" {
        assert_sample_is(&what, &rec, &rotten);
    }
    assert!(
        take_all(&db, &snaps).await == before,
        "{what}: the dry run changed data"
    );

    // 2. The run: exactly the rotten rows change.
    let out = case.run(&["run", expect.rule, "--output", "json"]);
    out.assert_code(0);
    let rec = out.record(expect.rule, system.database);
    let changed = (run_outcome == "fixed").then(|| expected_changed(expect, engine, n, false));
    assert_step(&what, "run", &out, &rec, run_outcome, n, changed);
    let after = take_all(&db, &snaps).await;
    assert_effect(&what, &db, expect, &snaps, &before, &after, table, &rotten).await;

    // 3. The re-run: clean (report-only rules find the same rows again).
    let out = case.run(&["run", expect.rule, "--output", "json"]);
    out.assert_code(0);
    let rec = out.record(expect.rule, system.database);
    let (rerun_outcome, rerun_detected) = match (&expect.effect, n) {
        (Effect::Report, n) if n > 0 => ("found", n),
        _ => ("clean", 0),
    };
    assert_step(
        &what,
        "re-run",
        &out,
        &rec,
        rerun_outcome,
        rerun_detected,
        None,
    );
    assert!(
        take_all(&db, &snaps).await == after,
        "{what}: the re-run changed data"
    );
}

async fn check_system(system: System, engine: Engine) {
    assert!(system.engines.contains(&engine));
    for expect in &system.rules {
        check_rule(&system, engine, expect).await;
    }
}

macro_rules! system_tests {
    ($($test:ident: $system:ident on $engine:ident;)*) => {$(
        #[tokio::test]
        async fn $test() {
            check_system($system(), Engine::$engine).await;
        }
    )*};
}

system_tests! {
    dragonfly_rules_on_mysql: dragonfly on MySql;
    dragonfly_rules_on_postgres: dragonfly on Postgres;
    dragonfly_rules_on_sqlite: dragonfly on Sqlite;
    nightingale_rules_on_mysql: nightingale on MySql;
    nightingale_rules_on_postgres: nightingale on Postgres;
    cloudstack_rules_on_mysql: cloudstack on MySql;
    cloudstack_rules_on_sqlite: cloudstack on Sqlite;
    icingadb_rules_on_mysql: icingadb on MySql;
    icingadb_rules_on_postgres: icingadb on Postgres;
    generic_rules_on_mysql: generic on MySql;
    generic_rules_on_postgres: generic on Postgres;
    generic_rules_on_sqlite: generic on Sqlite;
}

/// Nightingale's own database initialisation (pkg/ormx/database_init.go)
/// creates task_meta with unsigned columns on MySQL/MariaDB
/// (`auto-init.sql`): the rules that compute with a task's timeout give the
/// same answers there, and no arithmetic fails with "BIGINT UNSIGNED value is
/// out of range".
#[tokio::test]
async fn nightingale_timeout_rules_on_the_auto_init_schema() {
    let system = nightingale();
    let timed = [
        "nightingale.orphaned-doing-rows",
        "nightingale.doing-rows-past-timeout",
    ];
    for expect in system.rules.iter().filter(|e| timed.contains(&e.rule)) {
        let variant = Expect {
            extra: &["auto-init.sql"],
            ..expect.clone()
        };
        check_rule(&system, Engine::MySql, &variant).await;
    }
}

/// Every rule file of the pack is covered by an expectation above, and every
/// expectation names a rule of the pack.
#[test]
fn every_rule_of_the_pack_is_tested() {
    let mut tested: Vec<String> = [
        dragonfly(),
        nightingale(),
        cloudstack(),
        icingadb(),
        generic(),
    ]
    .iter()
    .flat_map(|s| {
        s.rules
            .iter()
            .map(|e| e.rule.to_owned())
            .collect::<Vec<_>>()
    })
    .collect();
    tested.sort();
    let mut in_pack = Vec::new();
    for system in [
        "dragonfly",
        "nightingale",
        "cloudstack",
        "icingadb",
        "generic",
    ] {
        for entry in std::fs::read_dir(repo(&format!("rules/{system}"))).expect("rules folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("rule file");
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("name: "))
                    .unwrap_or_else(|| panic!("{}: no name", path.display()));
                in_pack.push(name.trim().to_owned());
            }
        }
    }
    in_pack.sort();
    assert_eq!(tested, in_pack);
}

const DRIFT: &str = "nightingale.task-host-doing-pk-drift";

fn second_host_insert(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => {
            "INSERT INTO task_host_doing (id, host, clock, action) VALUES (41, 'host-b', UNIX_TIMESTAMP(), 'start')"
        }
        _ => {
            "INSERT INTO task_host_doing (id, host, clock, action) \
             VALUES (41, 'host-b', extract(epoch from now())::bigint, 'start')"
        }
    }
}

/// nightingale issue #2408 end to end: with the ORM-created primary key on
/// `id`, a task's second host cannot be inserted; after the rule's DDL fix it
/// can, and the rule is clean.
async fn drift_end_to_end(engine: Engine) {
    let system = nightingale();
    let db = fixture_db("nightingale", engine, &["drift.sql"]).await;
    let case = case(&system, &db);

    let err = db
        .try_exec(second_host_insert(engine))
        .await
        .expect_err("the drifted table must refuse a second host for task 41");
    let expected = match engine {
        Engine::MySql => "Duplicate entry '41' for key 'PRIMARY'",
        _ => "duplicate key value violates unique constraint \"task_host_doing_pkey\"",
    };
    assert!(err.contains(expected), "unexpected error: {err}");

    // Dry run: autocommit mode reports without running the DDL.
    let out = case.run(&["run", DRIFT, "--dry-run", "--output", "json"]);
    out.assert_code(0);
    let rec = out.record(DRIFT, "nightingale");
    assert_eq!(rec["outcome"], "would_fix", "{}", out.stdout);
    assert_eq!(num(&rec, "detected"), Some(1));
    assert!(
        db.try_exec(second_host_insert(engine)).await.is_err(),
        "the dry run changed the table"
    );

    let out = case.run(&["run", DRIFT, "--output", "json"]);
    out.assert_code(0);
    let rec = out.record(DRIFT, "nightingale");
    assert_eq!(rec["outcome"], "fixed", "{}", out.stdout);
    assert_eq!(num(&rec, "detected"), Some(1));
    // DDL changes the schema, not rows: MariaDB's "rows copied" are not counted.
    assert_eq!(num(&rec, "changed"), Some(0), "{}", out.stdout);

    db.exec(second_host_insert(engine)).await;
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM task_host_doing WHERE id = 41")
            .await,
        2
    );
    // The rows that were there survive the rebuild.
    assert_eq!(db.scalar("SELECT COUNT(*) FROM task_host_doing").await, 5);

    let out = case.run(&["run", DRIFT, "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome(DRIFT, "nightingale"), "clean", "{}", out.stdout);
}

#[tokio::test]
async fn nightingale_drift_end_to_end_on_mysql() {
    drift_end_to_end(Engine::MySql).await;
}

#[tokio::test]
async fn nightingale_drift_end_to_end_on_postgres() {
    drift_end_to_end(Engine::Postgres).await;
}

/// The primary key (id, host) that releases with the upstream repair create is
/// correct: the drift rule leaves it alone.
#[tokio::test]
async fn nightingale_composite_primary_key_is_not_drift() {
    for engine in [Engine::MySql, Engine::Postgres] {
        let system = nightingale();
        let db = fixture_db("nightingale", engine, &["orm-composite-pk.sql"]).await;
        let out = case(&system, &db).run(&["run", DRIFT, "--output", "json"]);
        out.assert_code(0);
        assert_eq!(
            out.outcome(DRIFT, "nightingale"),
            "clean",
            "{}: {}",
            engine.key(),
            out.stdout
        );
    }
}

fn url_for(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => "mysql://janitor@db.example.org:3306/x",
        Engine::Postgres => "postgres://janitor@db.example.org:5432/x",
        Engine::Sqlite => "sqlite:///var/lib/x.db",
    }
}

/// `dbjanitor check` passes on the whole pack through the example config, with
/// the databases on each engine a rule claims (so every dialect is validated).
#[test]
fn check_passes_on_the_whole_pack() {
    use Engine::{MySql, Postgres, Sqlite};
    // dragonfly, nightingale, cloudstack, icingadb, app
    let combos = [
        [MySql, Postgres, Sqlite, MySql, MySql],
        [Postgres, MySql, MySql, Postgres, Postgres],
        [Sqlite, Postgres, Sqlite, MySql, Sqlite],
    ];
    let config = repo("examples/dbjanitor.yaml");
    for combo in combos {
        let vars = [
            "DRAGONFLY_DB_URL",
            "NIGHTINGALE_DB_URL",
            "CLOUDSTACK_DB_URL",
            "ICINGADB_DB_URL",
            "APP_DB_URL",
        ];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbjanitor"));
        cmd.arg("--config").arg(&config).arg("check");
        for (var, engine) in vars.iter().zip(combo) {
            cmd.env(var, url_for(engine));
        }
        cmd.env("OPS_WEBHOOK_URL", "https://hooks.example.org/dbjanitor");
        let out = cmd.output().expect("run dbjanitor check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "check failed for {combo:?}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("22 rules"), "{stdout}");
    }
}

/// `dbjanitor check --connect` prepares every rule's SQL against the fixtures,
/// on every engine each system claims.
#[tokio::test]
async fn check_connect_passes_on_every_fixture() {
    for system in [
        dragonfly(),
        nightingale(),
        cloudstack(),
        icingadb(),
        generic(),
    ] {
        for &engine in system.engines {
            let db = fixture_db(system.name, engine, &[]).await;
            let out = case(&system, &db).run(&["check", "--connect"]);
            out.assert_code(0);
            let pairs = system.rules.len();
            assert!(
                out.stdout.contains(&format!("{pairs} pairs: {pairs} ok")),
                "{} on {}:\n{}",
                system.name,
                engine.key(),
                out.stdout
            );
        }
    }
}

/// The fixtures load statement by statement: no `;` hides in a comment or a
/// string, so `mariadb db < file` style loaders and naive splitters agree.
#[test]
fn fixtures_split_cleanly_on_semicolons() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("fixture folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "sql") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for system in [
        "dragonfly",
        "nightingale",
        "cloudstack",
        "icingadb",
        "generic",
    ] {
        walk(&repo(&format!("tests/fixtures/{system}")), &mut files);
    }
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("fixture");
        let mut in_string = false;
        for (n, line) in text.lines().enumerate() {
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if !in_string && c == '-' && chars.peek() == Some(&'-') {
                    assert!(
                        !line[line.find("--").unwrap_or(0)..].contains(';'),
                        "{}:{}: ';' in a comment",
                        path.display(),
                        n + 1
                    );
                    break;
                }
                if c == '\'' {
                    in_string = !in_string;
                } else if c == ';' {
                    assert!(!in_string, "{}:{}: ';' in a string", path.display(), n + 1);
                }
            }
        }
        assert!(!in_string, "{}: unterminated string", path.display());
    }
}
