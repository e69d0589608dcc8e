//! The read side of the audit table: a pair's last run and state, and the
//! rows `dbjanitor history` shows.
//!
//! Why apart: `run --due`, notifications, `--metrics-file`, the daemon's
//! claim and `dbjanitor history` all read the same few per-pair queries
//! ([`sql::LAST`], [`sql::STATE`], [`sql::NOTIFIED`], [`sql::SUCCESS`]); a dry
//! run never counts, so it neither makes a rule "not due" nor is a state.

use chrono::{DateTime, Utc};

use super::conn::{Conn, finish, on_each};
use super::{AuditError, AuditStore, SCHEMA_VERSION, migrate, pg, sql};
use crate::history::{LastState, Notified};
use crate::outcome::Outcome;

/// The last recorded run of a pair, as `--metrics-file` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    /// Its outcome.
    pub outcome: Outcome,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its wall time.
    pub duration_ms: u64,
    /// Rows detect found.
    pub detected: Option<u64>,
    /// Rows the fix changed.
    pub changed: Option<u64>,
    /// When the pair last succeeded (clean, found, fixed), if ever.
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Which rows `dbjanitor history` reads: every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this database (its name in the config).
    pub database: Option<String>,
    /// Only runs that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows (the newest).
    pub limit: u32,
}

/// One row of the audit table as `dbjanitor history` shows it: what an
/// operator asks after an incident (what ran, what it found and changed,
/// how long it took, what it said).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRun {
    /// The run id (`None` for rows written before schema version 3).
    pub run_id: Option<String>,
    /// The rule.
    pub rule: String,
    /// The database's name in the config.
    pub database: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Its wall time in milliseconds.
    pub duration_ms: u64,
    /// Its outcome, as stored (`fixed`, `guard_tripped`, ...).
    pub outcome: String,
    /// Why it ended that way, when the outcome has a reason.
    pub reason: Option<String>,
    /// The run's message.
    pub message: Option<String>,
    /// The error, for a failed run.
    pub error: Option<String>,
    /// Rows detect found (`None`: not known).
    pub detected: Option<u64>,
    /// Rows the fix changed (`None`: not known).
    pub changed: Option<u64>,
    /// A dry run (nothing was changed).
    pub dry_run: bool,
    /// The host that ran it.
    pub host: String,
}

/// Columns of [`sql::LAST`] (and of `pg::last_row`).
pub(crate) type LastRow = (String, DateTime<Utc>, i64, Option<i64>, Option<i64>);

/// Columns of [`sql::RUNS`], in order.
pub(crate) type RunRow = (
    Option<String>,
    String,
    String,
    DateTime<Utc>,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    bool,
    String,
);

impl AuditRun {
    /// One decoded row of the history query.
    pub(super) fn from_row(row: RunRow) -> Self {
        AuditRun {
            run_id: row.0,
            rule: row.1,
            database: row.2,
            started_at: row.3,
            duration_ms: u64::try_from(row.4).unwrap_or(0),
            outcome: row.5,
            reason: row.6,
            message: row.7,
            error: row.8,
            detected: row.9.and_then(|v| u64::try_from(v).ok()),
            changed: row.10.and_then(|v| u64::try_from(v).ok()),
            dry_run: row.11,
            host: row.12,
        }
    }
}

impl AuditStore {
    /// `dbjanitor history`: the rows matching `filter`, newest first. Reads
    /// only: a database without the table yet has no runs (an empty list),
    /// and the schema is neither created nor upgraded.
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<AuditRun>, AuditError> {
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            let version = migrate::version_if_any(&mut conn).await?;
            if version == 0 {
                return Ok(Vec::new());
            }
            if version > SCHEMA_VERSION {
                return Err(AuditError::SchemaTooNew {
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            runs(&mut conn, filter).await
        })
        .await;
        finish(conn, result, self.timeout).await
    }

    /// The last non-dry run of each (rule, database) pair, with its last
    /// success, on one connection (a `--metrics-file` run reads every pair of
    /// the config).
    pub async fn last_runs(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<Option<LastRun>>, AuditError> {
        self.migrate().await?;
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            let mut out = Vec::with_capacity(pairs.len());
            for (rule, database) in pairs {
                out.push(last_run(&mut conn, rule, database).await?);
            }
            Ok(out)
        })
        .await;
        finish(conn, result, self.timeout).await
    }
}

fn parse_outcome(text: &str) -> Result<Outcome, AuditError> {
    Outcome::ALL
        .into_iter()
        .find(|o| o.as_str() == text)
        .ok_or_else(|| AuditError::Sql(format!("unknown outcome {text:?} in dbjanitor_runs")))
}

async fn last_run(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<Option<LastRun>, AuditError> {
    let row: Option<LastRow> = on_each!(
        &mut *conn,
        sql::LAST,
        pg | c | pg::last_row(c, &sql::numbered(sql::LAST), rule, database).await?,
        |c, sql, url| {
            sqlx::query_as(sql)
                .bind(rule)
                .bind(database)
                .fetch_optional(&mut *c)
                .await
                .map_err(|e| AuditError::sql(url, &e))?
        }
    );
    let Some((outcome, started_at, duration_ms, detected, changed)) = row else {
        return Ok(None);
    };
    let last_success_at = max_started(conn, sql::SUCCESS, rule, database).await?;
    Ok(Some(LastRun {
        outcome: parse_outcome(&outcome)?,
        started_at,
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        detected: detected.and_then(|v| u64::try_from(v).ok()),
        changed: changed.and_then(|v| u64::try_from(v).ok()),
        last_success_at,
    }))
}

/// The [`LastState`] of one pair (`None`: it never ran for real).
pub(super) async fn last_state(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<Option<LastState>, AuditError> {
    Ok(last_state_since(conn, rule, database).await?.0)
}

/// [`last_state`] and the start of the run its state comes from (the
/// latest real run that was not skipped): a claim judges runs that started
/// before it as superseded.
pub(crate) async fn last_state_since(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<(Option<LastState>, Option<DateTime<Utc>>), AuditError> {
    let Some((_, last_run_at)) = latest(conn, sql::LAST, rule, database).await? else {
        return Ok((None, None));
    };
    let (state, state_at) = match latest(conn, sql::STATE, rule, database).await? {
        Some((outcome, at)) => (Some(parse_outcome(&outcome)?), Some(at)),
        None => (None, None),
    };
    let notified = match latest(conn, sql::NOTIFIED, rule, database).await? {
        Some((outcome, at)) => Some(Notified {
            outcome: parse_outcome(&outcome)?,
            at,
        }),
        None => None,
    };
    Ok((
        Some(LastState {
            last_run_at,
            state,
            notified,
        }),
        state_at,
    ))
}

/// The first two columns (outcome, started_at) of the first row of a
/// per-pair query ordered newest first.
async fn latest(
    conn: &mut Conn,
    query: &'static str,
    rule: &str,
    database: &str,
) -> Result<Option<(String, DateTime<Utc>)>, AuditError> {
    let row: Option<(String, DateTime<Utc>)> = on_each!(
        conn,
        query,
        pg | c | pg::latest(c, &sql::numbered(query), rule, database).await,
        |c, sql, url| {
            sqlx::query_as(sql)
                .bind(rule)
                .bind(database)
                .fetch_optional(&mut *c)
                .await
                .map_err(|e| AuditError::sql(url, &e))
        }
    )?;
    Ok(row)
}

/// `SELECT MAX(started_at) ...` for one pair.
async fn max_started(
    conn: &mut Conn,
    query: &'static str,
    rule: &str,
    database: &str,
) -> Result<Option<DateTime<Utc>>, AuditError> {
    on_each!(
        conn,
        query,
        pg | c | pg::max_started(c, &sql::numbered(query), rule, database).await,
        |c, sql, url| {
            sqlx::query_scalar::<_, Option<DateTime<Utc>>>(sql)
                .bind(rule)
                .bind(database)
                .fetch_one(&mut *c)
                .await
                .map_err(|e| AuditError::sql(url, &e))
        }
    )
}

async fn runs(conn: &mut Conn, filter: &super::RunFilter) -> Result<Vec<AuditRun>, AuditError> {
    let limit = i64::from(filter.limit);
    let rows: Vec<RunRow> = on_each!(
        &mut *conn,
        sql::RUNS,
        pg | c | return pg::runs(c, filter).await,
        |c, sql, url| {
            sqlx::query_as(sql)
                .bind(filter.rule.clone())
                .bind(filter.rule.clone())
                .bind(filter.database.clone())
                .bind(filter.database.clone())
                .bind(filter.since)
                .bind(filter.since)
                .bind(limit)
                .fetch_all(&mut *c)
                .await
                .map_err(|e| AuditError::sql(url, &e))?
        }
    );
    Ok(rows.into_iter().map(AuditRun::from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        for outcome in Outcome::ALL {
            assert_eq!(parse_outcome(outcome.as_str()).ok(), Some(outcome));
        }
        assert!(parse_outcome("exploded").is_err());
    }
}
