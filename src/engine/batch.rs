//! Batch mode: the fix repeated in its own transaction per batch, with pauses,
//! an adaptive `{batch_size}`, keyset windows, the replica-lag gate between
//! batches and progress lines in the log.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{
    FixProgress, PendingCommit, Run, StepError, clipped, guard, would_fix_without_running,
};
use crate::db::replica::{GateError, LagGate, Verdict, keep_alive};
use crate::db::{DbError, Dialect, Session};
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::rule::{Batch, BatchKey, KeyWindow, Mode};

/// How often a long batch run logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Run<'_> {
    /// Batch mode: a session lock; the fix repeated, each batch its own
    /// transaction (or none in autocommit mode), until a batch changes 0 rows.
    pub(super) async fn batched<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if !self.lock_session(session, record).await? {
            return Ok(());
        }
        if self.detect_and_guard(session, record).await? {
            if self.dry_run {
                self.batch_dry_run(session, batch, record).await?;
            } else {
                self.batch_steps(session, batch, record).await?;
            }
        }
        self.unlock_session(session).await
    }

    /// Dry-run of a batch rule: the first batch, rolled back.
    pub(super) async fn batch_dry_run<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        if self.rule.mode == Mode::Autocommit {
            would_fix_without_running(record);
            return Ok(());
        }
        if let Some(key) = &batch.key
            && self.next_window(session, key, &mut None).await?.is_none()
        {
            record.changed = Some(0);
            record.batches = Some(0);
            record.outcome = Outcome::WouldFix;
            record.message = Some(format!(
                "dry-run: no detected row has a {} (batch.key), so no batch would run",
                key.column
            ));
            return Ok(());
        }
        self.step(self.rule.timeout, session.begin()).await?;
        self.images_before(session, record, 1).await?;
        let mut progress = FixProgress::default();
        let within = self.run_fix(session, &mut progress).await?;
        let images_agree = !within
            || self
                .images_after(session, record, 1, progress.changed)
                .await?;
        self.step(self.rule.timeout, session.rollback()).await?;
        let changed = progress.changed;
        record.changed = Some(changed);
        record.batches = Some(1);
        if !images_agree {
            return Ok(());
        }
        if !within {
            guard(
                record,
                Reason::FixOverMaxRows,
                format!(
                    "the first batch changed {changed} rows, more than max_rows {}; rolled back",
                    self.rule.max_rows
                ),
            );
            return Ok(());
        }
        record.outcome = Outcome::WouldFix;
        record.message = Some(format!(
            "dry-run: ran the first batch only ({changed} rows) and rolled it back; later batches were not run"
        ));
        Ok(())
    }

    /// Sleeps `pause` between batches, in slices of at most the rule's
    /// timeout, cancellable by SIGTERM. Between two slices an empty
    /// transaction ([`keep_alive`]) keeps the session within the server's
    /// idle limit (set from the timeout) and renews a lease lock, whose
    /// length is three timeouts: a longer pause would otherwise let the lease
    /// expire, so another run could take it and this run's next batch fail.
    /// SQLite has neither an idle limit nor leases, and its transaction would
    /// take the database's write lock: it just sleeps.
    pub(super) async fn pause<S: Session>(
        &self,
        session: &mut S,
        pause: Duration,
    ) -> Result<(), StepError> {
        let mut left = pause;
        while !left.is_zero() {
            let slice = left.min(self.rule.timeout);
            tokio::select! {
                () = self.cancel.cancelled() => return Err(StepError::Cancelled),
                () = tokio::time::sleep(slice) => {}
            }
            left = left.saturating_sub(slice);
            if !left.is_zero() && self.dialect != Dialect::Sqlite {
                self.step(self.rule.timeout, keep_alive(session)).await?;
            }
        }
        Ok(())
    }

    /// One batch; returns the rows it changed, or `None` when it tripped
    /// `max_rows` (the record then says what stays committed).
    pub(super) async fn one_batch<S: Session>(
        &self,
        session: &mut S,
        record: &mut RunRecord,
        done: (u64, u64),
    ) -> Result<Option<u64>, StepError> {
        let (batches, total) = done;
        let transactional = self.rule.mode == Mode::Transactional;
        if transactional {
            self.step(self.rule.timeout, session.begin()).await?;
            self.images_before(session, record, batches + 1).await?;
        }
        let mut progress = FixProgress::default();
        let result = self.run_fix(session, &mut progress).await;
        if !transactional && progress.statements > 0 {
            // Autocommit: the statements that finished are committed.
            record.changed = Some(total.saturating_add(progress.changed));
            record.batches = Some(batches + 1);
        }
        let within = result?;
        let last = progress.changed;
        let reached = total.saturating_add(last);
        let kept_before = record.kept;
        if within
            && transactional
            && !self
                .images_after(session, record, batches + 1, last)
                .await?
        {
            self.step(self.rule.timeout, session.rollback()).await?;
            record.kept = kept_before;
            record.changed = Some(total);
            record.batches = Some(batches);
            if let Some(message) = record.message.take() {
                record.message = Some(format!(
                    "batch {}: {message}; the {batches} batches before it stay committed ({total} rows)",
                    batches + 1
                ));
            }
            return Ok(None);
        }
        if within && reached <= self.rule.max_rows {
            if transactional {
                let pending = PendingCommit::Batch {
                    number: batches + 1,
                    rows: last,
                };
                self.commit_step(pending, session.commit()).await?;
            }
            return Ok(Some(last));
        }
        let what = if transactional {
            record.kept = kept_before;
            self.step(self.rule.timeout, session.rollback()).await?;
            record.changed = Some(total);
            record.batches = Some(batches);
            format!(
                "that batch was rolled back; the {batches} batches before it stay committed ({total} rows)"
            )
        } else {
            record.changed = Some(reached);
            record.batches = Some(batches + 1);
            format!(
                "autocommit: that batch is already committed, so {} batches committed {reached} rows{}",
                batches + 1,
                self.statements_not_run(&progress)
            )
        };
        guard(
            record,
            Reason::FixOverMaxRows,
            format!(
                "batch {} brought the rows changed to {reached}, more than max_rows {}; {what}",
                batches + 1,
                self.rule.max_rows,
            ),
        );
        Ok(None)
    }

    pub(super) async fn batch_steps<S: Session>(
        &self,
        session: &mut S,
        batch: &Batch,
        record: &mut RunRecord,
    ) -> Result<(), StepError> {
        let mut total = 0u64;
        let mut batches = 0u64;
        let mut done = false;
        let mut after = None;
        let mut progress = Progress::new();
        let mut lag = batch.lag.map(|limits| {
            record.lag_waited_ms = Some(0);
            LagGate::new(self.database, limits)
        });
        while batches < batch.max_batches {
            if batches > 0 {
                self.pause(session, batch.pause).await?;
                if self
                    .replica_lag_stops(session, lag.as_mut(), record)
                    .await?
                {
                    return Ok(());
                }
            }
            let began = Instant::now();
            // Keyset: the window of this batch; none left means done.
            let window = match &batch.key {
                Some(key) => match self.next_window(session, key, &mut after).await? {
                    Some(rows) => Some(rows),
                    None => {
                        done = true;
                        break;
                    }
                },
                None => None,
            };
            let size = self.batch_size.load(Ordering::Relaxed);
            let Some(last) = self.one_batch(session, record, (batches, total)).await? else {
                return Ok(());
            };
            total = total.saturating_add(last);
            batches += 1;
            record.changed = Some(total);
            record.batches = Some(batches);
            self.adapt_batch_size(batch, began.elapsed(), window.unwrap_or(last));
            progress.batch_done(
                (batches, total),
                self.batch_size.load(Ordering::Relaxed),
                record.lag_waited_ms,
            );
            // Without a key, a batch that changes nothing is the last; with
            // one, a window shorter than the size is.
            done = window.map_or(last == 0, |rows| rows < size);
            if done {
                break;
            }
        }
        if !done {
            record.outcome = Outcome::Fixed;
            record.reason = Some(Reason::MaxBatchesReached);
            record.message = Some(format!(
                "stopped after max_batches ({}) with rows still changing; the next run continues",
                batch.max_batches
            ));
            return Ok(());
        }
        if self
            .verify(session, record, "batches are committed as they go")
            .await?
        {
            record.outcome = Outcome::Fixed;
        }
        Ok(())
    }

    /// `batch.max_replica_lag`: waits before the next batch while replicas
    /// lag (see [`LagGate`]); `true` when the run stops here because it has
    /// waited `max_lag_wait` in all: outcome `fixed`, reason
    /// `replica_lag_wait_exceeded`, with what the batches committed.
    pub(super) async fn replica_lag_stops<S: Session>(
        &self,
        session: &mut S,
        gate: Option<&mut LagGate>,
        record: &mut RunRecord,
    ) -> Result<bool, StepError> {
        let Some(gate) = gate else {
            return Ok(false);
        };
        let verdict = gate.wait(session, self.cancel, self.rule.timeout).await;
        record.lag_waited_ms = Some(u64::try_from(gate.waited().as_millis()).unwrap_or(u64::MAX));
        let why = match verdict {
            Ok(Verdict::Go) => return Ok(false),
            Ok(Verdict::Stop(why)) => why,
            Err(GateError::Cancelled) => return Err(StepError::Cancelled),
            Err(GateError::Timeout(limit)) => return Err(StepError::Timeout(limit)),
            Err(GateError::Db(e)) => return Err(StepError::Db(e)),
        };
        let limits = gate.limits();
        record.outcome = Outcome::Fixed;
        record.reason = Some(Reason::ReplicaLagWaitExceeded);
        record.message = Some(format!(
            "stopped after {} batches ({} rows committed): replica lag stayed over max_replica_lag {} until the run had waited max_lag_wait {} in all ({why}); the next run continues",
            record.batches.unwrap_or_default(),
            record.changed.unwrap_or_default(),
            humantime::format_duration(limits.max_lag),
            humantime::format_duration(limits.max_wait),
        ));
        Ok(true)
    }

    /// After a batch of `changed` rows whose transaction took `took`: the size
    /// of the next one (`batch.target`), logged at debug level.
    pub(super) fn adapt_batch_size(&self, batch: &Batch, took: Duration, changed: u64) {
        let Some(size) = batch.size else {
            return;
        };
        let current = self.batch_size.load(Ordering::Relaxed);
        // A short batch (the last one) says nothing about the time per row.
        let next = if changed < current {
            current
        } else {
            size.next(current, took)
        };
        self.batch_size.store(next, Ordering::Relaxed);
        debug!(
            batch_size = current,
            changed,
            took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            next_batch_size = next,
            "batch committed"
        );
    }

    /// Keyset batches: reads the window of the next batch (the next
    /// `{batch_size}` detected rows after `after` in key order) through the
    /// read-only detect path, stores its keys for the fix, moves `after` to
    /// its last key and returns its rows; `None` when no row is left.
    pub(super) async fn next_window<S: Session>(
        &self,
        session: &mut S,
        key: &BatchKey,
        after: &mut Option<String>,
    ) -> Result<Option<u64>, StepError> {
        let detect = self
            .rule
            .detect
            .statements(self.dialect)
            .first()
            .copied()
            .unwrap_or_default();
        let size = self.batch_size.load(Ordering::Relaxed);
        let sql = key.window_sql(detect, size, after.as_deref());
        let found = self
            .step(self.rule.timeout, session.detect(&sql, 1, Some(1)))
            .await?;
        let cell = |i: usize| {
            found
                .sample
                .rows
                .first()
                .and_then(|row| row.get(i).cloned().flatten())
        };
        let rows = cell(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let window = match (rows, cell(0), cell(1)) {
            (0, _, _) => None,
            (_, Some(first), Some(last)) if !clipped(&first) && !clipped(&last) => {
                Some(KeyWindow {
                    first: BatchKey::literal(&first, self.dialect),
                    last: BatchKey::literal(&last, self.dialect),
                })
            }
            _ => {
                return Err(StepError::Db(DbError::Sql(format!(
                    "batch.key {}: the window of the next batch has no usable first and last key (a key longer than {} characters?)",
                    key.column,
                    Sample::MAX_CELL_CHARS
                ))));
            }
        };
        *after = window.as_ref().map(|w| w.last.clone());
        if let Ok(mut slot) = self.window.lock() {
            slot.clone_from(&window);
        }
        Ok(window.map(|_| rows))
    }
}

/// Progress of a long batch run: one log line every [`PROGRESS_EVERY`].
pub(super) struct Progress {
    started: Instant,
    last_log: Instant,
}

impl Progress {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_log: now,
        }
    }

    pub(super) fn batch_done(
        &mut self,
        (batches, rows): (u64, u64),
        batch_size: u64,
        lag_waited_ms: Option<u64>,
    ) {
        if self.last_log.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_log = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = rows as f64 / seconds.max(1e-3);
        info!(
            batches,
            rows,
            rows_per_second = rate.round(),
            batch_size,
            lag_waited_ms,
            "batch run in progress"
        );
    }
}
