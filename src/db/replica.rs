//! Replica lag between batches (`batch.max_replica_lag`): a purge that
//! commits batch after batch can leave replicas minutes behind, and every
//! read served by them stale. [`LagGate::wait`] is called by the engine
//! before each batch after the first; it returns at once while every
//! replica is within the limit, and otherwise waits (polling once a second)
//! until they are, or until the run's total wait reaches `max_lag_wait`.
//!
//! How lag is read:
//! - **PostgreSQL**, on the primary, over the rule's own session:
//!   `pg_stat_replication.replay_lag` of every connected standby. The
//!   walsender keeps that figure growing while a connected standby replays
//!   nothing (tests/it/replica.rs: a standby an hour behind is seen over a
//!   1 s limit within a second or two), and it turns NULL only once the
//!   standby has replayed everything: NULL with state `streaming` is 0.
//! - **MySQL/MariaDB**, on each URL of the database's `replicas:`:
//!   `SHOW REPLICA STATUS` (`SHOW SLAVE STATUS` on servers that do not know
//!   the former), `Seconds_Behind_Source` or `Seconds_Behind_Master`.
//!
//! A replica whose lag cannot be read (unreachable, not replicating, no
//! privilege, no standby connected at all) counts as over the limit: the
//! gate waits for it like for a lagging one, and the run stops at
//! `max_lag_wait` naming it. It is never ignored and never waited for
//! without bound.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection};
use sqlx::{AssertSqlSafe, Column, Connection, Executor, Row};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::text::TextDatabase;
use super::{DatabaseConfig, DbError, Dialect, Session, connect_error, sql_error};
use crate::secret::SecretUrl;

/// How often lag is read again while waiting.
const POLL: Duration = Duration::from_secs(1);

/// How often a wait that goes on logs that it still waits.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `batch.max_replica_lag` and `batch.max_lag_wait`: how far behind replicas
/// may fall before the next batch waits, and for how long in all a run may
/// wait before it stops between batches (reason `replica_lag_wait_exceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The next batch waits while any replica's lag exceeds this.
    pub max_lag: Duration,
    /// The most a run waits for lag in all, over all batches.
    pub max_wait: Duration,
}

/// The primary's view of its standbys, every column as text.
const PG_LAG_SQL: &str = "SELECT \
    COALESCE(NULLIF(application_name, ''), 'standby') || ' from ' || COALESCE(host(client_addr), 'local socket'), \
    state::text, EXTRACT(EPOCH FROM replay_lag)::text \
    FROM pg_stat_replication";

/// Why a run stopped waiting: what the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every replica is within the limit: run the next batch.
    Go,
    /// The run waited `max_lag_wait` in all and a replica is still over the
    /// limit or unreadable; the text says which and how far.
    Stop(String),
}

/// Why waiting ended without a verdict; the engine drops the session.
#[derive(Debug)]
pub enum GateError {
    /// The run was cancelled (SIGTERM) while waiting.
    Cancelled,
    /// A statement on the rule's own session ran past the rule's timeout.
    Timeout(Duration),
    /// The rule's own session failed (not a replica: those are only
    /// unreadable).
    Db(DbError),
}

/// One reading of one replica.
#[derive(Debug, Clone)]
struct Observed {
    /// Where it is, for the report: never a URL, never a password.
    name: String,
    /// How far behind, or why that is unknown.
    lag: Result<Duration, String>,
}

/// A MySQL/MariaDB replica and its connection, kept between readings and
/// dropped after any error.
struct MySqlReplica {
    url: SecretUrl,
    name: String,
    conn: Option<MySqlConnection>,
    /// The server answered `SHOW REPLICA STATUS` with a syntax error once
    /// (older MariaDB): use `SHOW SLAVE STATUS` from then on.
    slave_syntax: bool,
}

/// Waits between the batches of one run while replicas lag (see the module
/// documentation). One per run; it remembers how long the run waited.
pub struct LagGate {
    limits: ReplicaLag,
    dialect: Dialect,
    replicas: Vec<MySqlReplica>,
    waited: Duration,
}

impl LagGate {
    /// A gate for one run of a rule on `database` with `limits`.
    #[must_use]
    pub fn new(database: &DatabaseConfig, limits: ReplicaLag) -> Self {
        let replicas = database
            .replicas
            .iter()
            .map(|url| MySqlReplica {
                name: replica_name(url),
                url: url.clone(),
                conn: None,
                slave_syntax: false,
            })
            .collect();
        Self {
            limits,
            dialect: database.dialect,
            replicas,
            waited: Duration::ZERO,
        }
    }

    /// The limits this gate applies.
    #[must_use]
    pub fn limits(&self) -> ReplicaLag {
        self.limits
    }

    /// How long this run has waited for lag so far, over all batches.
    #[must_use]
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Returns [`Verdict::Go`] once every replica is within the limit, or
    /// [`Verdict::Stop`] when the run's total wait reached `max_lag_wait`
    /// first. While waiting, an empty transaction on `session` every poll
    /// keeps it within the server's idle limit and renews a lease lock;
    /// every statement is bounded by `timeout` and the wait by `cancel`.
    pub async fn wait<S: Session>(
        &mut self,
        session: &mut S,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<Verdict, GateError> {
        let before = self.waited;
        let mut started: Option<Instant> = None;
        let mut logged = Instant::now();
        let mut kept = Instant::now();
        loop {
            let observed = guarded(cancel, timeout, self.read(session, timeout)).await?;
            if let Some(started) = started {
                self.waited = before.saturating_add(started.elapsed());
            }
            let Some(over) = self.over_limit(&observed) else {
                if started.is_some() {
                    info!(
                        lag_waited_ms = millis(self.waited),
                        "replica lag back within batch.max_replica_lag; resuming"
                    );
                }
                return Ok(Verdict::Go);
            };
            if self.waited >= self.limits.max_wait {
                return Ok(Verdict::Stop(over));
            }
            if started.is_none() {
                started = Some(Instant::now());
                logged = Instant::now();
                warn!(lag = %over, lag_waited_ms = millis(self.waited), "replica lag over batch.max_replica_lag; waiting before the next batch");
            } else if logged.elapsed() >= LOG_EVERY {
                logged = Instant::now();
                info!(lag = %over, lag_waited_ms = millis(self.waited), "still waiting for replica lag");
            }
            let nap = POLL.min(self.limits.max_wait.saturating_sub(self.waited));
            tokio::select! {
                () = cancel.cancelled() => {
                    if let Some(started) = started {
                        self.waited = before.saturating_add(started.elapsed());
                    }
                    return Err(GateError::Cancelled);
                }
                () = tokio::time::sleep(nap) => {}
            }
            // An empty transaction every half timeout: it keeps the session
            // within the server's idle limit (twice the timeout at least),
            // and renews a lease lock (`Session::begin` does; its length is
            // three timeouts), which would otherwise expire during a long
            // wait and fail the next batch. Not every poll: each renewal is
            // a write the replicas must apply too.
            if kept.elapsed() >= timeout / 2 {
                guarded(cancel, timeout, async {
                    keep_alive(session).await.map_err(GateError::Db)
                })
                .await?;
                kept = Instant::now();
            }
        }
    }

    /// `None` when every replica is within the limit; else what is over it
    /// (or unreadable), for the log and the report.
    fn over_limit(&self, observed: &[Observed]) -> Option<String> {
        if observed.is_empty() {
            return Some(
                "no standby is connected to the primary (pg_stat_replication is empty), so no lag can be read".to_owned(),
            );
        }
        let over: Vec<String> = observed
            .iter()
            .filter_map(|o| match &o.lag {
                Ok(lag) if *lag <= self.limits.max_lag => None,
                Ok(lag) => Some(format!("{} is {:.2} s behind", o.name, lag.as_secs_f64())),
                Err(why) => Some(format!("{}: lag unreadable: {why}", o.name)),
            })
            .collect();
        (!over.is_empty()).then(|| over.join("; "))
    }

    /// One reading of every replica.
    async fn read<S: Session>(
        &mut self,
        session: &mut S,
        timeout: Duration,
    ) -> Result<Vec<Observed>, GateError> {
        if self.dialect == Dialect::Postgres {
            return Self::read_postgres(session).await;
        }
        let mut observed = Vec::with_capacity(self.replicas.len());
        for replica in &mut self.replicas {
            let lag = match tokio::time::timeout(timeout, replica.read()).await {
                Ok(Ok(lag)) => Ok(lag),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(no_answer(timeout)),
            };
            if lag.is_err() {
                replica.conn = None;
            }
            observed.push(Observed {
                name: replica.name.clone(),
                lag,
            });
        }
        Ok(observed)
    }

    /// PostgreSQL: `replay_lag` of each standby the primary streams to.
    async fn read_postgres<S: Session>(session: &mut S) -> Result<Vec<Observed>, GateError> {
        let own = match session.own(PG_LAG_SQL).await {
            Ok(own) => own,
            // An SQL error leaves the session usable (no transaction is
            // open between batches): the lag is unreadable, not the run failed.
            Err(DbError::Sql(why) | DbError::Timeout(why)) => {
                return Ok(vec![Observed {
                    name: "the primary".to_owned(),
                    lag: Err(why),
                }]);
            }
            Err(e) => return Err(GateError::Db(e)),
        };
        Ok(own
            .rows
            .iter()
            .map(|row| {
                let cell = |i: usize| row.get(i).cloned().flatten();
                let lag = match cell(1) {
                    None => Err("not allowed to read pg_stat_replication: grant the role pg_monitor (or pg_read_all_stats)".to_owned()),
                    Some(state) if state != "streaming" => {
                        Err(format!("the standby is {state}, not streaming"))
                    }
                    // NULL once the standby has replayed everything.
                    Some(_) => Ok(cell(2)
                        .and_then(|s| s.parse::<f64>().ok())
                        .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
                        .unwrap_or_default()),
                };
                Observed {
                    name: cell(0).unwrap_or_else(|| "standby".to_owned()),
                    lag,
                }
            })
            .collect())
    }
}

impl MySqlReplica {
    /// Connects if needed and reads the replica's lag; the error text is
    /// already free of secrets.
    async fn read(&mut self) -> Result<Duration, String> {
        if self.conn.is_none() {
            let options = MySqlConnectOptions::from_str(self.url.expose())
                .map_err(|e| connect_error(&self.url, &e).to_string())?;
            let conn = MySqlConnection::connect_with(&options)
                .await
                .map_err(|e| connect_error(&self.url, &e).to_string())?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let sql = if self.slave_syntax {
            "SHOW SLAVE STATUS"
        } else {
            "SHOW REPLICA STATUS"
        };
        let rows = match conn.fetch_all(sqlx::raw_sql(AssertSqlSafe(sql))).await {
            Err(e) if !self.slave_syntax && is_syntax_error(&e) => {
                self.slave_syntax = true;
                conn.fetch_all(sqlx::raw_sql(AssertSqlSafe("SHOW SLAVE STATUS")))
                    .await
            }
            other => other,
        }
        .map_err(|e| sql_error(&self.url, &e).to_string())?;
        if rows.is_empty() {
            return Err(format!("it is not a replica ({sql} returned nothing)"));
        }
        let mut worst = Duration::ZERO;
        for row in &rows {
            let column = |names: &[&str]| {
                row.columns()
                    .iter()
                    .position(|c| names.contains(&c.name()))
                    .and_then(|i| MySql::full_text(row, i))
            };
            let seconds = column(&["Seconds_Behind_Source", "Seconds_Behind_Master"]);
            let Some(seconds) = seconds.and_then(|s| s.trim().parse::<u64>().ok()) else {
                let io = column(&["Replica_IO_Running", "Slave_IO_Running"]).unwrap_or_default();
                let sql_thread =
                    column(&["Replica_SQL_Running", "Slave_SQL_Running"]).unwrap_or_default();
                return Err(format!(
                    "replication is not running (Seconds_Behind_Master is NULL; IO thread {io:?}, SQL thread {sql_thread:?})"
                ));
            };
            worst = worst.max(Duration::from_secs(seconds));
        }
        Ok(worst)
    }
}

/// `check --connect`: one reading of the replica at `url`, as the lag gate
/// takes it (connect, `SHOW REPLICA STATUS`), within `timeout`: its lag, or
/// why it cannot be read (unreachable, not a replica, replication stopped),
/// the text free of secrets. The connection is closed after it.
pub async fn probe(url: &SecretUrl, timeout: Duration) -> Result<Duration, String> {
    let mut replica = MySqlReplica {
        name: replica_name(url),
        url: url.clone(),
        conn: None,
        slave_syntax: false,
    };
    let lag = match tokio::time::timeout(timeout, replica.read()).await {
        Ok(lag) => lag,
        Err(_) => Err(no_answer(timeout)),
    };
    if let Some(conn) = replica.conn.take() {
        let _ = tokio::time::timeout(timeout, conn.close()).await;
    }
    lag
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

/// MySQL's "You have an error in your SQL syntax" (1064, SQLSTATE 42000):
/// a server that predates `SHOW REPLICA STATUS`. Not any 42000: a missing
/// privilege (1227) shares the SQLSTATE, and MySQL 8.4 no longer knows
/// `SHOW SLAVE STATUS`, so that must not switch the syntax for good.
fn is_syntax_error(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        e.code().is_some_and(|code| code == "42000") && e.message().contains("SQL syntax")
    })
}

/// An empty transaction on the rule's session while it waits between
/// batches (for replica lag, or `batch.pause`): it keeps the session within
/// the server's idle limit, and renews a lease lock (`Session::begin` does),
/// which would otherwise expire during a long wait so that another run could
/// take it and the next batch fail. An error when the lease was lost.
pub async fn keep_alive<S: Session>(session: &mut S) -> Result<(), DbError> {
    session.begin().await?;
    session.rollback().await
}

/// A replica as reports name it: `replica host:port`, never its URL.
fn replica_name(url: &SecretUrl) -> String {
    let parsed = url::Url::parse(url.redacted()).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    let port = parsed.and_then(|u| u.port()).unwrap_or(3306);
    format!("replica {host}:{port}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `future` under `timeout` and `cancel`.
async fn guarded<T>(
    cancel: &CancellationToken,
    timeout: Duration,
    future: impl Future<Output = Result<T, GateError>>,
) -> Result<T, GateError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(GateError::Cancelled),
        result = tokio::time::timeout(timeout.saturating_add(Duration::from_secs(2)), future) => {
            result.unwrap_or(Err(GateError::Timeout(timeout)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_lag: Duration) -> LagGate {
        LagGate {
            limits: ReplicaLag {
                max_lag,
                max_wait: Duration::from_mins(1),
            },
            dialect: Dialect::MySql,
            replicas: Vec::new(),
            waited: Duration::ZERO,
        }
    }

    fn observed(name: &str, lag: Result<Duration, &str>) -> Observed {
        Observed {
            name: name.to_owned(),
            lag: lag.map_err(str::to_owned),
        }
    }

    /// At the limit is within it; any replica over it or unreadable holds
    /// the batches, and is named; no replica at all is not "no lag".
    #[test]
    fn which_readings_hold_the_next_batch() {
        let gate = gate(Duration::from_secs(5));
        let five = observed("a", Ok(Duration::from_secs(5)));
        assert_eq!(gate.over_limit(std::slice::from_ref(&five)), None);
        let late = observed("b", Ok(Duration::from_millis(5_010)));
        assert_eq!(
            gate.over_limit(&[five.clone(), late]).as_deref(),
            Some("b is 5.01 s behind")
        );
        let gone = observed("c", Err("cannot connect"));
        assert_eq!(
            gate.over_limit(&[five, gone]).as_deref(),
            Some("c: lag unreadable: cannot connect")
        );
        assert!(
            gate.over_limit(&[])
                .is_some_and(|why| why.contains("no standby"))
        );
    }

    #[test]
    fn a_replica_is_named_by_host_and_port_only() {
        let url = SecretUrl::new("mysql://u:hunter2@db-replica:3307/x".to_owned());
        assert_eq!(replica_name(&url), "replica db-replica:3307");
        let url = SecretUrl::new("mysql://u:hunter2@db-replica/x".to_owned());
        assert_eq!(replica_name(&url), "replica db-replica:3306");
    }
}
