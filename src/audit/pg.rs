//! The audit table on PostgreSQL, through tokio-postgres.
//!
//! Every statement binds its parameters through the unnamed statement
//! (`execute_typed`/`query_typed`): nothing named is prepared on the server,
//! so the audit table works behind PgBouncer in transaction mode, where a
//! named statement prepared on one server connection is missing (or already
//! exists) on the next. Multi-statement work runs inside one explicit
//! transaction, which a transaction-mode pooler keeps on one server connection.

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

use super::read::{AuditRun, LastRow, RunFilter};
use super::record::{clip, count};
use super::{AuditError, VERSION, sql};
use crate::db::DbError;
use crate::db::pgconn::PgConn;
use crate::outcome::RunRecord;

fn sql_err(e: DbError) -> AuditError {
    AuditError::Sql(e.to_string())
}

/// Runs `body` inside BEGIN ... COMMIT (READ COMMITTED: the audit table's own
/// statements need no stronger isolation, whatever the database's default).
async fn in_transaction<T>(
    c: &PgConn,
    body: impl Future<Output = Result<T, AuditError>>,
) -> Result<T, AuditError> {
    c.batch("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
        .await
        .map_err(sql_err)?;
    let result = body.await;
    match result {
        Ok(value) => {
            c.batch("COMMIT").await.map_err(sql_err)?;
            Ok(value)
        }
        Err(e) => {
            let _ = c.batch("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Inserts one row per record, in one transaction.
pub(super) async fn insert(
    c: &PgConn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    in_transaction(c, insert_rows(c, records, notified, host)).await
}

/// Inserts one row per record in the transaction that is open on `c` (a
/// pair's claim, or [`insert`]'s own).
pub(super) async fn insert_rows(
    c: &PgConn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    let insert = sql::numbered(sql::INSERT);
    for (i, r) in records.iter().enumerate() {
        let was_notified = notified.get(i).copied().unwrap_or(false);
        let duration_ms = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
        let finished = r.started_at + chrono::Duration::milliseconds(duration_ms);
        let reason = r.reason.map(crate::outcome::Reason::as_str);
        let message = r.message.as_deref().map(clip);
        let error = r.error.as_deref().map(clip);
        let counts = [
            count(r.detected),
            count(r.changed),
            count(r.remaining),
            count(r.batches),
        ];
        let outcome = r.outcome.as_str();
        // NULL, not "", for a record without an id (the column is unique).
        let run_id = (!r.run_id.is_empty()).then_some(r.run_id.as_str());
        let params: [(&(dyn ToSql + Sync), Type); 18] = [
            (&r.rule, Type::TEXT),
            (&r.database, Type::TEXT),
            (&r.started_at, Type::TIMESTAMPTZ),
            (&finished, Type::TIMESTAMPTZ),
            (&duration_ms, Type::INT8),
            (&outcome, Type::TEXT),
            (&reason, Type::TEXT),
            (&message, Type::TEXT),
            (&error, Type::TEXT),
            (&counts[0], Type::INT8),
            (&counts[1], Type::INT8),
            (&counts[2], Type::INT8),
            (&counts[3], Type::INT8),
            (&r.dry_run, Type::BOOL),
            (&was_notified, Type::BOOL),
            (&host, Type::TEXT),
            (&VERSION, Type::TEXT),
            (&run_id, Type::TEXT),
        ];
        c.execute_one(&insert, &params).await.map_err(sql_err)?;
    }
    Ok(())
}

/// Takes the claim on a pair inside a new transaction: its row in
/// `dbjanitor_pairs` is upserted, which locks it until COMMIT or ROLLBACK (or
/// the connection's end); another claimer waits at most `lock_wait_ms`
/// (`SET LOCAL`: transaction-scoped, safe behind a pooler).
pub(super) async fn begin_claim(
    c: &PgConn,
    rule: &str,
    database: &str,
    host: &str,
    lock_wait_ms: u128,
) -> Result<(), AuditError> {
    c.batch(&format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; SET LOCAL lock_timeout = {lock_wait_ms}"
    ))
    .await
    .map_err(sql_err)?;
    let now = Utc::now();
    c.execute_one(
        "INSERT INTO dbjanitor_pairs (rule, database_name, claimed_by, claimed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (rule, database_name) DO UPDATE SET claimed_by = EXCLUDED.claimed_by, claimed_at = EXCLUDED.claimed_at",
        &[
            (&rule, Type::TEXT),
            (&database, Type::TEXT),
            (&host, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
        ],
    )
    .await
    .map_err(sql_err)?;
    Ok(())
}

/// Ends the transaction a claim opened.
pub(super) async fn commit(c: &PgConn) -> Result<(), AuditError> {
    c.batch("COMMIT").await.map_err(sql_err)
}

/// One retention batch (its own implicit transaction) with `sql` (`$1`
/// cutoff, `$2` limit); rows deleted.
pub(super) async fn prune_batch(
    c: &PgConn,
    sql: &str,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, AuditError> {
    c.execute_one(sql, &[(&cutoff, Type::TIMESTAMPTZ), (&limit, Type::INT8)])
        .await
        .map_err(sql_err)
}

/// The last non-dry run of a pair (`sql`: [`sql::LAST`], numbered).
pub(super) async fn last_row(
    c: &PgConn,
    sql: &str,
    rule: &str,
    database: &str,
) -> Result<Option<LastRow>, AuditError> {
    let rows = c
        .query_one_stmt(sql, &[(&rule, Type::TEXT), (&database, Type::TEXT)])
        .await
        .map_err(sql_err)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let decode = |e: tokio_postgres::Error| AuditError::Sql(format!("dbjanitor_runs: {e}"));
    Ok(Some((
        row.try_get(0).map_err(decode)?,
        row.try_get(1).map_err(decode)?,
        row.try_get(2).map_err(decode)?,
        row.try_get(3).map_err(decode)?,
        row.try_get(4).map_err(decode)?,
    )))
}

/// The first two columns (outcome, started_at) of the first row of a
/// per-pair query (`$1` rule, `$2` database).
pub(super) async fn latest(
    c: &PgConn,
    sql: &str,
    rule: &str,
    database: &str,
) -> Result<Option<(String, DateTime<Utc>)>, AuditError> {
    let rows = c
        .query_one_stmt(sql, &[(&rule, Type::TEXT), (&database, Type::TEXT)])
        .await
        .map_err(sql_err)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let decode = |e: tokio_postgres::Error| AuditError::Sql(format!("dbjanitor_runs: {e}"));
    Ok(Some((
        row.try_get(0).map_err(decode)?,
        row.try_get(1).map_err(decode)?,
    )))
}

/// `SELECT MAX(started_at) ...` for one pair (`sql` has `$1` rule, `$2` database).
pub(super) async fn max_started(
    c: &PgConn,
    sql: &str,
    rule: &str,
    database: &str,
) -> Result<Option<DateTime<Utc>>, AuditError> {
    let rows = c
        .query_one_stmt(sql, &[(&rule, Type::TEXT), (&database, Type::TEXT)])
        .await
        .map_err(sql_err)?;
    Ok(rows
        .first()
        .and_then(|row| row.try_get::<_, Option<DateTime<Utc>>>(0).ok())
        .flatten())
}

/// `dbjanitor history`: rows of [`sql::RUNS`] (rule, database and since
/// each twice, NULL for "any"; then the limit), every parameter typed.
pub(super) async fn runs(c: &PgConn, filter: &RunFilter) -> Result<Vec<AuditRun>, AuditError> {
    let limit = i64::from(filter.limit);
    let rows = c
        .query_one_stmt(
            &sql::numbered(sql::RUNS),
            &[
                (&filter.rule, Type::TEXT),
                (&filter.rule, Type::TEXT),
                (&filter.database, Type::TEXT),
                (&filter.database, Type::TEXT),
                (&filter.since, Type::TIMESTAMPTZ),
                (&filter.since, Type::TIMESTAMPTZ),
                (&limit, Type::INT8),
            ],
        )
        .await
        .map_err(sql_err)?;
    let decode = |e: tokio_postgres::Error| AuditError::Sql(format!("dbjanitor_runs: {e}"));
    rows.iter()
        .map(|row| {
            Ok(AuditRun::from_row((
                row.try_get(0).map_err(decode)?,
                row.try_get(1).map_err(decode)?,
                row.try_get(2).map_err(decode)?,
                row.try_get(3).map_err(decode)?,
                row.try_get(4).map_err(decode)?,
                row.try_get(5).map_err(decode)?,
                row.try_get(6).map_err(decode)?,
                row.try_get(7).map_err(decode)?,
                row.try_get(8).map_err(decode)?,
                row.try_get(9).map_err(decode)?,
                row.try_get(10).map_err(decode)?,
                row.try_get(11).map_err(decode)?,
                row.try_get(12).map_err(decode)?,
            )))
        })
        .collect()
}
