//! The audit history: one row per (rule, database) run in `dbjanitor_runs`,
//! in the database named by `audit.database`.
//!
//! Why a table and not only logs: `run --due` (a CronJob pod has no disk that
//! outlives it) needs each rule's last run, notifications need the last state
//! and the last notification time ([`History`](crate::history::History)), and
//! an operator needs to see what was changed, when, by which host and which
//! dbjanitor version, in the database they already back up.
//!
//! The schema is created and upgraded by the binary itself (`migrate`); a
//! schema newer than this binary knows is refused before any rule runs, so an
//! older pod left behind during an upgrade stops with a clear message instead
//! of writing into a table it does not understand.
//!
//! Every operation opens its own connection and closes it, like the engine:
//! nothing is pooled, and the audit database may come and go between runs.
//! Failures are [`AuditError`]s for the caller to report; they never change
//! what a rule did.
//!
//! Layout (docs/architecture.md "Audit"): `error` (the error type), `conn`
//! (one connection per operation: the `db` layer's typed connection,
//! `db::typed`, the same connect code as the engine's sessions), `sql` (each
//! statement once, with `?` placeholders), `store` ([`AuditStore`], its
//! bounds and the schema check), `read` and `record` (the two sides of the
//! table), `history` (the [`RunHistory`] adapter), `claim` (the per-pair
//! claim), `turn` (the pair's tell sequence) and `migrate` (one migration
//! loop over a per-dialect trait, migrations as SQL files). Only SQL that is
//! genuinely a dialect's own is written per dialect: the claim's upsert, the
//! transaction and lock statements, DDL and catalog queries.

mod claim;
mod conn;
mod error;
mod history;
mod migrate;
mod read;
mod record;
mod sql;
mod store;
mod turn;

use std::time::Duration;

pub use claim::{Settled, Unsettled};
pub(crate) use conn::Conn;
pub use error::AuditError;
pub use history::RunHistory;
pub use migrate::SCHEMA_VERSION;
pub use read::{AuditRun, LastRun, RunFilter};
pub use record::record;
pub use store::AuditStore;
pub use turn::Turn;

// What `claim.rs` takes from here (`super::...`), kept under these names.
use read::last_state_since;
use record::insert_rows;

/// The dbjanitor version written into every row.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest `message` or `error` kept in a row, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

/// Rows deleted per retention batch (each its own statement and transaction).
pub const PRUNE_BATCH: u32 = 1000;

/// Upper bound of a connection attempt inside `conn::open`; the store's own
/// `audit.timeout` ([`DEFAULT_TIMEOUT`]) is shorter and applies on top.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The defaults of `audit.timeout` and `audit.migrate_lock_wait` live with the
/// rest of the config's defaults (config sits below audit).
pub use crate::config::{DEFAULT_AUDIT_TIMEOUT as DEFAULT_TIMEOUT, DEFAULT_MIGRATE_LOCK_WAIT};
