//! The read side of the audit table: a pair's last run and state, and the
//! rows `dbjanitor history` shows.
//!
//! Why apart: `run --due`, notifications, `--metrics-file`, the daemon's
//! claim and `dbjanitor history` all read the same few per-pair queries
//! ([`sql::LAST`], [`sql::STATE`], [`sql::NOTIFIED`], [`sql::SUCCESS`]); a dry
//! run never counts, so it neither makes a rule "not due" nor is a state.

use chrono::{DateTime, Utc};

use super::conn::{Conn, finish};
use super::{AuditError, AuditStore, SCHEMA_VERSION, migrate, sql};
use crate::db::typed::{TypedRow, Value};
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

impl AuditRun {
    /// One row of [`sql::RUNS`].
    fn from_row(row: &TypedRow) -> Result<Self, AuditError> {
        Ok(AuditRun {
            run_id: row.get(0)?,
            rule: row.get(1)?,
            database: row.get(2)?,
            started_at: row.get(3)?,
            duration_ms: u64::try_from(row.get::<i64>(4)?).unwrap_or(0),
            outcome: row.get(5)?,
            reason: row.get(6)?,
            message: row.get(7)?,
            error: row.get(8)?,
            detected: unsigned(row.get(9)?),
            changed: unsigned(row.get(10)?),
            dry_run: row.get(11)?,
            host: row.get(12)?,
        })
    }
}

/// A count column read back (a negative value, which the table never
/// holds, as unknown).
fn unsigned(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
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
    let Some(row) = conn
        .query_first(sql::LAST, &[rule.into(), database.into()])
        .await?
    else {
        return Ok(None);
    };
    let last_success_at: Option<DateTime<Utc>> = match conn
        .query_first(sql::SUCCESS, &[rule.into(), database.into()])
        .await?
    {
        Some(success) => success.get(0)?,
        None => None,
    };
    Ok(Some(LastRun {
        outcome: parse_outcome(&row.get::<String>(0)?)?,
        started_at: row.get(1)?,
        duration_ms: u64::try_from(row.get::<i64>(2)?).unwrap_or(0),
        detected: unsigned(row.get(3)?),
        changed: unsigned(row.get(4)?),
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
    match conn
        .query_first(query, &[rule.into(), database.into()])
        .await?
    {
        Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
        None => Ok(None),
    }
}

async fn runs(conn: &mut Conn, filter: &RunFilter) -> Result<Vec<AuditRun>, AuditError> {
    let rule = filter.rule.as_deref();
    let database = filter.database.as_deref();
    let params: [Value<'_>; 7] = [
        rule.into(),
        rule.into(),
        database.into(),
        database.into(),
        filter.since.into(),
        filter.since.into(),
        i64::from(filter.limit).into(),
    ];
    let rows = conn.query(sql::RUNS, &params).await?;
    rows.iter().map(AuditRun::from_row).collect()
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
