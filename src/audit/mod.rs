//! The audit history: one row per (rule, database) run in `dbjanitor_runs`,
//! in the database named by `audit.database`.
//!
//! Why a table and not only logs: `run --due` (a CronJob pod has no disk that
//! outlives it) needs each rule's last run, notifications need the last state
//! and the last notification time ([`History`]), and an operator needs to see
//! what was changed, when, by which host and which dbjanitor version, in the
//! database they already back up.
//!
//! The schema is created and upgraded by the binary itself ([`migrate`]); a
//! schema newer than this binary knows is refused before any rule runs, so an
//! older pod left behind during an upgrade stops with a clear message instead
//! of writing into a table it does not understand.
//!
//! Every operation opens its own connection and closes it, like the engine:
//! nothing is pooled, and the audit database may come and go between runs.
//! Failures are [`AuditError`]s for the caller to report; they never change
//! what a rule did.

mod claim;
mod migrate;
mod pg;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

pub use claim::{Claim, Settled, Unsettled};
pub use migrate::{MIGRATION_LOCK, MIGRATIONS, Migrated, Migration, SCHEMA_VERSION};

use crate::config::Config;
use crate::db::pgconn::PgConn;
use crate::db::{DatabaseConfig, Dialect, describe};
use crate::history::{History, HistoryError, LastState, Notified};
use crate::outcome::{Outcome, RunRecord};
use crate::secret::SecretUrl;

/// The dbjanitor version written into every row.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest `message` or `error` kept in a row, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

/// Rows deleted per retention batch (each its own statement and transaction).
pub const PRUNE_BATCH: u32 = 1000;

/// Most retention batches per call; the rest waits for the next call.
const PRUNE_MAX_BATCHES: u32 = 100;

/// Retention runs at most this often per process (a CronJob pod runs it once).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Upper bound of a connection attempt inside [`Conn::open`]; the store's own
/// `audit.timeout` ([`DEFAULT_TIMEOUT`]) is shorter and applies on top.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `audit.timeout` when the config does not say: each audit read or write
/// (connect included) gives up after this, so a stalled audit database costs
/// a run seconds, never its schedule.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `audit.migrate_lock_wait` when the config does not say: how long a
/// migration waits for another migrator and, on MySQL/MariaDB, for the
/// metadata lock of its DDL (`lock_wait_timeout`), or on PostgreSQL for its
/// table locks (`lock_timeout`).
pub const DEFAULT_MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why the audit history could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The schema was written by a newer dbjanitor.
    #[error(
        "the audit schema in the database is version {found}, but this dbjanitor ({VERSION}) knows up to version {known}: \
         a newer dbjanitor has upgraded it. Run that version (or newer) instead; nothing was run"
    )]
    SchemaTooNew {
        /// Version found in `dbjanitor_schema_version`.
        found: u32,
        /// [`SCHEMA_VERSION`].
        known: u32,
    },
    /// A MySQL migration was interrupted between its DDL and its bookkeeping.
    #[error(
        "audit schema migration {version} ({name}) was interrupted on {dialect} (DDL there commits implicitly, so it may be half applied). \
         Compare dbjanitor_runs with src/audit/migrations/{dialect}/{version:04}_{name}.sql, then either \
         `UPDATE dbjanitor_schema_version SET dirty = FALSE WHERE version = {version}` if it is applied, or \
         `DELETE FROM dbjanitor_schema_version WHERE version = {version}` to have it applied again; nothing was run"
    )]
    Dirty {
        /// The interrupted migration.
        version: u32,
        /// Its name.
        name: String,
        /// The dialect it ran on.
        dialect: Dialect,
    },
    /// A migration statement failed (rolled back, except on MySQL: see [`AuditError::Dirty`]).
    #[error("audit schema migration {version} ({name}) failed: {error}")]
    Migration {
        /// The migration.
        version: u32,
        /// Its name.
        name: &'static str,
        /// The server's message, scrubbed of secrets.
        error: String,
    },
    /// The audit database could not be reached.
    #[error("cannot connect to the audit database: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("audit database: {0}")]
    Sql(String),
    /// An operation took longer than its bound (`audit.timeout`, or the
    /// migration's own bound).
    #[error("audit database: no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A MySQL/MariaDB migration could not get the metadata lock of its DDL:
    /// nothing was applied, the next start tries again.
    #[error(
        "audit schema migration {version} ({name}) could not get the metadata lock on dbjanitor_runs within {}: \
         another session holds the table open (an open transaction that read it, e.g. mysqldump --single-transaction). \
         Nothing was applied; the next run tries again",
        humantime::format_duration(*.wait)
    )]
    MetadataLock {
        /// The migration.
        version: u32,
        /// Its name.
        name: &'static str,
        /// How long it waited (`audit.migrate_lock_wait`).
        wait: Duration,
    },
}

impl AuditError {
    /// Whether a person must act before dbjanitor may run against this
    /// database: retrying cannot help (exit status 2, like a config error).
    #[must_use]
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            AuditError::SchemaTooNew { .. } | AuditError::Dirty { .. }
        )
    }

    fn sql(url: &SecretUrl, err: &sqlx::Error) -> Self {
        AuditError::Sql(url.scrub(&describe(err)))
    }

    fn migration(migration: &Migration, url: &SecretUrl, err: &sqlx::Error) -> Self {
        AuditError::Migration {
            version: migration.version,
            name: migration.name,
            error: url.scrub(&describe(err)),
        }
    }
}

impl From<AuditError> for HistoryError {
    fn from(e: AuditError) -> Self {
        if e.needs_operator() {
            HistoryError::needing_operator(e.to_string())
        } else {
            HistoryError::new(e.to_string())
        }
    }
}

/// One connection to the audit database, of the concrete type for its
/// dialect (parameters are bound, never spliced into the SQL).
pub(crate) enum Conn {
    /// PostgreSQL (tokio-postgres: no named statements, pooler-safe).
    Postgres(PgConn),
    /// MySQL/MariaDB, with the current schema (for lock names).
    MySql(MySqlConnection, SecretUrl, String),
    /// SQLite.
    Sqlite(SqliteConnection, SecretUrl),
}

impl Conn {
    async fn open(db: &DatabaseConfig) -> Result<Self, AuditError> {
        let url = db.url.clone();
        let connect_err = |e: sqlx::Error| AuditError::Connect(url.scrub(&describe(&e)));
        let connect = async {
            match db.dialect {
                Dialect::Postgres => {
                    let conn = PgConn::connect(&url, "dbjanitor-audit", TIMEOUT)
                        .await
                        .map_err(|e| match e {
                            crate::db::DbError::Connect(text) => AuditError::Connect(text),
                            other => AuditError::Connect(other.to_string()),
                        })?;
                    Ok(Conn::Postgres(conn))
                }
                Dialect::MySql => {
                    // Times are bound as UTC DATETIME values; the session time
                    // zone is pinned to UTC so NOW() agrees if anyone uses it.
                    let options = MySqlConnectOptions::from_str(url.expose())
                        .map_err(connect_err)?
                        .timezone(Some(String::from("+00:00")));
                    let mut conn = MySqlConnection::connect_with(&options)
                        .await
                        .map_err(connect_err)?;
                    let schema: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                        .fetch_one(&mut conn)
                        .await
                        .map_err(|e| AuditError::sql(&url, &e))?;
                    Ok(Conn::MySql(conn, url.clone(), schema.unwrap_or_default()))
                }
                Dialect::Sqlite => {
                    let options = SqliteConnectOptions::from_str(url.expose())
                        .map_err(connect_err)?
                        .busy_timeout(TIMEOUT);
                    let conn = SqliteConnection::connect_with(&options)
                        .await
                        .map_err(connect_err)?;
                    Ok(Conn::Sqlite(conn, url.clone()))
                }
            }
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| AuditError::Timeout(TIMEOUT))?
    }

    /// Drops the connection at once, without waiting for a stalled server:
    /// it rolls back what was open and frees the locks when it notices.
    fn abandon(self) {
        match self {
            Conn::Postgres(c) => c.abort(),
            Conn::MySql(..) | Conn::Sqlite(..) => {}
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(crate::db::CLOSE_TIMEOUT, async {
            match self {
                Conn::Postgres(c) => c.close().await,
                Conn::MySql(c, _, _) => {
                    let _ = c.close().await;
                }
                Conn::Sqlite(c, _) => {
                    let _ = c.close().await;
                }
            }
        })
        .await;
    }
}

/// Ends an operation on `conn`: closes it politely after a success; after an
/// error or a timeout drops it, so the server rolls back whatever was open and
/// releases the migration lock.
async fn finish<T>(
    conn: Conn,
    result: Result<Result<T, AuditError>, tokio::time::error::Elapsed>,
    bound: Duration,
) -> Result<T, AuditError> {
    let result = result
        .map_err(|_| AuditError::Timeout(bound))
        .and_then(|r| r);
    if result.is_ok() {
        conn.close().await;
    }
    result
}

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

/// The audit history of one config: where it lives and how long it keeps rows.
#[derive(Debug)]
pub struct AuditStore {
    database: Arc<DatabaseConfig>,
    keep: Option<Duration>,
    timeout: Duration,
    migrate_lock_wait: Duration,
    host: String,
    migrated: tokio::sync::Mutex<bool>,
    last_prune: Mutex<Option<Instant>>,
}

pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

pub(crate) fn count(value: Option<u64>) -> Option<i64> {
    value.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn parse_outcome(text: &str) -> Result<Outcome, AuditError> {
    Outcome::ALL
        .into_iter()
        .find(|o| o.as_str() == text)
        .ok_or_else(|| AuditError::Sql(format!("unknown outcome {text:?} in dbjanitor_runs")))
}

/// Binds the columns of [`INSERT_OTHER`] in order.
macro_rules! bind_run {
    ($query:expr, $record:expr, $notified:expr, $host:expr) => {{
        let r: &RunRecord = $record;
        let duration_ms = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
        $query
            .bind(r.rule.clone())
            .bind(r.database.clone())
            .bind(r.started_at)
            .bind(r.started_at + chrono::Duration::milliseconds(duration_ms))
            .bind(duration_ms)
            .bind(r.outcome.as_str())
            .bind(r.reason.map(|x| x.as_str()))
            .bind(r.message.as_deref().map(clip))
            .bind(r.error.as_deref().map(clip))
            .bind(count(r.detected))
            .bind(count(r.changed))
            .bind(count(r.remaining))
            .bind(count(r.batches))
            .bind(r.dry_run)
            .bind($notified)
            .bind($host.to_owned())
            .bind(VERSION)
            .bind((!r.run_id.is_empty()).then(|| r.run_id.clone()))
    }};
}

const INSERT_OTHER: &str = "INSERT INTO dbjanitor_runs (rule, database_name, started_at, finished_at, duration_ms, \
    outcome, reason, message, error, detected, changed, remaining, batches, dry_run, notified, host, dbjanitor_version, run_id) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The last non-dry run of a pair, with the columns [`LastRun`] needs.
const LAST_POSTGRES: &str = "SELECT outcome, started_at, duration_ms, detected, changed FROM dbjanitor_runs \
    WHERE rule = $1 AND database_name = $2 AND NOT dry_run ORDER BY started_at DESC, id DESC LIMIT 1";
const LAST_OTHER: &str = "SELECT outcome, started_at, duration_ms, detected, changed FROM dbjanitor_runs \
    WHERE rule = ? AND database_name = ? AND dry_run = 0 ORDER BY started_at DESC, id DESC LIMIT 1";
/// The last real run of a pair that looked at the data (not skipped): its state.
const STATE_POSTGRES: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = $1 AND database_name = $2 \
    AND NOT dry_run AND outcome <> 'skipped' ORDER BY started_at DESC, id DESC LIMIT 1";
const STATE_OTHER: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND dry_run = 0 AND outcome <> 'skipped' ORDER BY started_at DESC, id DESC LIMIT 1";
/// The last real run of a pair whose notification was delivered.
const NOTIFIED_POSTGRES: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = $1 AND database_name = $2 \
    AND NOT dry_run AND notified ORDER BY started_at DESC, id DESC LIMIT 1";
const NOTIFIED_OTHER: &str = "SELECT outcome, started_at FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND dry_run = 0 AND notified = 1 ORDER BY started_at DESC, id DESC LIMIT 1";
const SUCCESS_POSTGRES: &str = "SELECT MAX(started_at) FROM dbjanitor_runs WHERE rule = $1 AND database_name = $2 \
    AND NOT dry_run AND outcome IN ('clean', 'found', 'fixed')";
const SUCCESS_OTHER: &str = "SELECT MAX(started_at) FROM dbjanitor_runs WHERE rule = ? AND database_name = ? \
    AND dry_run = 0 AND outcome IN ('clean', 'found', 'fixed')";
/// `EXISTS` a newer real run of the same pair as `r` that also satisfies `$and`.
macro_rules! newer_real_run {
    ($and:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM dbjanitor_runs n WHERE n.rule = r.rule AND n.database_name = r.database_name \
             AND (n.started_at > r.started_at OR (n.started_at = r.started_at AND n.id > r.id)) AND NOT n.dry_run",
            $and,
            ")"
        )
    };
}

/// Retention: rows older than the cutoff, except each pair's latest rows that
/// `run --due`, notifications and `--metrics-file` read (the latest real run,
/// the latest real state, the latest delivered notification, the latest
/// success), whatever their age. A dry run's row is never needed.
macro_rules! prune_sql {
    ($cutoff:literal, $limit:literal) => {
        concat!(
            "DELETE FROM dbjanitor_runs WHERE id IN (SELECT id FROM (SELECT r.id FROM dbjanitor_runs r WHERE r.started_at < ",
            $cutoff,
            " AND (r.dry_run OR (",
            newer_real_run!(""),
            " AND (r.outcome = 'skipped' OR ",
            newer_real_run!(" AND n.outcome <> 'skipped'"),
            ") AND (NOT r.notified OR ",
            newer_real_run!(" AND n.notified"),
            ") AND (r.outcome NOT IN ('clean', 'found', 'fixed') OR ",
            newer_real_run!(" AND n.outcome IN ('clean', 'found', 'fixed')"),
            "))) ORDER BY r.started_at LIMIT ",
            $limit,
            ") AS t)"
        )
    };
}

// The derived table (with its LIMIT) is what lets MySQL delete from the
// table its subquery reads (error 1093 otherwise).
const PRUNE_POSTGRES: &str = prune_sql!("$1", "$2");
const PRUNE_OTHER: &str = prune_sql!("?", "?");

/// Runs `$pg_body` on a PostgreSQL connection (see `pg`), or `$body` on a
/// sqlx connection with `$sql` set to the dialect's text (`$other` for MySQL
/// and SQLite, or one text each). The body is expanded once per arm, so each
/// arm binds and decodes with its own concrete database type.
macro_rules! on_each {
    ($conn:expr, $other:expr, pg |$p:ident| $pg_body:expr, |$c:ident, $sql:ident, $url:ident| $body:expr) => {
        on_each!(
            $conn,
            $other,
            $other,
            pg | $p | $pg_body,
            |$c, $sql, $url| $body
        )
    };
    ($conn:expr, $my:expr, $lite:expr, pg |$p:ident| $pg_body:expr, |$c:ident, $sql:ident, $url:ident| $body:expr) => {
        match $conn {
            Conn::Postgres($p) => $pg_body,
            Conn::MySql($c, $url, _) => {
                let $sql: &'static str = $my;
                $body
            }
            Conn::Sqlite($c, $url) => {
                let $sql: &'static str = $lite;
                $body
            }
        }
    };
}

impl AuditStore {
    /// A store for `database`, keeping rows for `keep` (forever if `None`).
    /// Nothing is opened until the first call.
    #[must_use]
    pub fn new(database: Arc<DatabaseConfig>, keep: Option<Duration>) -> Self {
        Self {
            database,
            keep,
            timeout: DEFAULT_TIMEOUT,
            migrate_lock_wait: DEFAULT_MIGRATE_LOCK_WAIT,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            migrated: tokio::sync::Mutex::new(false),
            last_prune: Mutex::new(None),
        }
    }

    /// The store of `config.audit`, if the config has one.
    #[must_use]
    pub fn from_config(config: &Config) -> Option<Self> {
        let audit = config.audit.as_ref()?;
        let database = config.databases.get(&audit.database)?;
        Some(
            Self::new(Arc::clone(database), audit.keep)
                .with_bounds(audit.timeout, audit.migrate_lock_wait),
        )
    }

    /// Sets `audit.timeout` (each read or write, connect included) and
    /// `audit.migrate_lock_wait`.
    #[must_use]
    pub fn with_bounds(mut self, timeout: Duration, migrate_lock_wait: Duration) -> Self {
        self.timeout = timeout;
        self.migrate_lock_wait = migrate_lock_wait;
        self
    }

    /// Opens a connection within `audit.timeout`.
    async fn open(&self) -> Result<Conn, AuditError> {
        tokio::time::timeout(self.timeout, Conn::open(&self.database))
            .await
            .map_err(|_| AuditError::Timeout(self.timeout))?
    }

    /// A migration's own bound: waiting for another migrator and for the
    /// metadata lock, plus time for the DDL itself (a large table).
    fn migrate_bound(&self) -> Duration {
        self.migrate_lock_wait * 2 + Duration::from_secs(120)
    }

    /// The audit database's name in the config.
    #[must_use]
    pub fn database(&self) -> &str {
        &self.database.name
    }

    /// Creates or upgrades the schema to [`SCHEMA_VERSION`]; refuses a newer
    /// or half-migrated one. Cheap after the first success in a process.
    pub async fn migrate(&self) -> Result<Migrated, AuditError> {
        let mut migrated = self.migrated.lock().await;
        if *migrated {
            return Ok(Migrated {
                from: SCHEMA_VERSION,
                to: SCHEMA_VERSION,
            });
        }
        let result = self.migrate_to(SCHEMA_VERSION).await?;
        if result.from != result.to {
            tracing::info!(
                database = %self.database.name,
                from = result.from,
                to = result.to,
                "audit schema upgraded"
            );
        }
        *migrated = true;
        Ok(result)
    }

    /// Brings the schema up to `version` exactly (never down). `migrate`
    /// calls it with [`SCHEMA_VERSION`]; tests use it to build older schemas.
    pub async fn migrate_to(&self, version: u32) -> Result<Migrated, AuditError> {
        let mut conn = self.open().await?;
        let bound = self.migrate_bound();
        let result = tokio::time::timeout(
            bound,
            migrate::migrate(&mut conn, version, self.migrate_lock_wait),
        )
        .await;
        finish(conn, result, bound).await
    }

    /// `check --connect`: connects within `audit.timeout` and reads the
    /// schema version (0 when there is no schema yet); changes nothing.
    pub async fn probe(&self) -> Result<u32, AuditError> {
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, migrate::version_if_any(&mut conn)).await;
        finish(conn, result, self.timeout).await
    }

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

    async fn prune_if_due(&self) -> Result<u64, AuditError> {
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

/// The runs' rows in a transaction of their own: [`insert_rows`] between
/// BEGIN and COMMIT (PostgreSQL's at READ COMMITTED, in [`pg::insert`]). On
/// an error the caller drops the connection, so the server rolls back.
async fn insert(
    conn: &mut Conn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    match conn {
        Conn::Postgres(c) => pg::insert(c, records, notified, host).await,
        Conn::MySql(..) | Conn::Sqlite(..) => {
            statement(conn, "BEGIN").await?;
            insert_rows(conn, records, notified, host).await?;
            statement(conn, "COMMIT").await
        }
    }
}

/// One statement without parameters or rows (BEGIN, COMMIT), sent as text:
/// the server does not prepare it.
async fn statement(conn: &mut Conn, sql: &'static str) -> Result<(), AuditError> {
    use sqlx::Executor as _;
    on_each!(
        conn,
        sql,
        pg | c
            | c.batch(sql)
                .await
                .map_err(|e| AuditError::Sql(e.to_string())),
        |c, sql, url| c
            .execute(sql)
            .await
            .map(drop)
            .map_err(|e| AuditError::sql(url, &e))
    )
}

/// [`insert`] inside the transaction already open on `conn` (a pair's claim).
async fn insert_rows(
    conn: &mut Conn,
    records: &[RunRecord],
    notified: &[bool],
    host: &str,
) -> Result<(), AuditError> {
    on_each!(
        conn,
        INSERT_OTHER,
        pg | c | pg::insert_rows(c, records, notified, host).await,
        |c, sql, url| {
            for (i, record) in records.iter().enumerate() {
                let was_notified = notified.get(i).copied().unwrap_or(false);
                bind_run!(sqlx::query(sql), record, was_notified, host)
                    .execute(&mut *c)
                    .await
                    .map_err(|e| AuditError::sql(url, &e))?;
            }
            Ok(())
        }
    )
}

async fn prune(conn: &mut Conn, cutoff: DateTime<Utc>) -> Result<u64, AuditError> {
    let mut total = 0u64;
    for _ in 0..PRUNE_MAX_BATCHES {
        let limit = i64::from(PRUNE_BATCH);
        let batch = on_each!(
            &mut *conn,
            PRUNE_OTHER,
            pg | c | pg::prune_batch(c, PRUNE_POSTGRES, cutoff, limit).await?,
            |c, sql, url| {
                sqlx::query(sql)
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *c)
                    .await
                    .map_err(|e| AuditError::sql(url, &e))?
                    .rows_affected()
            }
        );
        total += batch;
        if batch < u64::from(PRUNE_BATCH) {
            break;
        }
    }
    Ok(total)
}

/// Columns of [`LAST_OTHER`] (and of `pg::last_row`).
pub(crate) type LastRow = (String, DateTime<Utc>, i64, Option<i64>, Option<i64>);

async fn last_run(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<Option<LastRun>, AuditError> {
    let row: Option<LastRow> = on_each!(
        &mut *conn,
        LAST_OTHER,
        pg | c | pg::last_row(c, rule, database).await?,
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
    let last_success_at =
        max_started(conn, SUCCESS_POSTGRES, SUCCESS_OTHER, rule, database).await?;
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
async fn last_state(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<Option<LastState>, AuditError> {
    Ok(last_state_since(conn, rule, database).await?.0)
}

/// [`last_state`] and the start of the run its state comes from (the
/// latest real run that was not skipped): a claim judges runs that started
/// before it as superseded.
async fn last_state_since(
    conn: &mut Conn,
    rule: &str,
    database: &str,
) -> Result<(Option<LastState>, Option<DateTime<Utc>>), AuditError> {
    let Some((_, last_run_at)) = latest(conn, LAST_POSTGRES, LAST_OTHER, rule, database).await?
    else {
        return Ok((None, None));
    };
    let (state, state_at) = match latest(conn, STATE_POSTGRES, STATE_OTHER, rule, database).await? {
        Some((outcome, at)) => (Some(parse_outcome(&outcome)?), Some(at)),
        None => (None, None),
    };
    let notified = match latest(conn, NOTIFIED_POSTGRES, NOTIFIED_OTHER, rule, database).await? {
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
    pg: &'static str,
    other: &'static str,
    rule: &str,
    database: &str,
) -> Result<Option<(String, DateTime<Utc>)>, AuditError> {
    let row: Option<(String, DateTime<Utc>)> = on_each!(
        conn,
        other,
        pg | c | pg::latest(c, pg, rule, database).await,
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
    pg: &'static str,
    other: &'static str,
    rule: &str,
    database: &str,
) -> Result<Option<DateTime<Utc>>, AuditError> {
    on_each!(
        conn,
        other,
        pg | c | pg::max_started(c, pg, rule, database).await,
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

/// Columns of [`RUNS_POSTGRES`] and [`RUNS_OTHER`], in order.
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
    fn from_row(row: RunRow) -> Self {
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

/// `dbjanitor history`: newest first; each filter NULL means "any".
pub(crate) const RUNS_POSTGRES: &str = "SELECT run_id::text, rule::text, database_name::text, started_at, duration_ms, \
    outcome::text, reason::text, message, error, detected, changed, dry_run, host::text FROM dbjanitor_runs \
    WHERE ($1::text IS NULL OR rule = $1) AND ($2::text IS NULL OR database_name = $2) \
    AND ($3::timestamptz IS NULL OR started_at >= $3) ORDER BY started_at DESC, id DESC LIMIT $4";
const RUNS_OTHER: &str = "SELECT run_id, rule, database_name, started_at, duration_ms, outcome, reason, message, error, \
    detected, changed, dry_run, host FROM dbjanitor_runs \
    WHERE (? IS NULL OR rule = ?) AND (? IS NULL OR database_name = ?) AND (? IS NULL OR started_at >= ?) \
    ORDER BY started_at DESC, id DESC LIMIT ?";

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
}

async fn runs(conn: &mut Conn, filter: &RunFilter) -> Result<Vec<AuditRun>, AuditError> {
    let limit = i64::from(filter.limit);
    let rows: Vec<RunRow> = on_each!(
        &mut *conn,
        RUNS_OTHER,
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

/// The audit table as run history: the last non-dry run of a pair (a dry run
/// changes nothing, so it neither makes a rule "not due" nor counts as a
/// state for notifications), and the last run that sent a notification.
impl History for AuditStore {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        Ok(self.last_states(&[(rule, database)]).await?.pop().flatten())
    }

    /// One connection for every pair: `run --due` and notifications ask for
    /// all the pairs of a run at once.
    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        self.migrate().await?;
        let mut conn = self.open().await?;
        let result = tokio::time::timeout(self.timeout, async {
            let mut states = Vec::with_capacity(pairs.len());
            for (rule, database) in pairs {
                states.push(last_state(&mut conn, rule, database).await?);
            }
            Ok(states)
        })
        .await;
        Ok(finish(conn, result, self.timeout).await?)
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        Ok(self.record_runs(records, notified).await?)
    }
}

/// Where a process keeps its run history: the audit table when the config
/// has one (it survives restarts and is shared by every replica and by
/// `run --due`), else memory.
#[derive(Debug)]
pub enum RunHistory {
    /// The audit table.
    Audit(AuditStore),
    /// In-process memory (no `audit:` in the config).
    Memory(crate::history::MemoryHistory),
}

impl RunHistory {
    /// The audit store, if that is where history goes.
    #[must_use]
    pub fn audit(&self) -> Option<&AuditStore> {
        match self {
            RunHistory::Audit(store) => Some(store),
            RunHistory::Memory(_) => None,
        }
    }
}

impl History for RunHistory {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        match self {
            RunHistory::Audit(store) => store.last_state(rule, database).await,
            RunHistory::Memory(memory) => memory.last_state(rule, database).await,
        }
    }

    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        match self {
            RunHistory::Audit(store) => store.last_states(pairs).await,
            RunHistory::Memory(memory) => memory.last_states(pairs).await,
        }
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        match self {
            RunHistory::Audit(store) => store.record(records, notified).await,
            RunHistory::Memory(memory) => memory.record(records, notified).await,
        }
    }
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
    fn history_errors_keep_whether_an_operator_must_act() {
        let too_new = AuditError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            known: SCHEMA_VERSION,
        };
        let history = HistoryError::from(too_new);
        assert!(history.needs_operator(), "{history}");
        assert!(history.to_string().contains("run history: "), "{history}");
        let passing = HistoryError::from(AuditError::Sql("connection refused".to_owned()));
        assert!(!passing.needs_operator(), "{passing}");
    }

    #[test]
    fn long_texts_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }

    /// Issue 13.3: the audit SQL's outcome lists are the ones `Outcome`'s
    /// methods decide (the statements are `concat!` constants, so they are
    /// checked here rather than built at run time).
    #[test]
    fn sql_outcome_lists_follow_the_outcome_methods() {
        let success = crate::outcome::sql_list(Outcome::is_success);
        for sql in [SUCCESS_POSTGRES, SUCCESS_OTHER, PRUNE_POSTGRES, PRUNE_OTHER] {
            let lists: Vec<&str> = sql
                .match_indices("IN ('")
                .map(|(at, _)| {
                    let list = &sql[at + 3..];
                    &list[..=list.find(')').unwrap_or(list.len() - 1)]
                })
                .collect();
            assert!(!lists.is_empty(), "{sql}");
            assert!(lists.iter().all(|l| *l == success), "{lists:?} / {success}");
        }
        let not_state = crate::outcome::sql_list(|o| !o.is_state());
        assert_eq!(
            not_state, "('skipped')",
            "the SQL writes it as = / <> 'skipped'"
        );
    }

    #[test]
    fn outcomes_round_trip() {
        for outcome in Outcome::ALL {
            assert_eq!(parse_outcome(outcome.as_str()).ok(), Some(outcome));
        }
        assert!(parse_outcome("exploded").is_err());
    }
}
