//! The daemon's notification decision for a batch of one pair's runs, made
//! apart from its delivery.
//!
//! Why apart: under the pair's claim the decision (which runs are news, the
//! `notified` flags, the pair's state after them) is recorded and committed
//! first, and delivered afterwards, outside the transaction. A replica that
//! claims next then reads the decision even when the first one's COMMIT
//! answer was lost, and no claim holds a transaction while a webhook
//! answers (issue 9, the soak's one duplicate).

use chrono::{DateTime, Utc};
use tracing::debug;

use crate::config::Config;
use crate::history::LastState;
use crate::notify::{self, Outgoing, Past};
use crate::outcome::{Outcome, RunRecord};

/// A pair's last state and the start of the run it comes from.
#[derive(Debug, Clone, Default)]
pub(super) struct Known {
    /// `None`: it never ran for real.
    pub(super) state: Option<LastState>,
    /// Start of the latest real, not skipped run: a run that started before
    /// it is superseded (another replica already judged newer data).
    pub(super) since: Option<DateTime<Utc>>,
}

/// What a batch of runs is judged against.
pub(super) enum Start {
    /// The pair's last state.
    Known(Known),
    /// Nothing is known: the history could not be read and this process
    /// has not seen the pair yet.
    Unknown,
}

/// Which runs of a batch are told, with what, and the state after them.
#[derive(Debug)]
pub(super) struct Decision<'c> {
    /// The messages about each run (none: not told).
    messages: Vec<Vec<Outgoing<'c>>>,
    /// Per run: it is told (the `notified` flag its row is recorded with).
    pub(super) notified: Vec<bool>,
    /// The pair's state after the batch, as decided.
    pub(super) known: Known,
}

/// Judges each run of a batch (one pair) against the state the one before
/// it left, starting from `start`: bookkeeping that fell behind (a slow
/// webhook or audit database) still tells an unchanged state once. A run
/// that started before the run the state comes from is superseded: another
/// replica judged newer data already (its run started later but finished
/// first), so it is recorded but neither told nor taken as the state —
/// telling it would say "failed" after "recovered" about a failure that is
/// already over. Pure: nothing is sent.
pub(super) fn decide<'c>(
    config: &'c Config,
    batch: &[RunRecord],
    start: Start,
    host: &str,
    now: DateTime<Utc>,
) -> Decision<'c> {
    let (mut state, mut since, mut unknown) = match start {
        Start::Known(known) => (known.state, known.since, false),
        Start::Unknown => (None, None, true),
    };
    let mut messages = Vec::with_capacity(batch.len());
    let mut notified = Vec::with_capacity(batch.len());
    for record in batch {
        let real = !record.dry_run && record.outcome != Outcome::Skipped;
        if real && since.is_some_and(|at| record.started_at < at) {
            debug!(started_at = %record.started_at.to_rfc3339(), "superseded by a newer run of the pair: not notified");
            messages.push(Vec::new());
            notified.push(false);
            continue;
        }
        if real {
            since = Some(record.started_at);
        }
        let past = match &state {
            // A dry run neither reads nor writes the alert-fatigue state.
            _ if record.dry_run => Past::Untracked,
            _ if std::mem::take(&mut unknown) => Past::Unknown,
            Some(state) => Past::Last(state),
            None => Past::Never,
        };
        let out = notify::compose(config, std::slice::from_ref(record), &[past], host, now);
        let told = !out.is_empty();
        if let Some(next) = LastState::after(state.as_ref(), record, told) {
            state = Some(next);
        }
        messages.push(out);
        notified.push(told);
    }
    Decision {
        messages,
        notified,
        known: Known { state, since },
    }
}

impl Decision<'_> {
    /// Sends the decided messages, run by run in order (each run's
    /// notifiers concurrently), and returns per run whether at least one
    /// notifier delivered it. Failures are logged and added to the run's
    /// `notify_errors`.
    pub(super) async fn deliver(&self, batch: &mut [RunRecord]) -> Vec<bool> {
        let mut delivered = vec![false; batch.len()];
        for ((messages, record), flag) in self
            .messages
            .iter()
            .zip(batch.iter_mut())
            .zip(delivered.iter_mut())
        {
            if messages.is_empty() {
                continue;
            }
            let one = std::slice::from_mut(record);
            *flag = notify::send_all(messages, one)
                .await
                .first()
                .copied()
                .unwrap_or(false);
        }
        delivered
    }

    /// The ids of the runs that were decided as told but not delivered.
    pub(super) fn undelivered<'r>(
        &self,
        batch: &'r [RunRecord],
        delivered: &[bool],
    ) -> Vec<&'r str> {
        batch
            .iter()
            .zip(&self.notified)
            .zip(delivered)
            .filter(|((_, told), delivered)| **told && !**delivered)
            .map(|((record, _), _)| record.run_id.as_str())
            .collect()
    }
}
