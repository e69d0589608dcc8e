//! [`AuditStore`]: the audit history of one config — which database holds
//! it, how long rows are kept, the bounds on every audit operation — and the
//! schema check every operation starts with.
//!
//! Why one value: each operation opens its own connection (`conn::open`)
//! within `audit.timeout` and closes it again, and the first one in a process
//! creates or upgrades the schema ([`AuditStore::migrate`]); the reads
//! (`read.rs`), the writes (`record.rs`) and the claim (`claim.rs`) are
//! `impl AuditStore` blocks of their own over these fields.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::{self, Conn, finish};
use super::migrate::{self, Migrated};
use super::{AuditError, DEFAULT_MIGRATE_LOCK_WAIT, DEFAULT_TIMEOUT, SCHEMA_VERSION};
use crate::config::Config;
use crate::db::DatabaseConfig;

/// The audit history of one config: where it lives and how long it keeps rows.
#[derive(Debug)]
pub struct AuditStore {
    pub(super) database: Arc<DatabaseConfig>,
    pub(super) keep: Option<Duration>,
    pub(super) timeout: Duration,
    migrate_lock_wait: Duration,
    pub(super) host: String,
    migrated: tokio::sync::Mutex<bool>,
    pub(super) last_prune: Mutex<Option<Instant>>,
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
    pub(super) async fn open(&self) -> Result<Conn, AuditError> {
        tokio::time::timeout(self.timeout, conn::open(&self.database))
            .await
            .map_err(|_| AuditError::Timeout(self.timeout))?
    }

    /// A migration's own bound: waiting for another migrator and for the
    /// metadata lock, plus time for the DDL itself (a large table).
    fn migrate_bound(&self) -> Duration {
        self.migrate_lock_wait * 2 + Duration::from_mins(2)
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
}
