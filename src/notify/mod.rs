//! Notifications: after a run, tell the people who asked what was found and
//! what was fixed — once per run and notifier, and only when it is news.
//!
//! The life of one delivery ([`deliver`]):
//!
//! 1. It starts after `run_plan` returned: every transaction is committed or
//!    rolled back, so nothing here can change what was fixed.
//! 2. For each record, [`policy::decide`] says whether it is notified, from
//!    the rule's `notify_on` and `renotify_after` and, where a [`History`] is
//!    given, the pair's last state (alert fatigue: changes, recoveries,
//!    reminders; see the policy module).
//! 3. The notified records are grouped by notifier into one [`Digest`] each:
//!    one POST or one mail per notifier, however many rules it carries.
//! 4. Every notifier is sent to concurrently, each with bounded retries and
//!    its own deadline ([`retry`]).
//! 5. A failure is logged (`warn`) and added to `notify_errors` of every
//!    record that notifier carried, so the report lists it; the exit status
//!    does not change.
//! 6. The history, if any, records the runs and which ones were notified.
//!
//! Channels: [`webhook`] (JSON or Slack/Mattermost) and [`email`] (SMTP).

pub mod email;
pub mod message;
pub mod policy;
pub mod retry;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tracing::{debug, info, warn};

use crate::config::{Config, NotifierConfig};
use crate::history::{History, LastState};
use crate::outcome::RunRecord;
use crate::rule::Rule;
pub use message::{Digest, Entry};
pub use policy::{Change, Decision, Past, Policy, Quiet, decide};
pub use retry::DeliveryError;

/// One message to send: a notifier, its digest, and the records it carries.
#[derive(Debug, Clone)]
pub struct Outgoing<'c> {
    /// The notifier's name in the config.
    pub notifier: &'c str,
    /// Its settings.
    pub config: &'c NotifierConfig,
    /// What it is told.
    pub digest: Digest,
    /// Indices (into the records) of the runs in the digest.
    pub records: Vec<usize>,
}

/// The machine name put in messages (a pod name on Kubernetes).
#[must_use]
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Decides which records are notified and builds one digest per notifier.
/// Pure: `pasts[i]` is what is known before `records[i]`, `now` the time of
/// the decision. Records of rules the config does not know (a rule removed
/// while the daemon ran) and of rules without notifiers are left out.
#[must_use]
pub fn plan<'c>(
    config: &'c Config,
    records: &[RunRecord],
    pasts: &[Past<'_>],
    host: &str,
    now: DateTime<Utc>,
) -> Vec<Outgoing<'c>> {
    let rules: HashMap<&str, &Rule> = config
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.as_ref()))
        .collect();
    let mut by_notifier: BTreeMap<&'c str, (Vec<Entry>, Vec<usize>)> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        let Some(rule) = rules.get(record.rule.as_str()) else {
            continue;
        };
        if rule.notify.is_empty() {
            continue;
        }
        let past = pasts.get(index).copied().unwrap_or(Past::Untracked);
        let change = match decide(&Policy::of(rule), record.outcome, past, now) {
            Decision::Notify(change) => change,
            Decision::Quiet(why) => {
                debug!(rule = %record.rule, database = %record.database, ?why, "not notified");
                continue;
            }
        };
        let previous = match past {
            Past::Last(last) => Some(last.outcome),
            Past::Untracked | Past::Never => None,
        };
        let entry = Entry::new(record, &rule.description, change, previous);
        for name in &rule.notify {
            // Names were resolved when the config loaded; `get_key_value`
            // borrows the name from the config, not from the rule.
            if let Some((name, _)) = config.notifiers.get_key_value(name) {
                let slot = by_notifier.entry(name.as_str()).or_default();
                slot.0.push(entry.clone());
                slot.1.push(index);
            }
        }
    }
    by_notifier
        .into_iter()
        .filter_map(|(notifier, (entries, indices))| {
            let config = config.notifiers.get(notifier)?;
            Some(Outgoing {
                notifier,
                config,
                digest: Digest::new(host.to_owned(), now, entries),
                records: indices,
            })
        })
        .collect()
}

/// Sends one message; the error text is safe to print (no URL token, no
/// password).
pub async fn send(outgoing: &Outgoing<'_>) -> Result<u32, DeliveryError> {
    let result = match outgoing.config {
        NotifierConfig::Webhook(webhook) => webhook::send(webhook, &outgoing.digest).await,
        NotifierConfig::Email(email) => email::send(email, &outgoing.digest).await,
    };
    // Second line of defence: errors are built without URLs and secrets, but
    // a server may echo what it was sent.
    result.map_err(|mut error| {
        error.last = scrub(outgoing.config, &error.last);
        error
    })
}

/// Masks every secret of a notifier (URL password or token, header values,
/// SMTP password) in `text`.
fn scrub(config: &NotifierConfig, text: &str) -> String {
    let mut out = match config {
        NotifierConfig::Webhook(w) => w.url.scrub(text),
        NotifierConfig::Email(e) => e.smtp.scrub(text),
    };
    let secrets: Vec<&str> = match config {
        NotifierConfig::Webhook(w) => w.headers.iter().map(|(_, v)| v.expose()).collect(),
        NotifierConfig::Email(e) => e.password.iter().map(|p| p.expose()).collect(),
    };
    for secret in secrets.into_iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "***");
    }
    out
}

/// Notifies about finished runs and returns, per record, whether a message
/// about it was delivered (by at least one of its notifiers).
///
/// Call it after `run_plan`, with the records it returned. Failures never
/// propagate: each is logged and added to `notify_errors` of the records the
/// failed notifier carried. With a `history`, the policy compares each run
/// with the pair's last state, and afterwards the runs are recorded in it
/// with these flags (`History::record`), so callers need not record them
/// again. Without one (a one-shot run without audit table), every outcome in
/// a rule's `notify_on` is notified.
pub async fn deliver<H: History>(
    config: &Config,
    records: &mut [RunRecord],
    history: Option<&H>,
) -> Vec<bool> {
    deliver_at(config, records, history, Utc::now()).await
}

/// [`deliver`] at a given time: the daemon's tick, or a test's clock.
pub async fn deliver_at<H: History>(
    config: &Config,
    records: &mut [RunRecord],
    history: Option<&H>,
    now: DateTime<Utc>,
) -> Vec<bool> {
    let states = match history {
        Some(history) => last_states(history, records).await,
        None => Vec::new(),
    };
    let pasts: Vec<Past<'_>> = match history {
        None => vec![Past::Untracked; records.len()],
        Some(_) => states
            .iter()
            .map(|state| match state {
                Ok(Some(last)) => Past::Last(last),
                Ok(None) => Past::Never,
                // The store is down: notify as if there were no history. A
                // duplicate message is better than a missed one.
                Err(()) => Past::Untracked,
            })
            .collect(),
    };
    let outgoing = plan(config, records, &pasts, &host_name(), now);
    let results = join_all(outgoing.iter().map(send)).await;
    let mut notified = vec![false; records.len()];
    for (message, result) in outgoing.iter().zip(results) {
        let kind = message.config.kind();
        match result {
            Ok(attempts) => {
                info!(
                    notifier = message.notifier,
                    kind,
                    runs = message.records.len(),
                    attempts,
                    "notification sent"
                );
                for &i in &message.records {
                    notified[i] = true;
                }
            }
            Err(error) => {
                warn!(notifier = message.notifier, kind, %error, "notification failed");
                let text = format!("{} ({kind}): {error}", message.notifier);
                for &i in &message.records {
                    if let Some(record) = records.get_mut(i) {
                        record.notify_errors.push(text.clone());
                    }
                }
            }
        }
    }
    if let Some(history) = history
        && let Err(error) = history.record(records, &notified).await
    {
        warn!(%error, "cannot record the runs in the history");
    }
    notified
}

/// The last state of every record's pair; `Err(())` where the store failed
/// (logged once per pair).
async fn last_states<H: History>(
    history: &H,
    records: &[RunRecord],
) -> Vec<Result<Option<LastState>, ()>> {
    let mut states = Vec::with_capacity(records.len());
    for record in records {
        states.push(
            history
                .last_state(&record.rule, &record.database)
                .await
                .map_err(|error| {
                    warn!(rule = %record.rule, database = %record.database, %error,
                        "cannot read the run history; notifying as if there were none");
                }),
        );
    }
    states
}
