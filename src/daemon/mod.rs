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
//! Across processes, a batch is judged and recorded under the pair's claim
//! in the audit database (`audit::claim::Claim`) and told after the
//! COMMIT, so two replicas tell each state change once, even when the audit
//! database stalls at the COMMIT (see `bookkeep`). A run that started before
//! the run the pair's state comes from is superseded (recorded, not told).
//! When the claim cannot be had, the batch waits (backoff) up to four times
//! `audit.timeout`, then is judged against this process's own last known
//! state of the pair, or told with `change: unknown` if it has none.

mod bookkeep;
mod http;
mod tell;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{
    OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub(crate) use http::Health;

use crate::audit::RunHistory;
use crate::config::Config;
use crate::engine::{RunOptions, run_target};
use crate::metrics::{DaemonMetrics, PairLabels};
use crate::outcome::RunRecord;
use crate::plan::{Plan, Selection, Target};

/// Longest single sleep before the wall clock is read again.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The least time open HTTP requests get to finish at shutdown.
const SERVER_CLOSE_MIN: Duration = Duration::from_secs(1);

/// How long the daemon keeps retrying to record a pair's runs in the run
/// history before it gives up on them (logged and counted).
const RECORD_RETRY_FOR: Duration = Duration::from_mins(2);

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
    /// One turn per lock key, so pairs sharing a key queue within the
    /// process; runs that [share the turn](Target::shares_turn) take it
    /// together. Fair: a waiting writer holds back later readers.
    lock_keys: HashMap<(String, String), Arc<RwLock<()>>>,
    /// `daemon.jobs`: runs at once in the process.
    slots: Arc<Semaphore>,
    /// `daemon.jobs_per_database`: runs at once per database name.
    database_slots: HashMap<String, Arc<Semaphore>>,
    /// Per (rule, database): finished runs waiting for notification and recording.
    bookkeeping: HashMap<(String, String), Arc<std::sync::Mutex<Backlog>>>,
    /// `daemon.jobs` again, for bookkeeping batches: they never hold a run's
    /// slot, and never open more audit connections at once than runs.
    bookkeeping_slots: Arc<Semaphore>,
    /// How long another process may hold a pair's claim (it reads the
    /// history and inserts rows under it, never notifies): `audit.timeout` twice.
    claim_wait: Duration,
    /// How long one told run's delivery may take, for the pair's tell
    /// sequence (the next teller waits for it at most that long).
    tell_for: Duration,
    /// How long a pair's runs wait, not yet notified, for the run history
    /// to be readable again: four times `audit.timeout`.
    history_wait: Duration,
    /// The last state of each pair this process decided about: what it
    /// judges against when the audit database cannot be read.
    known: std::sync::Mutex<HashMap<(String, String), tell::Known>>,
}

/// A run's turn on its lock key, held while it runs.
enum Turn {
    /// With the other runs that share the turn (reports on SQLite).
    Shared { _held: OwnedRwLockReadGuard<()> },
    /// Alone.
    Alone { _held: OwnedRwLockWriteGuard<()> },
}

impl Turn {
    async fn take(queue: Arc<RwLock<()>>, shared: bool) -> Self {
        if shared {
            Turn::Shared {
                _held: queue.read_owned().await,
            }
        } else {
            Turn::Alone {
                _held: queue.write_owned().await,
            }
        }
    }
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
                turn = Turn::take(queue, target.shares_turn()) => turn,
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
    let scheduled = scheduled_targets(config)?;
    let pairs: Vec<PairLabels> = scheduled
        .iter()
        .map(|t| PairLabels::of(&t.rule.name, &t.database.name))
        .collect();
    let metrics = Arc::new(DaemonMetrics::new(
        &pairs,
        &config.databases.keys().cloned().collect::<Vec<_>>(),
    ));
    let health = Arc::new(Health::default());
    let (stop, cancel) = signal_tokens();
    let server_stop = CancellationToken::new();
    let server = match listen {
        Some(addr) => Some(start_server(addr, &health, &metrics, &server_stop).await?),
        None => None,
    };
    tokio::spawn(http::watch(
        config.databases.values().cloned().collect(),
        Arc::clone(&health),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared::new(
        config,
        history,
        metrics,
        &scheduled,
        (stop.clone(), cancel.clone()),
        tracker.clone(),
    ));
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
    let grace = config.daemon.shutdown_grace;
    drain(&tracker, grace, &cancel).await;
    server_stop.cancel();
    if let Some(server) = server {
        close_server(server, stopped_at + grace).await;
    }
    info!("daemon stopped");
    Ok(())
}

/// The enabled rules with a schedule, one target per (rule, database); the
/// others are named in a warning (the daemon never runs them).
fn scheduled_targets(config: &Config) -> anyhow::Result<Vec<Target>> {
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
    Ok(scheduled)
}

/// `(stop, cancel)`: the first signal cancels `stop` (start no new run),
/// the second `cancel` (roll the running ones back now).
fn signal_tokens() -> (CancellationToken, CancellationToken) {
    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    let (on_first, on_second) = (stop.clone(), cancel.clone());
    tokio::spawn(async move {
        crate::signals::wait_for_signal().await;
        on_first.cancel();
        crate::signals::wait_for_signal().await;
        warn!("second signal: cancelling running rules now");
        on_second.cancel();
    });
    (stop, cancel)
}

/// Binds `addr` and serves /healthz, /livez and /metrics until `server_stop`.
async fn start_server(
    addr: SocketAddr,
    health: &Arc<Health>,
    metrics: &Arc<DaemonMetrics>,
    server_stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(address = %local, "serving /healthz, /livez and /metrics");
    Ok(tokio::spawn(http::serve(
        listener,
        Arc::clone(health),
        Arc::clone(metrics),
        server_stop.clone(),
    )))
}

/// After the first signal: lets the running rules (and their bookkeeping)
/// finish within `grace`, then cancels them and waits at most
/// [`AFTER_CANCEL`] more for them to be recorded.
async fn drain(tracker: &TaskTracker, grace: Duration, cancel: &CancellationToken) {
    tracker.close();
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
}

impl Shared {
    /// Everything the pairs' loops share, for the `scheduled` targets.
    fn new(
        config: &Config,
        history: RunHistory,
        metrics: Arc<DaemonMetrics>,
        scheduled: &[Target],
        (stop, cancel): (CancellationToken, CancellationToken),
        tracker: TaskTracker,
    ) -> Self {
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
        let per_database = config.daemon.jobs_per_database.min(config.daemon.jobs);
        Shared {
            config: Arc::new(config.clone()),
            history: Arc::new(history),
            metrics,
            stop,
            cancel,
            tracker,
            lock_keys,
            slots: Arc::new(Semaphore::new(config.daemon.jobs)),
            database_slots: config
                .databases
                .keys()
                .map(|name| (name.clone(), Arc::new(Semaphore::new(per_database))))
                .collect(),
            bookkeeping,
            bookkeeping_slots: Arc::new(Semaphore::new(config.daemon.jobs)),
            claim_wait: crate::notify::claimed::claim_wait(config),
            tell_for: crate::notify::claimed::tell_for(config),
            history_wait: bookkeep::history_wait(config),
            known: std::sync::Mutex::default(),
        }
    }
}
