//! The write side of the audit table: one row per run, and retention.
//!
//! Why apart from the reads: what is written (every column of a
//! [`RunRecord`], texts clipped to [`MAX_TEXT_CHARS`]) and when old rows may
//! go (never the latest rows a read still needs, see [`sql::PRUNE`]) are the
//! audit table's recording policy; [`record`] is how a one-shot `run` uses it
//! after its rules and notifications (docs/architecture.md §3 step 9).

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::conn::{Conn, begin, end, finish};
use super::{AuditError, AuditStore, MAX_TEXT_CHARS, PRUNE_BATCH, TIMEOUT, VERSION, sql};
use crate::db::typed::Value;
use crate::outcome::RunRecord;

/// Most retention batches per call; the rest waits for the next call.
const PRUNE_MAX_BATCHES: u32 = 100;

/// Retention runs at most this often per process (a CronJob pod runs it once).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_hours(1);

/// `text` cut to [`MAX_TEXT_CHARS`] characters (on a character boundary),
/// with `…` when something was cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A count as the table's BIGINT (saturating).
fn count(value: Option<u64>) -> Option<i64> {
    value.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The parameters of [`sql::INSERT`] for one run, in order (`message` and
/// `error` already clipped).
fn run_params<'a>(
    r: &'a RunRecord,
    notified: bool,
    host: &'a str,
    (message, error): (Option<&'a str>, Option<&'a str>),
) -> [Value<'a>; 18] {
    let duration_ms = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
    // NULL, not "", for a record without an id (the column is unique).
    let run_id = (!r.run_id.is_empty()).then_some(r.run_id.as_str());
    [
        r.rule.as_str().into(),
        r.database.as_str().into(),
        r.started_at.into(),
        (r.started_at + chrono::Duration::milliseconds(duration_ms)).into(),
        duration_ms.into(),
        r.outcome.as_str().into(),
        r.reason.map(crate::outcome::Reason::as_str).into(),
        message.into(),
        error.into(),
        count(r.detected).into(),
        count(r.changed).into(),
        count(r.remaining).into(),
        count(r.batches).into(),
        r.dry_run.into(),
        notified.into(),
        host.into(),
        VERSION.into(),
        run_id.into(),
    ]
}

impl AuditStore {
    /// Inserts one row per record (in one transaction), then applies
    /// retention if it is due. `notified[i]` belongs to `records[i]`.
    pub async fn record_runs(
        &self,
        records: &[RunRecord],
        notified: &[bool],
    ) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        self.migrate().await?;
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(
            self.timeout,
            insert(&mut conn, records, notified, &self.host),
        )
        .await;
        finish(conn, result, self.timeout).await?;
        if let Err(e) = self.prune_if_due().await {
            // Retention is housekeeping: the runs are recorded.
            tracing::warn!(error = %e, "audit retention failed; it is retried later");
        }
        Ok(())
    }

    /// [`AuditStore::prune`] at most once per `PRUNE_EVERY` in a process, when `audit.keep` is set.
    pub(super) async fn prune_if_due(&self) -> Result<u64, AuditError> {
        if self.keep.is_none() {
            return Ok(0);
        }
        {
            let Ok(mut last) = self.last_prune.lock() else {
                return Ok(0);
            };
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return Ok(0);
            }
            *last = Some(Instant::now());
        }
        self.prune().await
    }

    /// Deletes rows older than `audit.keep`, [`PRUNE_BATCH`] at a time (each
    /// batch its own statement, so no long lock on the table), at most
    /// 100 batches per call. Returns the rows deleted.
    pub async fn prune(&self) -> Result<u64, AuditError> {
        let Some(cutoff) = self
            .keep
            .and_then(|keep| chrono::Duration::from_std(keep).ok())
            .and_then(|keep| Utc::now().checked_sub_signed(keep))
        else {
            return Ok(0);
        };
        let mut conn = self.open().await?;
        // Housekeeping in batches of its own: a bound per call of several batches.
        let bound = self.timeout.max(TIMEOUT);
        let result = tokio::time::timeout(bound, prune(&mut conn, cutoff)).await;
        let deleted = finish(conn, result, bound).await?;
        let pairs = self.prune_pairs(cutoff).await?;
        if pairs > 0 {
            tracing::info!(pairs, database = %self.database.name, "audit retention: claim rows of pairs unclaimed for longer than audit.keep deleted");
        }
        if deleted > 0 {
            tracing::info!(deleted, database = %self.database.name, "audit retention: old runs deleted");
        }
        Ok(deleted)
    }
}

/// The runs' rows in a transaction of their own ([`insert_rows`] between
/// BEGIN and COMMIT, READ COMMITTED on PostgreSQL). On an error the caller
/// drops the connection too.
async fn insert(
    conn: &mut Conn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    begin(conn).await?;
    let inserted = insert_rows(conn, records, notified, host).await;
    end(conn, inserted).await
}

/// [`insert`] inside the transaction already open on `conn` (a pair's claim).
pub(crate) async fn insert_rows(
    conn: &mut Conn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    for (i, record) in records.iter().enumerate() {
        let was_notified = notified.get(i).copied().unwrap_or(false);
        let message = record.message.as_deref().map(clip);
        let error = record.error.as_deref().map(clip);
        let texts = (message.as_deref(), error.as_deref());
        conn.execute(sql::INSERT, &run_params(record, was_notified, host, texts))
            .await?;
    }
    Ok(())
}

/// Retention batches until one deletes fewer than [`PRUNE_BATCH`] rows (or
/// [`PRUNE_MAX_BATCHES`] ran); rows deleted.
async fn prune(conn: &mut Conn, cutoff: DateTime<Utc>) -> Result<u64, AuditError> {
    let mut total = 0u64;
    let limit = i64::from(PRUNE_BATCH);
    for _ in 0..PRUNE_MAX_BATCHES {
        let batch = conn
            .execute(sql::PRUNE, &[cutoff.into(), limit.into()])
            .await?;
        total += batch;
        if batch < u64::from(PRUNE_BATCH) {
            break;
        }
    }
    Ok(total)
}

/// Records the runs of one `run` invocation in the audit table, if the config
/// has one: docs/architecture.md §3 step 9, after the rules and after
/// notifications (the rows store which runs were notified).
///
/// Returns the error text on failure (already logged), so the caller can put
/// it in the report and the exit status; it never touches `records`.
pub async fn record(
    store: Option<&AuditStore>,
    records: &[RunRecord],
    notified: &[bool],
) -> Option<String> {
    let store = store?;
    match store.record_runs(records, notified).await {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %e, database = %store.database(), "the runs could not be recorded in the audit table");
            Some(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }
}
