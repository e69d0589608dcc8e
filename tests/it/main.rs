//! dbjanitor's integration tests: one test binary, one module per area.
//!
//! Every test talks to real servers: PostgreSQL and MariaDB on this machine
//! (each test creates and drops its own database; see `util`), SQLite files in
//! a temporary folder, and real HTTP/SMTP servers on loopback. Tests drive the
//! real `dbjanitor` binary and assert on the data left in the database, the
//! exit status and the report.

mod sinks;
#[macro_use]
mod util;
/// Audit-table fixtures shared by the audited test modules.
mod audit_util;
/// Daemon-process helpers shared by the test modules that run daemons.
mod daemon_util;
/// Lease fixtures shared by the lease test modules.
mod lease_util;
/// PgBouncer helpers shared by the pgbouncer and lease test modules.
mod pgbouncer_util;

/// The audit table: migrations on every engine, a newer schema refused, one
/// row per run, retention, `run --due` after an outage, `--metrics-file`, `--log-dir`.
mod audit;

/// Exit statuses, `check`, `list`, `demo`, usage errors.
mod cli;
/// init, completions, man, version, notify-test; run --no-notify and --max-rows.
mod commands;
/// Locks across processes: 8 racing processes, SIGKILL in the middle of a fix.
mod concurrency;
/// Configuration and rule errors: file:line:column, exit 2, nothing changed.
mod config_errors;
/// The daemon: a rule every second with audit rows as proof, SIGTERM during
/// a slow fix, /healthz, /livez and /metrics parsed by a Prometheus parser.
mod daemon;
/// Issue 11: a report-only detect on PostgreSQL counts on the server.
mod detect_count;
/// Every outcome on every engine, with the rows checked afterwards.
mod engine;
/// Test harness: a fault-injection TCP proxy (stall, lost replies, cuts) in front of the real servers.
mod faults;
/// Run history that stays right: two replicas, delivered notifications,
/// retention, dry-run metrics, a stalled audit database, MySQL metadata locks.
mod history;
/// Issue 11: keyset batches (`batch.key`) on every engine: the right rows,
/// none twice, exact counts when the guard trips, dry run, refusals.
mod keyset;
/// Leases on MySQL/MariaDB under the advisory lock's tests, and a holder
/// stalled past its lease (fault proxy, PgBouncer) that must not commit.
mod lease;
/// A `batch.pause` longer than the lease renews it; a MySQL session's lease
/// and idle limits follow `set_statement_timeout`.
mod lease_timing;
/// monitoring/: every metric the dashboard and the alerts use is served.
mod monitoring;
/// Webhook and email notifications against real HTTP and SMTP servers on loopback.
mod notify;
/// Issue 12: the operator's commands (`history`, `show`, `check`/`list` by
/// rule), the guard's and `run --due`'s hints, an empty `fix:` refused.
mod operator;
/// Through a real PgBouncer in transaction mode: every rule mode, leases,
/// nothing left on pooled connections, audit, check --connect.
mod pgbouncer;
/// PostgreSQL sessions: psql's defaults, snapshots after the lock, tenants,
/// read-only detect, lost COMMIT replies, stalled session locks.
mod postgres;
/// The README's first rule, taken from README.md, on PostgreSQL and MariaDB.
mod readme;
/// Issue 11: `batch.max_replica_lag` against real delayed replicas
/// (`tests/replica/start.sh`): pause and resume, stop at `max_lag_wait`,
/// unreadable replicas, SIGTERM while waiting.
mod replica;
/// Issue 11: one connection per database for the rules of a run; a failed
/// rule's connection is not reused.
mod reuse;
/// Every rule of the pack on every engine it claims, against faithful fixtures.
mod rulepack;
/// Issue 8: read-only detect, transactions a fix cannot end, counts, a lock
/// released within the stated bound after a stall, a lost COMMIT reply.
mod safety;
/// No password in logs, reports or errors.
mod secrets;
/// Issue 9: two replicas' messages about one pair arrive in decision order.
mod tell_order;
/// Issue 14: run ids in the reports, the audit table and the notifications.
mod undo;
