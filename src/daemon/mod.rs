//! `dbjanitor daemon`: every enabled rule on its own schedule, in-process.
//!
//! Built on croner (through [`crate::schedule`]) and a small tokio loop per
//! (rule, database) pair rather than on tokio-cron-scheduler, whose defects
//! matter here (docs/architecture.md §5): it needs 6 or 7 cron fields, freezes a
//! timezone's UTC offset (DST not followed), overlaps a slow job with its next
//! tick, and does not wait for running jobs on shutdown. The loop below:
//!
//! - computes each next tick in the rule's timezone with croner, so DST
//!   changes are followed; it sleeps at most [`MAX_SLEEP`] at a time and
//!   re-reads the wall clock, so a clock step cannot make it fire early, late
//!   or twice; after a pause (a suspended VM) it fires once, not once per
//!   missed tick;
//! - never runs one pair twice at once in the process: a tick that finds the
//!   previous run still going is skipped, logged and counted
//!   (`dbjanitor_overlap_skips_total`). Pairs sharing a lock key queue behind
//!   each other, as in `run`. Other processes (a second replica, a timer) are
//!   kept out by the advisory locks: they count `skipped` (lock held);
//! - bounds parallel runs: at most `daemon.jobs` (or `--jobs`, default 8) at
//!   once, and at most `daemon.jobs_per_database` (default 4) on one
//!   database, taken in that order (database first), so a database with many
//!   slow rules cannot hold every slot. A run waiting for a slot is not a
//!   skip: it runs as soon as a slot frees (`dbjanitor_waiting` is 1 while it
//!   waits); a tick that comes while the previous run still waits is an
//!   overlap skip like any other;
//! - on SIGTERM/SIGINT starts nothing new, lets running rules finish within
//!   `daemon.shutdown_grace` (default 30s), then cancels them (the engine
//!   drops their connections: rolled back, locks released), records them,
//!   and exits 0. A second signal cancels at once.
//!
//! Run history goes to the audit table when the config has one (so `run
//! --due`, another replica and the next start see it), else to memory.
//! Notifications and recording happen *after* a run, off its schedule: each
//! pair has a bookkeeping queue worked by one task at a time (so a run is
//! always judged against the history its predecessors left), and a run
//! finishing while the queue is busy is added to the next batch. A stalled
//! audit database therefore costs bookkeeping `audit.timeout` per batch, never
//! a tick; its failures are logged and counted (`dbjanitor_audit_errors_total`).
//! At most `daemon.jobs` batches are worked on at once (their own permits,
//! not the runs'), so the audit database never sees more connections than that.
//!
//! Across processes, a batch is judged, notified and recorded under the
//! pair's claim in the audit database ([`crate::audit::Claim`]), so two
//! replicas tell each state change once. A run that started before the
//! run the pair's state comes from is superseded (recorded, not told). When
//! the claim cannot be had, the batch waits (backoff) up to four times
//! `audit.timeout`, then is judged against this process's own last known
//! state of the pair, or told with `change: unknown` if it has none.

mod http;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

pub(crate) use http::Health;

use crate::audit::{AuditStore, RunHistory};
use crate::config::Config;
use crate::engine::{RunOptions, run_target};
use crate::history::{History, HistoryError, LastState, MemoryHistory};
use crate::metrics::{DaemonMetrics, PairLabels};
use crate::notify;
use crate::outcome::{Outcome, RunRecord};
use crate::plan::{Plan, Selection, Target};

/// Longest single sleep before the wall clock is read again.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The least time open HTTP requests get to finish at shutdown.
const SERVER_CLOSE_MIN: Duration = Duration::from_secs(1);

/// How long the daemon keeps retrying to record a pair's runs in the run
/// history before it gives up on them (logged and counted).
const RECORD_RETRY_FOR: Duration = Duration::from_secs(120);

/// First wait between recording attempts; it doubles up to [`RECORD_RETRY_MAX_WAIT`].
const RECORD_RETRY_FIRST_WAIT: Duration = Duration::from_millis(500);

/// Longest wait between recording attempts.
const RECORD_RETRY_MAX_WAIT: Duration = Duration::from_secs(8);

/// A pair's runs wait this many `audit.timeout`s for the run history before
/// they are notified without it.
const HISTORY_WAIT_TIMEOUTS: u32 = 4;

/// After cancelling, how long to wait for the cancelled runs to be recorded.
const AFTER_CANCEL: Duration = Duration::from_secs(15);

/// What every pair's loop shares.
struct Shared {
    /// Notifier settings for [`notify::deliver`].
    config: Arc<Config>,
    history: Arc<RunHistory>,
    metrics: Arc<DaemonMetrics>,
    /// Cancelled on the first signal: start nothing new.
    stop: CancellationToken,
    /// Cancelled when the grace period is over: running rules roll back.
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// One mutex per lock key, so pairs sharing a key queue within the process.
    lock_keys: HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// `daemon.jobs`: runs at once in the process.
    slots: Arc<Semaphore>,
    /// `daemon.jobs_per_database`: runs at once per database name.
    database_slots: HashMap<String, Arc<Semaphore>>,
    /// Per (rule, database): finished runs waiting for notification and recording.
    bookkeeping: HashMap<(String, String), Arc<std::sync::Mutex<Backlog>>>,
    /// `daemon.jobs` again, for bookkeeping batches: they never hold a run's
    /// slot, and never open more audit connections at once than runs.
    bookkeeping_slots: Arc<Semaphore>,
    /// How long another process may hold a pair's claim (it notifies while
    /// it holds it): the longest notifier deadline plus `audit.timeout` twice.
    claim_wait: Duration,
    /// How long a pair's runs wait, not yet notified, for the run history
    /// to be readable again: four times `audit.timeout`.
    history_wait: Duration,
    /// The last state of each pair this process decided about: what it
    /// judges against when the audit database cannot be read.
    known: std::sync::Mutex<HashMap<(String, String), Known>>,
}

/// The slots a run holds while it runs: its database's, then the process's.
struct Slots {
    _database: Option<OwnedSemaphorePermit>,
    _process: OwnedSemaphorePermit,
}

/// Finished runs of one pair not yet notified and recorded.
#[derive(Debug, Default)]
struct Backlog {
    records: Vec<RunRecord>,
    /// A task is working through the backlog.
    busy: bool,
}

/// The run history as the daemon uses it: every failed read or write is
/// counted in `dbjanitor_audit_errors_total`.
struct Counted<'a> {
    history: &'a RunHistory,
    metrics: &'a DaemonMetrics,
}

impl Counted<'_> {
    fn count<T>(&self, result: Result<T, HistoryError>) -> Result<T, HistoryError> {
        if result.is_err() {
            self.metrics.audit_error(1);
        }
        result
    }
}

impl History for Counted<'_> {
    async fn last_state(
        &self,
        rule: &str,
        database: &str,
    ) -> Result<Option<LastState>, HistoryError> {
        self.count(self.history.last_state(rule, database).await)
    }

    async fn last_states(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Option<LastState>>, HistoryError> {
        self.count(self.history.last_states(pairs).await)
    }

    async fn record(&self, records: &[RunRecord], notified: &[bool]) -> Result<(), HistoryError> {
        self.count(self.history.record(records, notified).await)
    }
}

/// Resets a pair's "running" flag however its run ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Shared {
    /// One run of one pair (in its lock-key turn and within the process's
    /// and its database's slots); its bookkeeping is queued, off the schedule.
    async fn run(self: &Arc<Self>, target: &Target) {
        let pair = PairLabels::of(&target.rule.name, &target.database.name);
        let (db, lock) = target.lock_key();
        let key = (db.to_owned(), lock.to_owned());
        let queue = self.lock_keys.get(&key).cloned().unwrap_or_default();
        let record = {
            let _turn = tokio::select! {
                turn = queue.lock_owned() => turn,
                () = self.stop.cancelled() => return,
            };
            self.metrics.set_waiting(&pair, true);
            let slots = tokio::select! {
                slots = self.take_slots(&target.database.name) => slots,
                () = self.stop.cancelled() => None,
            };
            self.metrics.set_waiting(&pair, false);
            let Some(_slots) = slots else {
                return;
            };
            self.metrics.set_running(&pair, true);
            let options = RunOptions {
                dry_run: false,
                jobs: 1,
            };
            let record = run_target(target, &options, &self.cancel).await;
            self.metrics.set_running(&pair, false);
            record
        };
        self.metrics.observe(&record);
        self.enqueue(record);
    }

    /// Adds a finished run to its pair's backlog, starting a worker unless one is busy.
    fn enqueue(self: &Arc<Self>, record: RunRecord) {
        let key = (record.rule.clone(), record.database.clone());
        let backlog = self.bookkeeping.get(&key).cloned().unwrap_or_default();
        let start = match backlog.lock() {
            Ok(mut backlog) => {
                backlog.records.push(record);
                !std::mem::replace(&mut backlog.busy, true)
            }
            Err(_) => false,
        };
        if start {
            let shared = Arc::clone(self);
            self.tracker
                .spawn(async move { shared.work_through(&backlog).await }.in_current_span());
        }
    }

    /// Notifies and records the backlog's runs, batch by batch, until it is empty.
    async fn work_through(&self, backlog: &std::sync::Mutex<Backlog>) {
        loop {
            let mut batch = match backlog.lock() {
                Ok(mut backlog) if backlog.records.is_empty() => {
                    backlog.busy = false;
                    return;
                }
                Ok(mut backlog) => std::mem::take(&mut backlog.records),
                Err(_) => return,
            };
            match self.history.audit() {
                Some(store) => self.bookkeep_claimed(store, &mut batch).await,
                None => self.bookkeep_in_memory(&mut batch).await,
            }
        }
    }

    /// No audit table: the process's memory is the history, and the pair's
    /// backlog (one worker at a time) already serialises read, notify, record.
    async fn bookkeep_in_memory(&self, batch: &mut [RunRecord]) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        let history = self.counted();
        let state = history.last_state(&rule, &database).await.ok().flatten();
        let start = Start::Known(Known { state, since: None });
        let (notified, _) = self.deliver_in_order(batch, start).await;
        self.record_until_done(&history, batch, &notified).await;
    }

    /// Design §3 step 9 across processes: under the pair's claim in the audit
    /// database, the runs are judged against the history as it was before
    /// them, notified, and recorded, all in one transaction, so another
    /// replica deciding about the same pair waits and then reads what this
    /// one told. While the claim cannot be had (audit database down or
    /// stalled), it is retried with backoff for up to [`Shared::history_wait`]
    /// — the runs wait, not yet notified, so a short stall delays a message
    /// by seconds instead of doubling it. After that the runs are judged
    /// against this process's own last known state of the pair, or told with
    /// `change: unknown` when it has none, and recorded as before.
    async fn bookkeep_claimed(&self, store: &AuditStore, batch: &mut [RunRecord]) {
        let Some((rule, database)) = pair_of(batch) else {
            return;
        };
        let give_up = std::time::Instant::now() + self.history_wait;
        let mut wait = RECORD_RETRY_FIRST_WAIT;
        loop {
            let result = {
                // Held for the whole claim: it is an audit connection.
                let _slot = self.bookkeeping_slot().await;
                match store.claim(&rule, &database, self.claim_wait).await {
                    Ok(claim) => {
                        let start = Start::Known(Known {
                            state: claim.state().cloned(),
                            since: claim.state_at(),
                        });
                        let (notified, known) = self.deliver_in_order(batch, start).await;
                        self.remember(&rule, &database, known);
                        Ok(claim
                            .commit(batch, &notified)
                            .await
                            .map_err(|e| (e, notified)))
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(Ok(())) => return,
                Ok(Err((e, notified))) => {
                    // Told, but not recorded under the claim: record it as
                    // any other run, with retries.
                    self.metrics.audit_error(1);
                    warn!(error = %e, runs = batch.len(), "the claimed runs could not be recorded; retrying without the claim");
                    self.record_until_done(&self.counted(), batch, &notified)
                        .await;
                    return;
                }
                Err(e) => {
                    self.metrics.audit_error(1);
                    if self.stop.is_cancelled() || std::time::Instant::now() + wait > give_up {
                        warn!(error = %e, runs = batch.len(), "cannot read the run history: notifying from this process's own last known state of the pair (\"unknown\" if none)");
                        let start = match self.known(&rule, &database) {
                            Some(known) => Start::Known(known),
                            None => Start::Unknown,
                        };
                        let (notified, known) = self.deliver_in_order(batch, start).await;
                        self.remember(&rule, &database, known);
                        self.record_until_done(&self.counted(), batch, &notified)
                            .await;
                        return;
                    }
                    warn!(error = %e, runs = batch.len(), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "cannot claim the pair in the run history; retrying (its runs wait, not yet notified)");
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = wait.saturating_mul(2).min(RECORD_RETRY_MAX_WAIT);
                }
            }
        }
    }

    fn counted(&self) -> Counted<'_> {
        Counted {
            history: self.history.as_ref(),
            metrics: self.metrics.as_ref(),
        }
    }

    /// This process's last known state of a pair.
    fn known(&self, rule: &str, database: &str) -> Option<Known> {
        let known = self.known.lock().ok()?;
        known.get(&(rule.to_owned(), database.to_owned())).cloned()
    }

    fn remember(&self, rule: &str, database: &str, state: Known) {
        if state.state.is_none() {
            return;
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert((rule.to_owned(), database.to_owned()), state);
        }
    }

    async fn bookkeeping_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.bookkeeping_slots)
            .acquire_owned()
            .await
            .ok()
    }

    /// Records `batch`, retrying with backoff for up to [`RECORD_RETRY_FOR`]
    /// while the run history does not take it (a stalled or restarting audit
    /// database), so that a short outage loses no audit row. Meanwhile this
    /// pair's later runs wait in its backlog, not yet notified: they are then
    /// judged against a complete history, and an unchanged state is still told
    /// once. Other pairs are not held up: no bookkeeping slot is kept while
    /// waiting. After a signal, one more attempt is made, then it gives up.
    async fn record_until_done(
        &self,
        history: &Counted<'_>,
        batch: &[RunRecord],
        notified: &[bool],
    ) {
        let give_up = std::time::Instant::now() + RECORD_RETRY_FOR;
        let mut wait = RECORD_RETRY_FIRST_WAIT;
        loop {
            let result = {
                let _slot = self.bookkeeping_slot().await;
                history.record(batch, notified).await
            };
            let Err(e) = result else { return };
            if e.needs_operator() {
                // A newer dbjanitor migrated the audit table, or a migration
                // was left half done: retrying cannot help.
                tracing::error!(error = %e, runs = batch.len(), "the runs could not be recorded in the run history, and retrying cannot help until an operator acts");
                return;
            }
            if self.stop.is_cancelled() || std::time::Instant::now() + wait > give_up {
                tracing::error!(error = %e, runs = batch.len(), "the runs could not be recorded in the run history (retried for up to {}s)", RECORD_RETRY_FOR.as_secs());
                return;
            }
            warn!(error = %e, runs = batch.len(), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "the run history did not take the runs; retrying (this pair's later runs wait)");
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(RECORD_RETRY_MAX_WAIT);
        }
    }
}

/// A pair's last state and the start of the run it comes from.
#[derive(Debug, Clone, Default)]
struct Known {
    /// `None`: it never ran for real.
    state: Option<LastState>,
    /// Start of the latest real, not skipped run: a run that started before
    /// it is superseded (another replica already judged newer data).
    since: Option<DateTime<Utc>>,
}

/// What a batch of runs is judged against.
enum Start {
    /// The pair's last state.
    Known(Known),
    /// Nothing is known: the history could not be read and this process
    /// has not seen the pair yet.
    Unknown,
}

/// A history that cannot be read: the first run of a batch judged with
/// [`Start::Unknown`] is told with `change: unknown`.
struct Unreadable;

impl History for Unreadable {
    async fn last_state(&self, _: &str, _: &str) -> Result<Option<LastState>, HistoryError> {
        Err(HistoryError::new(
            "the run history could not be read and this process has not seen the pair yet",
        ))
    }

    async fn record(&self, _: &[RunRecord], _: &[bool]) -> Result<(), HistoryError> {
        Ok(())
    }
}

/// The (rule, database) of a batch (every run in it is of the same pair).
fn pair_of(batch: &[RunRecord]) -> Option<(String, String)> {
    batch.first().map(|r| (r.rule.clone(), r.database.clone()))
}

impl Shared {
    /// Judges each run of a batch (one pair) against the state the one
    /// before it left, starting from `start`, and notifies: bookkeeping that
    /// fell behind (a slow webhook or audit database) still tells an
    /// unchanged state once. A run that started before the run the state
    /// comes from is superseded: another replica judged newer data already
    /// (its run started later but finished first), so it is recorded but
    /// neither told nor taken as the state — telling it would say "failed"
    /// after "recovered" about a failure that is already over. Returns the
    /// flags and the state after the batch.
    async fn deliver_in_order(&self, batch: &mut [RunRecord], start: Start) -> (Vec<bool>, Known) {
        let Some((rule, database)) = pair_of(batch) else {
            return (Vec::new(), Known::default());
        };
        let (memory, mut since, mut unknown) = match start {
            Start::Known(known) => (
                MemoryHistory::seeded(&rule, &database, known.state),
                known.since,
                false,
            ),
            Start::Unknown => (MemoryHistory::default(), None, true),
        };
        let mut notified = Vec::with_capacity(batch.len());
        for record in batch.iter_mut() {
            let real = !record.dry_run && record.outcome != Outcome::Skipped;
            if real && since.is_some_and(|at| record.started_at < at) {
                debug!(started_at = %record.started_at.to_rfc3339(), "superseded by a newer run of the pair: not notified");
                notified.push(false);
                continue;
            }
            if real {
                since = Some(record.started_at);
            }
            let one = std::slice::from_mut(record);
            let flags = if std::mem::take(&mut unknown) {
                notify::deliver(&self.config, one, Some(&Unreadable)).await
            } else {
                notify::deliver(&self.config, one, Some(&memory)).await
            };
            let _ = memory.record(one, &flags).await;
            notified.extend(flags);
        }
        let state = memory.last_state(&rule, &database).await.ok().flatten();
        (notified, Known { state, since })
    }
}

impl Shared {
    /// Waits for a slot on `database`, then for one in the process. The
    /// database's slot comes first so that a run queued behind its busy
    /// database holds no process slot that another database could use.
    /// `None` only if a semaphore was closed (it never is).
    async fn take_slots(&self, database: &str) -> Option<Slots> {
        let database = match self.database_slots.get(database) {
            Some(slots) => Some(Arc::clone(slots).acquire_owned().await.ok()?),
            None => None,
        };
        let process = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        Some(Slots {
            _database: database,
            _process: process,
        })
    }
}

/// `audit.timeout`, or its default without an audit table.
fn audit_timeout(config: &Config) -> Duration {
    config
        .audit
        .as_ref()
        .map_or(crate::audit::DEFAULT_TIMEOUT, |a| a.timeout)
}

/// How long a claimer waits for another process's claim on the same pair:
/// that process notifies while it holds it (each notifier within its
/// `deadline`) and reads and writes the audit table (`audit.timeout` each).
fn claim_wait(config: &Config) -> Duration {
    let deadline = config
        .notifiers
        .values()
        .map(|n| n.delivery().deadline)
        .max()
        .unwrap_or_default();
    deadline + audit_timeout(config).saturating_mul(2)
}

/// Sleeps until the wall clock reaches `tick`; `false` if `stop` came first.
async fn sleep_until(tick: DateTime<Utc>, stop: &CancellationToken) -> bool {
    loop {
        let now = Utc::now();
        if now >= tick {
            return true;
        }
        let wait = (tick - now).to_std().unwrap_or_default().min(MAX_SLEEP);
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The schedule loop of one pair: until `stop`, wait for the next tick and
/// start a run unless the previous one is still going.
async fn pair_loop(target: Target, shared: Arc<Shared>) {
    let Some(schedule) = target.rule.schedule.clone() else {
        return;
    };
    let tz = target.rule.timezone;
    let pair = PairLabels::of(&target.rule.name, &target.database.name);
    let running = Arc::new(AtomicBool::new(false));
    let mut after = Utc::now();
    loop {
        let Some(tick) = schedule.next_after(after, tz) else {
            info!(
                schedule = schedule.text(),
                "the schedule has no further ticks"
            );
            return;
        };
        shared.metrics.set_next_run(&pair, tick);
        if !sleep_until(tick, &shared.stop).await {
            return;
        }
        // Fire each tick once; after a pause, continue from now (no catch-up burst).
        after = Utc::now().max(tick);
        if running.swap(true, Ordering::SeqCst) {
            shared.metrics.overlap_skip(&pair);
            warn!(
                tick = %tick.to_rfc3339(),
                "the previous run is still going: this tick is skipped (overlap)"
            );
            continue;
        }
        let guard = Running(Arc::clone(&running));
        let (target, task_shared) = (target.clone(), Arc::clone(&shared));
        shared.tracker.spawn(async move {
            let _guard = guard;
            task_shared.run(&target).await;
        });
    }
}

/// Gives the HTTP server until `deadline` (at least [`SERVER_CLOSE_MIN`]) to
/// finish its open requests, then drops it with every connection.
///
/// axum's graceful shutdown waits for *every* connection to end, and a client
/// holding a half-sent request (`GET /metrics HTTP/1.1\r\nHost: x\r\n` and no
/// blank line), an idle keep-alive connection or a reader that never reads
/// would hold the daemon forever; a supervisor would then kill it mid-write.
async fn close_server(
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    deadline: tokio::time::Instant,
) {
    let deadline = deadline.max(tokio::time::Instant::now() + SERVER_CLOSE_MIN);
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        warn!("HTTP clients still connected after the grace period: closing their connections");
        server.abort();
        let _ = server.await;
    }
}

/// Runs the daemon until SIGTERM/SIGINT; returns after the drain.
pub(crate) async fn run(
    config: &Config,
    history: RunHistory,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let plan = Plan::select(config, &Selection::default()).context("selecting the rules")?;
    let (scheduled, unscheduled): (Vec<Target>, Vec<Target>) = plan
        .targets
        .into_iter()
        .partition(|t| t.rule.schedule.is_some());
    for target in &unscheduled {
        warn!(rule = %target.rule.name, database = %target.database.name,
            "the rule has no schedule: the daemon never runs it (use `dbjanitor run`)");
    }
    if scheduled.is_empty() {
        warn!("no enabled rule has a schedule: the daemon has nothing to run");
    }
    let pairs: Vec<PairLabels> = scheduled
        .iter()
        .map(|t| PairLabels::of(&t.rule.name, &t.database.name))
        .collect();
    let metrics = Arc::new(DaemonMetrics::new(
        &pairs,
        &config.databases.keys().cloned().collect::<Vec<_>>(),
    ));
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    {
        // First signal: stop starting runs. Second: cancel the running ones now.
        let (stop, cancel) = (stop.clone(), cancel.clone());
        tokio::spawn(async move {
            crate::signals::wait_for_signal().await;
            stop.cancel();
            crate::signals::wait_for_signal().await;
            warn!("second signal: cancelling running rules now");
            cancel.cancel();
        });
    }
    let server_stop = CancellationToken::new();
    let server = match listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr().unwrap_or(addr);
            info!(address = %local, "serving /healthz, /livez and /metrics");
            Some(tokio::spawn(http::serve(
                listener,
                Arc::clone(&health),
                Arc::clone(&metrics),
                server_stop.clone(),
            )))
        }
        None => None,
    };
    tokio::spawn(http::watch(
        config.databases.values().cloned().collect(),
        Arc::clone(&health),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    let lock_keys = scheduled
        .iter()
        .map(|t| {
            let (db, lock) = t.lock_key();
            ((db.to_owned(), lock.to_owned()), Arc::default())
        })
        .collect();
    let bookkeeping = scheduled
        .iter()
        .map(|t| {
            let key = (t.rule.name.clone(), t.database.name.clone());
            (key, Arc::default())
        })
        .collect();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        config: Arc::new(config.clone()),
        history: Arc::new(history),
        metrics,
        stop: stop.clone(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        lock_keys,
        slots: Arc::new(Semaphore::new(config.daemon.jobs)),
        database_slots: config
            .databases
            .keys()
            .map(|name| {
                let limit = config.daemon.jobs_per_database.min(config.daemon.jobs);
                (name.clone(), Arc::new(Semaphore::new(limit)))
            })
            .collect(),
        bookkeeping,
        bookkeeping_slots: Arc::new(Semaphore::new(config.daemon.jobs)),
        claim_wait: claim_wait(config),
        history_wait: audit_timeout(config).saturating_mul(HISTORY_WAIT_TIMEOUTS),
        known: std::sync::Mutex::default(),
    });
    info!(
        pairs = scheduled.len(),
        jobs = config.daemon.jobs,
        jobs_per_database = config.daemon.jobs_per_database,
        grace_s = config.daemon.shutdown_grace.as_secs(),
        "daemon started"
    );
    let loops: Vec<_> = scheduled
        .into_iter()
        .map(|target| {
            let span =
                info_span!("rule", rule = %target.rule.name, database = %target.database.name);
            tokio::spawn(pair_loop(target, Arc::clone(&shared)).instrument(span))
        })
        .collect();

    stop.cancelled().await;
    let stopped_at = tokio::time::Instant::now();
    health.set_stopping();
    for handle in loops {
        let _ = handle.await;
    }
    tracker.close();
    let grace = config.daemon.shutdown_grace;
    info!(
        running = tracker.len(),
        grace_s = grace.as_secs(),
        "stopping: no new runs; waiting for the running ones"
    );
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(grace) => {
            warn!(running = tracker.len(), "shutdown grace period over: cancelling the running rules (rolled back, locks released)");
            cancel.cancel();
        }
        () = cancel.cancelled() => {}
    }
    if tokio::time::timeout(AFTER_CANCEL, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            running = tracker.len(),
            "some cancelled runs did not finish recording; exiting anyway"
        );
    }
    server_stop.cancel();
    if let Some(server) = server {
        close_server(server, stopped_at + grace).await;
    }
    info!("daemon stopped");
    Ok(())
}
