//! A lease lock over time: a `batch.pause` several leases long keeps the
//! lease (each pause renews it), so no second process can take it and no
//! batch fails; and a MySQL session's lease length and idle limits follow
//! `set_statement_timeout`, as PostgreSQL's do. Asserted on the server: the
//! lease row's token and expiry all through the run, rows fixed once, the
//! session's `wait_timeout`, nothing left.

use std::time::{Duration, Instant};

use dbjanitor::db::{
    ConnectSettings, DatabaseConfig, Dialect, LEASE_TABLE_SQL, LockKind, MYSQL_LEASE_TABLE_SQL,
    MySqlSession, Session,
};
use dbjanitor::secret::SecretUrl;

use crate::lease_util::{assert_nothing_left, seed};
use crate::util::{Case, Engine, RunOutput, TestDb};

/// Two batches of 20 rows (and the empty third), `pause: 7s` between them:
/// each pause is more than twice the 3 s lease of a 1 s timeout.
fn long_pause_rule(engine: Engine) -> String {
    let fix = match engine {
        Engine::Postgres => {
            "UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE id IN \
             (SELECT id FROM job WHERE state = 'old' ORDER BY id LIMIT 20)"
        }
        _ => {
            "UPDATE job SET state = 'archived', fixes = fixes + 1 WHERE state = 'old' ORDER BY id LIMIT 20"
        }
    };
    format!(
        "name: archive\ndatabase: app\ndetect: SELECT id FROM job WHERE state = 'old'\n\
         fix: \"{fix}\"\nmax_rows: 100\ntimeout: 1s\n\
         batch: {{ pause: 7s, max_batches: 10 }}\nlock: {{ name: archive, wait: 0s }}\n"
    )
}

/// The lease row's token while it is unexpired, by the server's clock; 0
/// when there is no such row.
async fn live_lease_token(db: &TestDb) -> i64 {
    let now = match db.engine {
        Engine::Postgres => "clock_timestamp()",
        _ => "UTC_TIMESTAMP(6)",
    };
    db.scalar(&format!(
        "SELECT COALESCE(MAX(token), 0) FROM dbjanitor_leases WHERE name = 'archive' AND expires_at > {now}"
    ))
    .await
}

/// A `batch.pause` longer than the lease: the pause renews it. All through
/// the run the lease row stays unexpired with token 1, a second process
/// started during each pause is `skipped`, and the run ends `fixed` with
/// every row fixed once in three batches (20, 20, 0).
async fn a_pause_longer_than_the_lease_keeps_it(engine: Engine) {
    let db = seed(engine).await;
    // The lease table exists before the run, so the poll below never misses it.
    db.exec(match engine {
        Engine::Postgres => LEASE_TABLE_SQL,
        _ => MYSQL_LEASE_TABLE_SQL,
    })
    .await;
    let case = Case::new()
        .database_with("app", db.url(), "lock: { kind: lease }")
        .rule(&long_pause_rule(engine));
    let mut holder = case.spawn(&["run", "--output", "json"]);
    let started = Instant::now();
    while live_lease_token(&db).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no lease taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut second_runs = 0;
    loop {
        let token = live_lease_token(&db).await;
        if token != 0 {
            assert_eq!(token, 1, "the lease changed hands");
            // During each pause, more than a lease length after the batch.
            let at = started.elapsed().as_secs();
            if (at == 5 && second_runs == 0) || (at == 12 && second_runs == 1) {
                let out = case.run(&["run", "--output", "json"]);
                out.assert_code(0);
                assert_eq!(out.outcome("archive", "app"), "skipped", "{}", out.stdout);
                second_runs += 1;
            }
        } else if holder.try_wait().expect("try_wait").is_none() {
            // Released at the end: the holder exits right after.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                holder.try_wait().expect("try_wait").is_some(),
                "the lease expired while the run went on ({:?} in)",
                started.elapsed()
            );
        }
        if holder.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_mins(1), "the run hangs");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = RunOutput::from(holder.wait_with_output().expect("wait"));
    out.assert_code(0);
    let record = out.record("archive", "app");
    assert_eq!(record["outcome"], "fixed", "{}", out.stdout);
    assert_eq!(record["changed"], 40, "{record}");
    assert_eq!(record["batches"], 3, "{record}");
    assert_eq!(second_runs, 2, "a second process tried during both pauses");
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "both pauses ran"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'archived' AND fixes = 1")
            .await,
        40
    );
    assert_eq!(
        db.scalar("SELECT token FROM dbjanitor_leases WHERE name = 'archive'")
            .await,
        1
    );
    assert_nothing_left(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_pause_longer_than_the_lease_keeps_it() {
    a_pause_longer_than_the_lease_keeps_it(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_pause_longer_than_the_lease_keeps_it() {
    a_pause_longer_than_the_lease_keeps_it(Engine::MySql).await;
}

/// MySQL `set_statement_timeout` keeps the timeout it sets, as PostgreSQL's
/// does: a session connected with a 1 s timeout and set to 10 s has the idle
/// limits of 10 s on the server (2 × 10 + 10 s), takes a lease of three
/// timeouts (30 s) and says so in `abandon_bound` (10 s + 30 s).
#[tokio::test(flavor = "multi_thread")]
async fn mysql_set_statement_timeout_is_the_session_timeout() {
    let db = seed(Engine::MySql).await;
    let config = DatabaseConfig {
        pragmas: Vec::new(),
        replicas: Vec::new(),
        name: "app".to_owned(),
        dialect: Dialect::MySql,
        url: SecretUrl::new(db.url().to_owned()),
        lock: LockKind::Lease,
    };
    let settings = ConnectSettings {
        timeout: Duration::from_secs(1),
        lock_wait: Duration::ZERO,
    };
    let mut session = MySqlSession::connect(&config, &settings)
        .await
        .expect("connect");
    session
        .set_statement_timeout(Duration::from_secs(10), false)
        .await
        .expect("set the timeout");
    let limits = session
        .own("SELECT CAST(@@wait_timeout AS CHAR)")
        .await
        .expect("read the idle limit");
    assert_eq!(limits.rows, vec![vec![Some("30".to_owned())]]);
    assert!(
        session
            .lock_session("archive", Duration::ZERO)
            .await
            .expect("lease")
    );
    assert_eq!(
        db.scalar(
            "SELECT TIMESTAMPDIFF(SECOND, renewed_at, expires_at) FROM dbjanitor_leases WHERE name = 'archive'"
        )
        .await,
        30
    );
    assert_eq!(session.abandon_bound(), Duration::from_secs(40));
    session.unlock_session("archive").await.expect("release");
    session.close().await;
}
