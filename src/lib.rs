//! dbjanitor: a scheduled database janitor.
//!
//! A rule pairs a *detect* query (which rows are rotten) with an optional *fix*
//! query, a schedule and guards. The crate is laid out in the order data flows
//! through one call:
//!
//! 1. [`config`] reads `dbjanitor.yaml` and the rule files into a validated
//!    [`config::Config`]: every problem is reported with file, line and column
//!    before anything touches a database.
//! 2. [`rule`] holds the validated rule model, [`schedule`] its compiled
//!    schedule, [`sql`] the little SQL lexing the checks need and [`dialect`]
//!    which SQL a database speaks.
//! 3. [`plan`] selects which (rule, database) pairs a command runs.
//! 4. [`engine`] runs one pair through the steps of the design (lock → detect →
//!    guard → fix → verify → commit) over one of the backends in [`db`].
//! 5. [`outcome`] is what a run produced; [`report`] renders it for people and
//!    machines; [`exit`] maps it to the process exit status.
//! 6. [`notify`] tells people about it afterwards (webhook, email; one digest
//!    per notifier; quiet repeats where [`history`] remembers past runs).
//! 7. [`audit`] records every run in the audit table (with its own schema
//!    migrations) and is the [`history`] that `run --due` ([`due`]) and
//!    notifications read; [`metrics`] exposes runs to Prometheus.
//! 8. [`daemon`] runs every rule on its own schedule in-process and serves
//!    `/healthz` and `/metrics`; [`logging`] writes logs to stderr and files.
//!
//! 9. [`commands`] holds the small commands around the job (`init`,
//!    `notify-test`, `completions`, `man`, `version`).
//!
//! The binary (`src/main.rs`) only parses arguments and hands off to [`app`].
//!
//! Only what the binary and the integration tests use is `pub`; every other
//! module is `pub(crate)`, so the compiler reports code nothing uses (issue
//! 13.6; `unreachable_pub` in Cargo.toml keeps items inside them honest).

pub mod app;
pub mod audit;
pub(crate) mod backup;
pub(crate) mod check;
pub mod cli;
pub(crate) mod commands;
pub mod config;
pub(crate) mod daemon;
pub mod db;
pub(crate) mod demo;
pub(crate) mod dialect;
pub(crate) mod due;
pub mod engine;
pub(crate) mod error;
pub(crate) mod exit;
pub mod history;
pub(crate) mod logging;
pub(crate) mod metrics;
pub mod notify;
pub mod outcome;
pub mod plan;
pub(crate) mod report;
pub(crate) mod rule;
pub(crate) mod schedule;
pub mod secret;
pub(crate) mod signals;
pub(crate) mod sql;
