//! A one-shot `run` with an audit table: decide and record under each
//! pair's claim, *then* notify (issue 9).
//!
//! Why: a daemon and a timer (or two timers) on the same pair each judged
//! the runs against the history they read and recorded afterwards, so both
//! could tell one change. `run` now takes the same per-pair claim as the
//! daemon ([`AuditStore::settle`]): under it the pair's last state is read,
//! whether the run is news is decided, and the run row is inserted with
//! that decision and committed. Only then are the messages sent (still one
//! digest per notifier for the whole run). A message that no notifier
//! delivered has its row's `notified` flag cleared again, so a failed
//! delivery is told again next time (README "Alert fatigue").
//!
//! When the claim cannot be had (audit database down or stalled) the run is
//! told with `change: unknown` and recorded afterwards without the claim, as
//! before; the report says it was not recorded if that fails too. When the
//! COMMIT's answer is lost, one more claim looks whether the row is there:
//! there, the decision stands; absent, the run is judged again; no answer,
//! the decision stands, the report says whether it was recorded is unknown.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{Past, compose, host_name, send_all};
use crate::audit::{AuditStore, Settled, Turn, Unsettled};
use crate::config::Config;
use crate::history::LastState;
use crate::outcome::RunRecord;

/// What a run was judged against, owned (a [`Past`] borrows its state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// No history for this record (a dry run).
    Untracked,
    /// The pair never ran for real.
    Never,
    /// The pair's last state.
    Last(LastState),
    /// The history could not be read.
    Unknown,
}

impl Judged {
    /// What the history says for `record`: a dry run is never judged
    /// against it (README "Alert fatigue").
    #[must_use]
    pub fn of(record: &RunRecord, state: Option<&LastState>) -> Self {
        match state {
            _ if record.dry_run => Judged::Untracked,
            Some(state) => Judged::Last(state.clone()),
            None => Judged::Never,
        }
    }

    /// The borrowed form the policy takes.
    #[must_use]
    pub fn as_past(&self) -> Past<'_> {
        match self {
            Judged::Untracked => Past::Untracked,
            Judged::Never => Past::Never,
            Judged::Last(state) => Past::Last(state),
            Judged::Unknown => Past::Unknown,
        }
    }
}

/// docs/architecture.md §3 step 9. After `run_plan` every transaction is
/// committed or rolled back: delivery cannot change what was fixed, and its
/// failures only land in the report. Notifications decide from the history
/// as it was *before* these runs (state changes, `renotify_after`); with an
/// audit table that decision is recorded under each pair's claim before
/// anything is sent (as the daemon does: a daemon and a timer tell one
/// change once), and the flag of a message no notifier delivered is
/// cleared. Messages wait for their pairs' earlier decisions to be
/// delivered (the tell sequence, audit schema v5) unless `stop` is
/// cancelled. Returns the audit error for the report, if any.
pub async fn after_run(
    config: &Config,
    audit: Option<&AuditStore>,
    records: &mut [RunRecord],
    no_notify: bool,
    stop: &CancellationToken,
) -> Option<String> {
    if no_notify {
        tracing::info!("--no-notify: no notification is sent for this run");
    }
    match audit {
        Some(store) => {
            notify_and_record(config, store, records, no_notify, stop)
                .await
                .1
        }
        None if no_notify => None,
        None => {
            super::deliver::<AuditStore>(config, records, None).await;
            None
        }
    }
}

/// How long a claimer waits for another process's claim on the same pair:
/// the holder only reads the history and inserts rows (each bounded by
/// `audit.timeout`); nobody notifies under a claim any more.
#[must_use]
pub fn claim_wait(config: &Config) -> Duration {
    config
        .audit
        .as_ref()
        .map_or(crate::audit::DEFAULT_TIMEOUT, |a| a.timeout)
        .saturating_mul(2)
}

/// How long one told run's delivery may take, for the pair's tell sequence
/// (the next teller waits for it at most that long): the longest notifier
/// `deadline`, plus `audit.timeout` for the COMMIT before it.
#[must_use]
pub fn tell_for(config: &Config) -> Duration {
    let deadline = config
        .notifiers
        .values()
        .map(|n| n.delivery().deadline)
        .max()
        .unwrap_or_default();
    let audit = config
        .audit
        .as_ref()
        .map_or(crate::audit::DEFAULT_TIMEOUT, |a| a.timeout);
    deadline.saturating_add(audit)
}

/// One record's fate under its claim.
struct Outcome {
    judged: Judged,
    /// Its place in the pair's tell sequence, if it is told.
    turn: Option<Turn>,
    /// Its row is in the table (or may be: unknown), so it is not recorded again.
    recorded: bool,
    /// The audit error to report, if any.
    error: Option<String>,
    /// The audit database did not answer (no claim, or no answer to a
    /// COMMIT): the pairs after it do not try it again in this run.
    audit_down: bool,
}

/// A record judged without the history (its claim could not be had): told
/// with the previous state unknown, recorded afterwards without the claim.
fn unclaimed(record: &RunRecord) -> Outcome {
    Outcome {
        judged: if record.dry_run {
            Judged::Untracked
        } else {
            Judged::Unknown
        },
        turn: None,
        recorded: false,
        error: None,
        audit_down: true,
    }
}

/// Judges, records and notifies the records of one `run` (one record per
/// pair) with the audit table `store`. Returns, per record, whether a
/// message about it was delivered, and the audit error for the report
/// (runs that could not be recorded, or whose recording is unknown).
async fn notify_and_record(
    config: &Config,
    store: &AuditStore,
    records: &mut [RunRecord],
    no_notify: bool,
    stop: &CancellationToken,
) -> (Vec<bool>, Option<String>) {
    let now = Utc::now();
    let host = host_name();
    let wait = (claim_wait(config), tell_for(config));
    // One pair after the other: the rows' ids keep the report's order. Once
    // a claim could not be had, the audit database is taken as down for
    // this run: the other pairs do not each wait `audit.timeout` for it.
    let mut fates: Vec<Outcome> = Vec::with_capacity(records.len());
    for record in records.iter() {
        let fate = if fates.iter().any(|f| f.audit_down) {
            unclaimed(record)
        } else {
            settle_one(config, store, record, no_notify, wait, (&host, now)).await
        };
        fates.push(fate);
    }
    let pasts: Vec<Past<'_>> = fates.iter().map(|f| f.judged.as_past()).collect();
    let notified = if no_notify {
        vec![false; records.len()]
    } else {
        let outgoing = compose(config, records, &pasts, &host, now);
        // One digest for every pair: it waits for each pair's earlier
        // messages (bounded by their deadlines), then says all are done.
        for turn in fates.iter().filter_map(|f| f.turn.as_ref()) {
            store.wait_turn(turn, stop).await;
        }
        let sent = send_all(&outgoing, records).await;
        for turn in fates.iter().filter_map(|f| f.turn.as_ref()) {
            store.done_turn(turn).await;
        }
        sent
    };
    let mut errors: Vec<String> = fates.iter().filter_map(|f| f.error.clone()).collect();
    // Told under the claim but delivered by no notifier: the history must
    // not say the receivers were told.
    let undelivered: Vec<&str> = fates
        .iter()
        .zip(records.iter())
        .zip(&notified)
        .filter(|((fate, record), delivered)| {
            fate.recorded
                && !**delivered
                && told(config, record, &fate.judged, &host, now, no_notify)
        })
        .map(|((_, record), _)| record.run_id.as_str())
        .collect();
    if let Err(e) = store.unmark_notified(&undelivered).await {
        warn!(error = %e, runs = undelivered.len(), "runs whose notification failed stay marked as told in the audit table: the next reminder comes after renotify_after");
        errors.push(e.to_string());
    }
    // Runs the claim could not take are recorded now, without it.
    let (rest, flags): (Vec<RunRecord>, Vec<bool>) = fates
        .iter()
        .zip(records.iter())
        .zip(&notified)
        .filter(|((fate, _), _)| !fate.recorded)
        .map(|((_, record), flag)| (record.clone(), *flag))
        .unzip();
    if !rest.is_empty()
        && let Some(e) = crate::audit::record(Some(store), &rest, &flags).await
    {
        errors.push(e);
    }
    errors.dedup();
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    (notified, error)
}

/// Whether the policy tells `record` judged against `judged`.
fn told(
    config: &Config,
    record: &RunRecord,
    judged: &Judged,
    host: &str,
    now: DateTime<Utc>,
    no_notify: bool,
) -> bool {
    !no_notify
        && !compose(
            config,
            std::slice::from_ref(record),
            &[judged.as_past()],
            host,
            now,
        )
        .is_empty()
}

/// Settles one record under its pair's claim; one more look when the
/// COMMIT's outcome is unknown.
async fn settle_one(
    config: &Config,
    store: &AuditStore,
    record: &RunRecord,
    no_notify: bool,
    wait: (Duration, Duration),
    (host, now): (&str, DateTime<Utc>),
) -> Outcome {
    let one = std::slice::from_ref(record);
    let decide = |state: Option<&LastState>, _: Option<DateTime<Utc>>| {
        let judged = Judged::of(record, state);
        let flag = told(config, record, &judged, host, now, no_notify);
        (judged, vec![flag])
    };
    let first = match store.settle(one, wait, false, decide).await {
        Ok(Settled::Decided(judged, turn)) => return recorded(judged, turn),
        Ok(Settled::AlreadyRecorded(_)) => return recorded(Judged::Unknown, None),
        Err(Unsettled::NotClaimed(e)) => {
            warn!(error = %e, rule = %record.rule, database = %record.database, "cannot claim the pair in the audit table: the runs are told with the previous state unknown and recorded afterwards");
            return unclaimed(record);
        }
        Err(Unsettled::Unsure(e, judged, turn)) => (e, judged, turn),
    };
    let (e, judged, turn) = first;
    warn!(error = %e, rule = %record.rule, database = %record.database, "the audit table did not confirm the run's COMMIT: looking whether it is recorded");
    match store.settle(one, wait, true, decide).await {
        Ok(Settled::Decided(again, turn)) => recorded(again, turn),
        Ok(Settled::AlreadyRecorded(_)) => recorded(judged, turn),
        Err(failed) => {
            let (e, judged, turn) = match failed {
                Unsettled::NotClaimed(e) => (e, judged, turn),
                Unsettled::Unsure(e, again, turn) => (e, again, turn),
            };
            error!(error = %e, rule = %record.rule, database = %record.database, "whether the run is recorded in the audit table is unknown; it is told as decided and not recorded again");
            Outcome {
                judged,
                turn,
                recorded: true,
                error: Some(format!("whether the run was recorded is unknown: {e}")),
                audit_down: true,
            }
        }
    }
}

/// A record settled under its claim.
fn recorded(judged: Judged, turn: Option<Turn>) -> Outcome {
    Outcome {
        judged,
        turn,
        recorded: true,
        error: None,
        audit_down: false,
    }
}
