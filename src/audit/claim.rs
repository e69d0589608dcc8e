//! The per-pair claim: "read the history, decide, notify, record" as one
//! step per (rule, database) pair across processes.
//!
//! Why: two daemon replicas (or a daemon and a timer) share the audit table.
//! Each judged a run against the history it read, then recorded it; when both
//! read before either recorded (their runs finished close together, or one
//! replica's recording was held up by a stalled audit database), both told
//! the receivers the same news. A claim locks the pair's row in
//! `dbjanitor_pairs` inside one transaction from the read to the insert of
//! the run rows, so the next claimer reads the history the first one wrote.
//!
//! The lock is a row lock taken by an upsert (PostgreSQL `ON CONFLICT`,
//! MySQL/MariaDB `ON DUPLICATE KEY`), in a READ COMMITTED transaction: no
//! session state and nothing named is prepared on PostgreSQL, so it works
//! behind PgBouncer in transaction mode. On SQLite, `BEGIN IMMEDIATE` takes
//! the database's write lock. A claim that is dropped without
//! [`Claim::commit`] drops its connection: the server rolls back and the lock
//! is free.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Executor;

use super::{AuditError, AuditStore, Conn, insert_rows, last_state_since, pg};
use crate::history::LastState;
use crate::outcome::RunRecord;

const CLAIM_MYSQL: &str = "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) VALUES (?, ?, ?, ?) \
    ON DUPLICATE KEY UPDATE claimed_by = VALUES(claimed_by), claimed_at = VALUES(claimed_at)";
const CLAIM_SQLITE: &str = "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) VALUES (?, ?, ?, ?) \
    ON CONFLICT (rule, database_name) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at";

/// A pair's claim: its row is locked and its history read; the runs are
/// recorded and the lock released by [`Claim::commit`].
pub struct Claim<'s> {
    store: &'s AuditStore,
    conn: Conn,
    state: Option<LastState>,
    state_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AuditStore {
    /// Claims (`rule`, `database`) and reads its last state under the claim.
    /// Waits at most `wait` for another process's claim on the same pair (it
    /// holds it while it notifies), on top of `audit.timeout` for the rest.
    pub async fn claim(
        &self,
        rule: &str,
        database: &str,
        wait: Duration,
    ) -> Result<Claim<'_>, AuditError> {
        self.migrate().await?;
        let mut conn = self.open().await?;
        let bound = self.timeout + wait;
        let taken =
            tokio::time::timeout(bound, begin(&mut conn, rule, database, &self.host, wait)).await;
        match taken {
            Ok(Ok((state, state_at))) => Ok(Claim {
                store: self,
                conn,
                state,
                state_at,
            }),
            Ok(Err(e)) => {
                conn.abandon();
                Err(e)
            }
            Err(_) => {
                conn.abandon();
                Err(AuditError::Timeout(bound))
            }
        }
    }
}

/// Opens the transaction, locks the pair's row, reads its state.
async fn begin(
    conn: &mut Conn,
    rule: &str,
    database: &str,
    host: &str,
    wait: Duration,
) -> Result<(Option<LastState>, Option<DateTime<Utc>>), AuditError> {
    let now = Utc::now();
    match &mut *conn {
        Conn::Postgres(c) => {
            pg::begin_claim(c, rule, database, host, wait.as_millis().max(1)).await?;
        }
        Conn::MySql(c, url, _) => {
            let err = |e: sqlx::Error| AuditError::sql(url, &e);
            // Session variables of our own connection (never global); the
            // isolation level applies to the next transaction only.
            sqlx::query("SET SESSION innodb_lock_wait_timeout = ?")
                .bind(wait.as_secs().max(1))
                .execute(&mut *c)
                .await
                .map_err(err)?;
            c.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await
                .map_err(err)?;
            c.execute("BEGIN").await.map_err(err)?;
            sqlx::query(CLAIM_MYSQL)
                .bind(rule)
                .bind(database)
                .bind(host)
                .bind(now)
                .execute(&mut *c)
                .await
                .map_err(err)?;
        }
        Conn::Sqlite(c, url) => {
            let err = |e: sqlx::Error| AuditError::sql(url, &e);
            c.execute("BEGIN IMMEDIATE").await.map_err(err)?;
            sqlx::query(CLAIM_SQLITE)
                .bind(rule)
                .bind(database)
                .bind(host)
                .bind(now)
                .execute(&mut *c)
                .await
                .map_err(err)?;
        }
    }
    last_state_since(conn, rule, database).await
}

impl Claim<'_> {
    /// The pair's last state as the history holds it under the claim.
    #[must_use]
    pub fn state(&self) -> Option<&LastState> {
        self.state.as_ref()
    }

    /// Start of the run the pair's state comes from (its latest real run
    /// that was not skipped): a run that started before it is superseded.
    #[must_use]
    pub fn state_at(&self) -> Option<DateTime<Utc>> {
        self.state_at
    }

    /// Records the runs (`notified[i]` for `records[i]`) and releases the
    /// claim, within `audit.timeout`. On failure nothing was recorded (the
    /// transaction is rolled back with the connection).
    pub async fn commit(self, records: &[RunRecord], notified: &[bool]) -> Result<(), AuditError> {
        let Claim {
            store, mut conn, ..
        } = self;
        let result = tokio::time::timeout(store.timeout, async {
            insert_rows(&mut conn, records, notified, &store.host).await?;
            match &mut conn {
                Conn::Postgres(c) => pg::commit(c).await,
                Conn::MySql(c, url, _) => c
                    .execute("COMMIT")
                    .await
                    .map(drop)
                    .map_err(|e| AuditError::sql(url, &e)),
                Conn::Sqlite(c, url) => c
                    .execute("COMMIT")
                    .await
                    .map(drop)
                    .map_err(|e| AuditError::sql(url, &e)),
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {
                conn.close().await;
                Ok(())
            }
            Ok(Err(e)) => {
                conn.abandon();
                Err(e)
            }
            Err(_) => {
                conn.abandon();
                Err(AuditError::Timeout(store.timeout))
            }
        }
    }
}
