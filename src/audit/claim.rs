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
//!
//! The decision is recorded before anyone is told ([`AuditStore::settle`]):
//! the run rows (with the pair's new "told" state, their `notified` flag)
//! are inserted and committed under the claim, and the caller delivers
//! afterwards, outside the transaction. A replica that claims next reads
//! the decision whether or not the message has gone out yet, so a stalled
//! audit database at the COMMIT cannot make two replicas tell one change;
//! and no transaction (no PgBouncer server connection) is held while a
//! webhook answers. When the COMMIT's answer is lost, whether the runs were
//! recorded is unknown: the caller settles again with `check`, which looks
//! for the runs' ids under a new claim — there: the decision stands and is
//! delivered; absent: it is judged again against the history as it is now.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::conn::finish;
use super::turn::{self, Turn};
use super::{AuditError, AuditStore, Conn, insert_rows, last_state_since};
use crate::db::typed::Value;
use crate::db::{Dialect, millis};
use crate::history::LastState;
use crate::outcome::RunRecord;

/// Is this run already recorded (looked up under the claim by its unique id)?
const HOLDS: &str = "SELECT 1 FROM dbjanitor_runs WHERE run_id = ?";
/// A run told under the claim whose message could not be delivered: the
/// history must not say the receivers were told (`?` is false).
const UNMARK: &str = "UPDATE dbjanitor_runs SET notified = ? WHERE run_id = ?";
/// Retention of the claim rows: a pair nobody claimed for longer than
/// `audit.keep` (its rule or database is gone, or renamed). Claiming it
/// again simply inserts the row again.
const PRUNE_PAIRS: &str = "DELETE FROM dbjanitor_pairs WHERE claimed_at < ?";

/// The claim's upsert on PostgreSQL and SQLite (`ON CONFLICT`).
const CLAIM: &str = "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) VALUES (?, ?, ?, ?) \
    ON CONFLICT (rule, database_name) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at";
/// The claim's upsert on MySQL/MariaDB (`ON DUPLICATE KEY`).
const CLAIM_MYSQL: &str = "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) VALUES (?, ?, ?, ?) \
    ON DUPLICATE KEY UPDATE claimed_by = VALUES(claimed_by), claimed_at = VALUES(claimed_at)";

/// A pair's claim: its row is locked and its history read; the runs are
/// recorded and the lock released by [`Claim::commit`].
pub struct Claim<'s> {
    store: &'s AuditStore,
    conn: Conn,
    state: Option<LastState>,
    state_at: Option<DateTime<Utc>>,
    rule: String,
    database: String,
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
                rule: rule.to_owned(),
                database: database.to_owned(),
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
    let upsert = match conn.dialect() {
        Dialect::Postgres => {
            // `SET LOCAL`: transaction-scoped, safe behind a pooler.
            conn.batch(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; SET LOCAL lock_timeout = {}",
                millis(wait)
            ))
            .await?;
            CLAIM
        }
        Dialect::MySql => {
            // Session variables of our own connection (never global); the
            // isolation level applies to the next transaction only.
            let wait_s = i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX);
            conn.execute("SET SESSION innodb_lock_wait_timeout = ?", &[wait_s.into()])
                .await?;
            conn.batch("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await?;
            conn.batch("BEGIN").await?;
            CLAIM_MYSQL
        }
        Dialect::Sqlite => {
            conn.batch("BEGIN IMMEDIATE").await?;
            CLAIM
        }
    };
    let params: [Value<'_>; 4] = [rule.into(), database.into(), host.into(), Utc::now().into()];
    conn.execute(upsert, &params).await?;
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
    /// claim, within `audit.timeout`, then applies retention if it is due.
    /// On failure the connection is dropped (the server rolls back what it
    /// has not committed), but a failure *at* the COMMIT (no answer) leaves
    /// unknown whether the runs were recorded: see [`AuditStore::settle`].
    pub async fn commit(self, records: &[RunRecord], notified: &[bool]) -> Result<(), AuditError> {
        let Claim {
            store, mut conn, ..
        } = self;
        let result = tokio::time::timeout(store.timeout, async {
            insert_rows(&mut conn, records, notified, &store.host).await?;
            end(&mut conn).await
        })
        .await;
        match result {
            Ok(Ok(())) => {
                conn.close().await;
                if let Err(e) = store.prune_if_due().await {
                    // Retention is housekeeping: the runs are recorded.
                    tracing::warn!(error = %e, "audit retention failed; it is retried later");
                }
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

impl Claim<'_> {
    /// The pair's next number in its tell sequence, within `audit.timeout`.
    async fn take_turn(&mut self, bound: Duration) -> Result<Turn, AuditError> {
        let timeout = self.store.timeout;
        tokio::time::timeout(
            timeout,
            turn::take(&mut self.conn, &self.rule, &self.database, bound),
        )
        .await
        .map_err(|_| AuditError::Timeout(timeout))?
    }

    /// Whether the run `run_id` is already in the table (seen under the
    /// claim, so no other process is recording this pair meanwhile). A run
    /// without an id cannot be looked up: `false`.
    pub async fn holds(&mut self, run_id: &str) -> Result<bool, AuditError> {
        if run_id.is_empty() {
            return Ok(false);
        }
        let timeout = self.store.timeout;
        let found = tokio::time::timeout(timeout, self.conn.query_first(HOLDS, &[run_id.into()]))
            .await
            .map_err(|_| AuditError::Timeout(timeout))??;
        Ok(found.is_some())
    }

    /// Ends the claim without recording anything (the claim row's own
    /// update is committed; if that fails the connection is dropped and the
    /// server rolls back: the lock is free either way).
    pub async fn release(self) {
        let Claim { store, conn, .. } = self;
        let mut conn = conn;
        let done = tokio::time::timeout(store.timeout, end(&mut conn)).await;
        if matches!(done, Ok(Ok(()))) {
            conn.close().await;
        } else {
            conn.abandon();
        }
    }
}

/// COMMIT of the transaction open on `conn`.
async fn end(conn: &mut Conn) -> Result<(), AuditError> {
    Ok(conn.batch("COMMIT").await?)
}

/// What [`AuditStore::settle`] did.
#[derive(Debug)]
pub enum Settled<T> {
    /// The runs were judged under the claim, and recorded and committed with
    /// their `notified` flags: the caller now delivers what it decided,
    /// after [`AuditStore::wait_turn`] with the turn (if it delivers
    /// anything), and then calls [`AuditStore::done_turn`].
    Decided(T, Option<Turn>),
    /// `check` was asked and the runs were already there: the earlier
    /// decision (whose COMMIT went through though its answer was lost)
    /// stands. With the pair's state as the history has it now: another
    /// process may have told a newer state meanwhile.
    AlreadyRecorded(Option<LastState>),
}

/// Why [`AuditStore::settle`] did not settle.
#[derive(Debug)]
pub enum Unsettled<T> {
    /// No claim or no readable history: nothing was decided or recorded.
    NotClaimed(AuditError),
    /// Decided (`T`), but the inserts or the COMMIT failed: whether the runs
    /// are recorded is unknown until a later `settle` with `check` looks.
    /// With the decision's turn, if it delivers (it exists only if the
    /// COMMIT went through).
    Unsure(AuditError, T, Option<Turn>),
}

impl AuditStore {
    /// "Read the history, decide, record" for one pair's `records` under its
    /// claim: `decide` gets the pair's last state and the start of the run
    /// it comes from, and returns its decision with one `notified` flag per
    /// record; the runs are inserted with those flags and committed before
    /// this returns, so the caller delivers *after* the decision is visible
    /// to every other process. With `check` (an earlier COMMIT's outcome is
    /// unknown), the first record's id is looked up first: found, nothing
    /// is decided again ([`Settled::AlreadyRecorded`]). A decision that
    /// tells anything takes the pair's next [`Turn`] in the same
    /// transaction, its delivery bounded by `tell_for` per told run.
    pub async fn settle<T>(
        &self,
        records: &[RunRecord],
        (wait, tell_for): (Duration, Duration),
        check: bool,
        decide: impl FnOnce(Option<&LastState>, Option<DateTime<Utc>>) -> (T, Vec<bool>),
    ) -> Result<Settled<T>, Unsettled<T>> {
        let Some(first) = records.first() else {
            let (decision, _) = decide(None, None);
            return Ok(Settled::Decided(decision, None));
        };
        let mut claim = self
            .claim(&first.rule, &first.database, wait)
            .await
            .map_err(Unsettled::NotClaimed)?;
        if check {
            match claim.holds(&first.run_id).await {
                Ok(true) => {
                    let now = claim.state().cloned();
                    claim.release().await;
                    return Ok(Settled::AlreadyRecorded(now));
                }
                Ok(false) => {}
                Err(e) => return Err(Unsettled::NotClaimed(e)),
            }
        }
        let (decision, notified) = decide(claim.state(), claim.state_at());
        let told = notified.iter().filter(|t| **t).count();
        let turn = if told == 0 {
            None
        } else {
            let bound = tell_for.saturating_mul(u32::try_from(told).unwrap_or(u32::MAX));
            match claim.take_turn(bound).await {
                Ok(turn) => Some(turn),
                Err(e) => {
                    claim.conn.abandon();
                    return Err(Unsettled::NotClaimed(e));
                }
            }
        };
        match claim.commit(records, &notified).await {
            Ok(()) => Ok(Settled::Decided(decision, turn)),
            Err(e) => Err(Unsettled::Unsure(e, decision, turn)),
        }
    }

    /// Sets `notified` back to false for runs whose message was decided
    /// under the claim but not delivered by any notifier, so the history
    /// keeps saying what the receivers were really told (README "Alert
    /// fatigue": a failed delivery is told again on the next run). Within
    /// `audit.timeout`.
    pub async fn unmark_notified(&self, run_ids: &[&str]) -> Result<(), AuditError> {
        let ids: Vec<&str> = run_ids
            .iter()
            .copied()
            .filter(|id| !id.is_empty())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            for id in &ids {
                conn.execute(UNMARK, &[false.into(), (*id).into()]).await?;
            }
            Ok(())
        })
        .await;
        finish(conn, result, self.timeout).await
    }

    /// Retention of `dbjanitor_pairs`: deletes the rows of pairs last
    /// claimed before `cutoff` (the runs' own cutoff, `audit.keep`). One
    /// statement; a pair claimed meanwhile has a new `claimed_at` and stays.
    pub(super) async fn prune_pairs(&self, cutoff: DateTime<Utc>) -> Result<u64, AuditError> {
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            Ok(conn.execute(PRUNE_PAIRS, &[cutoff.into()]).await?)
        })
        .await;
        finish(conn, result, self.timeout).await
    }
}
