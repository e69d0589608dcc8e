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

use super::migrate::{Migrated, VERSION_TABLE_PG, applied, check, pending};
use super::{AuditError, LastRow, VERSION, clip, count};
use crate::db::pgconn::PgConn;
use crate::db::{DbError, Dialect, postgres_lock_key};
use crate::outcome::RunRecord;
use crate::sql::split_statements;

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

pub(super) const INSERT: &str = "INSERT INTO dbjanitor_runs (rule, database_name, started_at, finished_at, duration_ms, \
    outcome, reason, message, error, detected, changed, remaining, batches, dry_run, notified, host, dbjanitor_version, run_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Inserts one row per record, in one transaction.
pub(super) async fn insert(
    c: &PgConn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    in_transaction(c, async {
        for (i, r) in records.iter().enumerate() {
            let was_notified = notified.get(i).copied().unwrap_or(false);
            let duration_ms = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
            let finished = r.started_at + chrono::Duration::milliseconds(duration_ms);
            let reason = r.reason.map(|x| x.as_str());
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
            c.execute_one(INSERT, &params).await.map_err(sql_err)?;
        }
        Ok(())
    })
    .await
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

const LAST: &str = "SELECT outcome::text, started_at, duration_ms, detected, changed FROM dbjanitor_runs \
    WHERE rule = $1 AND database_name = $2 AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1";

/// The last non-dry run of a pair.
pub(super) async fn last_row(
    c: &PgConn,
    rule: &str,
    database: &str,
) -> Result<Option<LastRow>, AuditError> {
    let rows = c
        .query_one_stmt(LAST, &[(&rule, Type::TEXT), (&database, Type::TEXT)])
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

/// Brings the schema up to `target` in one transaction under
/// `pg_advisory_xact_lock` (transaction-scoped: safe behind a pooler).
pub(super) async fn migrate(
    c: &PgConn,
    lock_name: &str,
    lock_wait_ms: u128,
    target: u32,
) -> Result<Migrated, AuditError> {
    in_transaction(c, async {
        c.batch(&format!(
            "SET LOCAL lock_timeout = {lock_wait_ms}; SELECT pg_advisory_xact_lock({}); {VERSION_TABLE_PG}",
            postgres_lock_key(lock_name)
        ))
        .await
        .map_err(sql_err)?;
        let rows = c
            .query_one_stmt("SELECT version, name::text, dirty FROM dbjanitor_schema_version", &[])
            .await
            .map_err(sql_err)?;
        let mut found_rows = Vec::with_capacity(rows.len());
        for row in &rows {
            let decode = |e: tokio_postgres::Error| AuditError::Sql(e.to_string());
            let version: i32 = row.try_get(0).map_err(decode)?;
            let name: String = row.try_get(1).map_err(decode)?;
            let dirty: bool = row.try_get(2).map_err(decode)?;
            found_rows.push((i64::from(version), name, dirty));
        }
        let found = applied(found_rows);
        check(&found, Dialect::Postgres)?;
        for migration in pending(found.0, target) {
            for statement in split_statements(migration.postgres, Dialect::Postgres) {
                c.execute_one(statement, &[])
                    .await
                    .map_err(|e| AuditError::Migration {
                        version: migration.version,
                        name: migration.name,
                        error: e.to_string(),
                    })?;
            }
            let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
            let now = Utc::now();
            c.execute_one(
                "INSERT INTO dbjanitor_schema_version (version, name, applied_at, dirty, applied_by) VALUES ($1, $2, $3, false, $4)",
                &[
                    (&version, Type::INT4),
                    (&migration.name, Type::TEXT),
                    (&now, Type::TIMESTAMPTZ),
                    (&VERSION, Type::TEXT),
                ],
            )
            .await
            .map_err(sql_err)?;
        }
        Ok(Migrated {
            from: found.0,
            to: found.0.max(target),
        })
    })
    .await
}

/// The schema version (0: none yet); changes nothing.
pub(super) async fn current_version(c: &PgConn) -> Result<u32, AuditError> {
    let version = c
        .text("SELECT COALESCE(MAX(version), 0) FROM dbjanitor_schema_version")
        .await
        .map_err(sql_err)?;
    Ok(version.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// `dbjanitor history`: rows of [`super::RUNS_POSTGRES`] (`$1` rule, `$2`
/// database, `$3` since, each NULL for "any"; `$4` limit).
pub(super) async fn runs(
    c: &PgConn,
    filter: &super::RunFilter,
) -> Result<Vec<super::AuditRun>, AuditError> {
    let limit = i64::from(filter.limit);
    let rows = c
        .query_one_stmt(
            super::RUNS_POSTGRES,
            &[
                (&filter.rule, Type::TEXT),
                (&filter.database, Type::TEXT),
                (&filter.since, Type::TIMESTAMPTZ),
                (&limit, Type::INT8),
            ],
        )
        .await
        .map_err(sql_err)?;
    let decode = |e: tokio_postgres::Error| AuditError::Sql(format!("dbjanitor_runs: {e}"));
    rows.iter()
        .map(|row| {
            Ok(super::AuditRun::from_row((
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
