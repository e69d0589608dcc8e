//! Lease fixtures shared by `lease` and `lease_timing`: the 40 rows to fix
//! and the check that no lock, transaction or session of dbjanitor's is
//! left. They live here so that no test module borrows another's helpers.

use crate::pgbouncer_util::assert_no_advisory_lock;
use crate::util::{Engine, TestDb};

/// 40 rows to fix; `fixes` counts how often each row was fixed, `fixed_by`
/// says by which process (a committed fix of the stalled holder shows).
pub(crate) async fn seed(engine: Engine) -> TestDb {
    TestDb::with_sql(
        engine,
        "CREATE TABLE job (id int PRIMARY KEY, state varchar(16) NOT NULL, \
         fixes int NOT NULL DEFAULT 0, fixed_by varchar(16)); \
         CREATE TABLE archive (id int NOT NULL); \
         INSERT INTO job (id, state) WITH RECURSIVE g(n) AS \
         (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 40) SELECT n, 'old' FROM g;",
    )
    .await
}

/// No lock, no open transaction and no session of dbjanitor's left on the
/// server, asked from a direct connection.
pub(crate) async fn assert_nothing_left(db: &TestDb) {
    match db.engine {
        Engine::Postgres => {
            assert_no_advisory_lock(db).await;
            assert_eq!(
                db.scalar(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                     AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
                    db.name
                ))
                .await,
                0,
                "an open transaction is left"
            );
        }
        Engine::MySql => {
            assert_eq!(
                db.scalar(&format!(
                    "SELECT IS_USED_LOCK('dbjanitor:{}:archive') IS NOT NULL",
                    db.name
                ))
                .await,
                0,
                "a GET_LOCK is left"
            );
            assert_eq!(
                db.scalar(&format!(
                    "SELECT count(*) FROM information_schema.innodb_trx t \
                     JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
                     WHERE p.db = '{}'",
                    db.name
                ))
                .await,
                0,
                "an open transaction is left"
            );
            // The process has exited; the server notices the closed sockets
            // a moment later on a busy machine, so give it up to 5 s.
            let sessions = format!(
                "SELECT count(*) FROM information_schema.processlist \
                 WHERE db = '{}' AND id <> CONNECTION_ID()",
                db.name
            );
            let mut left = db.scalar(&sessions).await;
            for _ in 0..50 {
                if left == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                left = db.scalar(&sessions).await;
            }
            assert_eq!(left, 0, "a session is left");
        }
        Engine::Sqlite => unreachable!("no leases on SQLite"),
    }
}
