//! Leases (issue 15) where they are not about PgBouncer: on MySQL/MariaDB
//! (the answer for Galera, whose `GET_LOCK` is node-local) under the same
//! tests as the advisory lock, and a stalled holder on both engines, stalled
//! through the fault proxy past its lease while another process takes the
//! lease: it must not commit. Everything is asserted on the server: rows
//! fixed exactly once, the lease row's token, no lock and no open
//! transaction left.

use std::time::{Duration, Instant};

use crate::faults::{FaultProxy, When};
use crate::lease_util::{assert_nothing_left, seed};
use crate::pgbouncer_util::{
    assert_archived_once, assert_lease_lost, kill_a_holder, modes, race_four, take_over,
};
use crate::util::{Case, Engine, RunOutput, TestDb};

/// Archives into a table without a key: a second fix of the same rows
/// would show up as duplicates (MySQL spelling of the PgBouncer test's fix).
const ARCHIVE_ALL: &str = "INSERT INTO archive SELECT id FROM job WHERE state = 'old' ORDER BY id; \
    UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE state = 'old' AND id IN (SELECT id FROM archive); \
    DO SLEEP(0.5)";
const ARCHIVE_BATCH: &str = "INSERT INTO archive SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 10; \
    UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE state = 'old' AND id IN (SELECT id FROM archive); \
    DO SLEEP(0.2)";

fn mode_rule(name: &str, fix: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
         fix: \"{fix}\"\nmax_rows: 100\nverify: false\nlock: {{ name: archive }}\n{extra}"
    )
}

/// MySQL/MariaDB with `lock: {kind: lease}`: four processes per mode, each
/// row fixed exactly once, exactly one `fixed`, one lease row, nothing left.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_lease_every_mode_fixes_each_row_exactly_once() {
    for (name, fix, extra) in modes(ARCHIVE_ALL, ARCHIVE_BATCH) {
        let db = seed(Engine::MySql).await;
        let case = Case::new()
            .database_with("app", db.url(), "lock: { kind: lease }")
            .rule(&mode_rule(name, fix, extra));
        race_four(&case, name);
        assert_archived_once(&db, name).await;
        assert_eq!(
            db.scalar("SELECT count(*) FROM job WHERE state = 'archived' AND fixes = 1")
                .await,
            40,
            "{name}"
        );
        // The lease, not GET_LOCK: one row, given up at the end.
        assert_eq!(
            db.scalar(
                "SELECT count(*) FROM dbjanitor_leases WHERE name = 'archive' \
                 AND token >= 1 AND expires_at < UTC_TIMESTAMP(6)"
            )
            .await,
            1,
            "{name}"
        );
        assert_nothing_left(&db).await;
    }
}

/// `auto` on a MariaDB that is not a Galera node takes `GET_LOCK`: no lease
/// table appears. (The Galera side cannot run on this machine.)
#[tokio::test(flavor = "multi_thread")]
async fn mysql_auto_takes_get_lock_outside_galera() {
    let db = seed(Engine::MySql).await;
    let out = Case::new()
        .database("app", db.url())
        .rule(&mode_rule("auto", ARCHIVE_ALL, ""))
        .run(&["run", "--output", "json"]);
    out.assert_code(0);
    assert_eq!(out.outcome("auto", "app"), "fixed", "{}", out.stdout);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' \
             AND table_name = 'dbjanitor_leases'",
            db.name
        ))
        .await,
        0
    );
    assert_nothing_left(&db).await;
}

/// SIGKILL of a MySQL lease holder mid-batch: its lease expires on its own
/// (three statement timeouts, at least 3 s) and the next run takes over with
/// a higher token and finishes; every row fixed once.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_killed_lease_holder_is_replaced_after_expiry() {
    let db = seed(Engine::MySql).await;
    let slow_batch = "UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE state = 'old' \
        ORDER BY id LIMIT 2; DO SLEEP(0.5)";
    let case = Case::new()
        .database_with("app", db.url(), "lock: { kind: lease }")
        .rule(&format!(
            "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
             fix: \"{slow_batch}\"\nmax_rows: 100\ntimeout: 1s\n\
             batch: {{ pause: 10ms, max_batches: 1000 }}\nlock: {{ name: archive, wait: 30s }}\n"
        ));
    kill_a_holder(&db, &case).await;
    // The dead holder's lease is still there, token 1.
    assert_eq!(
        db.scalar("SELECT token FROM dbjanitor_leases WHERE name = 'archive'")
            .await,
        1
    );
    take_over(&db, &case).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'archived' AND fixes = 1")
            .await,
        40
    );
    assert_nothing_left(&db).await;
}

/// A MySQL holder whose transaction outlasts its lease (four 0.9 s
/// statements, lease 3 s) must not commit: the fencing check before COMMIT
/// fails, the transaction is rolled back, nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_holder_whose_lease_expired_does_not_commit() {
    let db = seed(Engine::MySql).await;
    let slow_fix = "UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE state = 'old'; \
        DO SLEEP(0.9); DO SLEEP(0.9); DO SLEEP(0.9); DO SLEEP(0.9)";
    let out = Case::new()
        .database_with("app", db.url(), "lock: { kind: lease }")
        .rule(&format!(
            "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
             fix: \"{slow_fix}\"\nmax_rows: 100\ntimeout: 1s\nlock: {{ name: archive }}\n"
        ))
        .run(&["run", "--output", "json"]);
    assert_lease_lost(&out);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'old' AND fixes = 0")
            .await,
        40
    );
    assert_nothing_left(&db).await;
}

/// The stalled holder's batch: 10 rows, then four statements whose text
/// the proxy stalls on (each stall shorter than a statement's limit, their
/// sum longer than the lease).
fn stall_fix(engine: Engine, by: &str) -> String {
    let update = match engine {
        Engine::Postgres => format!(
            "UPDATE job SET state = 'archived', fixes = fixes + 1, fixed_by = '{by}' \
             WHERE id IN (SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 10)"
        ),
        _ => format!(
            "UPDATE job SET state = 'archived', fixes = fixes + 1, fixed_by = '{by}' \
             WHERE state = 'old' ORDER BY id LIMIT 10"
        ),
    };
    format!(
        "{update}; SELECT 1 /* stall-1 */; SELECT 1 /* stall-2 */; SELECT 1 /* stall-3 */; SELECT 1 /* stall-4 */"
    )
}

fn stall_rule(engine: Engine, by: &str, timeout: &str, wait: &str) -> String {
    format!(
        "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
         fix: \"{}\"\nmax_rows: 100\nverify: false\ntimeout: {timeout}\n\
         batch: {{ pause: 10ms, max_batches: 100 }}\nlock: {{ name: archive, wait: {wait} }}\n",
        stall_fix(engine, by)
    )
}

/// The stalled-holder scenario against `upstream` (a direct server URL or
/// PgBouncer's) with the holder behind a fault proxy and the taker direct.
async fn stalled_holder_does_not_commit(db: &TestDb, upstream: &str) {
    let proxy = FaultProxy::in_front_of(upstream);
    for pattern in ["stall-1", "stall-2", "stall-3", "stall-4"] {
        proxy.stall_when(pattern.as_bytes(), When::Before);
    }
    let lease = "lock: { kind: lease }";
    // Timeout 2 s: a statement may take 4 s on the client, the lease lasts 6 s.
    let holder_case = Case::new()
        .database_with("app", &proxy.url_for(upstream), lease)
        .rule(&stall_rule(db.engine, "holder", "2s", "0s"));
    let mut holder = holder_case.spawn(&["run", "--output", "json"]);
    let taker_case = Case::new()
        .database_with("app", db.url(), lease)
        .rule(&stall_rule(db.engine, "taker", "30s", "30s"));
    let token = "SELECT COALESCE(MAX(token), 0) FROM dbjanitor_leases WHERE name = 'archive'";
    let mut taker = None;
    let mut taken_at: Option<Instant> = None;
    for _ in 0..4 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proxy.is_stalled() {
            if Instant::now() > deadline || matches!(holder.try_wait(), Ok(Some(_))) {
                let _ = holder.kill();
                let out = RunOutput::from(holder.wait_with_output().expect("wait"));
                panic!("the holder never stalled: {}\n{}", out.stdout, out.stderr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if taker.is_none() {
            // Waits (lock.wait 30 s) for the lease the stalled holder keeps.
            taker = Some(taker_case.spawn(&["run", "--output", "json"]));
        }
        let stalled_at = Instant::now();
        loop {
            if taken_at.is_none() && db.scalar(token).await == 2 {
                taken_at = Some(Instant::now());
            }
            let settled = taken_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(700));
            if settled || stalled_at.elapsed() >= Duration::from_millis(3300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if taken_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(700)) {
            proxy.disarm();
            proxy.release();
            break;
        }
        proxy.release();
    }
    proxy.disarm();
    proxy.release();
    assert!(taken_at.is_some(), "the taker never took the expired lease");
    let holder = RunOutput::from(holder.wait_with_output().expect("wait"));
    let taker = RunOutput::from(
        taker
            .expect("taker started")
            .wait_with_output()
            .expect("wait"),
    );
    assert_taker_fixed_every_row(db, &holder, &taker).await;
    drop(proxy);
    assert_nothing_left(db).await;
}

/// After `stalled_holder_does_not_commit`: the holder lost its lease and
/// committed nothing; the taker fixed every row once and gave its token up.
async fn assert_taker_fixed_every_row(db: &TestDb, holder: &RunOutput, taker: &RunOutput) {
    let engine = db.engine;
    assert_lease_lost(holder);
    taker.assert_code(0);
    assert_eq!(
        taker.outcome("archive", "app"),
        "fixed",
        "{engine:?}: {}",
        taker.stdout
    );
    // Every row fixed exactly once, all by the taker.
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE fixes = 1 AND fixed_by = 'taker'")
            .await,
        40,
        "{engine:?}: {:?}",
        db.table("job").await
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM dbjanitor_leases WHERE name = 'archive' AND token = 2 \
             AND expires_at < {}",
            if engine == Engine::Postgres {
                "clock_timestamp()"
            } else {
                "UTC_TIMESTAMP(6)"
            }
        ))
        .await,
        1,
        "{engine:?}: the taker's token, given up at its end"
    );
}

/// PostgreSQL, holder through the fault proxy straight to the server.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stalled_lease_holder_does_not_commit() {
    let db = seed(Engine::Postgres).await;
    stalled_holder_does_not_commit(&db, db.url()).await;
    // Direct connections: no session of dbjanitor's is left either.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'dbjanitor'",
            db.name
        ))
        .await,
        0
    );
}

/// PostgreSQL, holder through the fault proxy in front of PgBouncer
/// (transaction mode, pool of two).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stalled_lease_holder_behind_pgbouncer_does_not_commit() {
    let db = seed(Engine::Postgres).await;
    let pooled = crate::pgbouncer_util::pooled(&db);
    stalled_holder_does_not_commit(&db, &pooled).await;
    // Nothing (lock or setting) on either of the pool's server connections.
    crate::pgbouncer_util::assert_nothing_left(&db).await;
}

/// MySQL/MariaDB, holder through the fault proxy.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_stalled_lease_holder_does_not_commit() {
    let db = seed(Engine::MySql).await;
    stalled_holder_does_not_commit(&db, db.url()).await;
}
