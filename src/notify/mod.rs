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
//! 6. It returns which records were notified; the caller then records the
//!    runs with that flag (`audit::record`, or the daemon's history).
//!
//! Channels: [`webhook`] (JSON or Slack/Mattermost) and [`email`] (SMTP).

pub mod claimed;
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
use crate::secret::SecretString;
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
pub fn compose<'c>(
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
        let previous = policy::previous_outcome(change, past);
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
        // A Slack or Mattermost webhook URL is a secret as a whole (the
        // token is its path), not only its password part.
        NotifierConfig::Webhook(w) => w.url.scrub(&text.replace(w.url.expose(), "<webhook URL>")),
        NotifierConfig::Email(e) => e.smtp.scrub(text),
    };
    let secrets: Vec<&str> = match config {
        NotifierConfig::Webhook(w) => w.headers.iter().map(|(_, v)| v.expose()).collect(),
        NotifierConfig::Email(e) => e.password.iter().map(SecretString::expose).collect(),
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
/// with the pair's last state *before* these runs; the caller then records
/// the runs with the returned flags (`History::record`, or the audit table),
/// where it can report a recording failure. Without a history (a one-shot run
/// without audit table), every outcome in a rule's `notify_on` is notified.
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
            .zip(records.iter())
            .map(|(state, record)| match state {
                // A dry run neither reads nor writes the alert-fatigue state:
                // it is notified like a run without history.
                _ if record.dry_run => Past::Untracked,
                Ok(Some(last)) => Past::Last(last),
                Ok(None) => Past::Never,
                // The store is down: whether this is news is unknown. A
                // duplicate message is better than a missed one, but it
                // does not claim to be new.
                Err(()) => Past::Unknown,
            })
            .collect(),
    };
    let outgoing = compose(config, records, &pasts, &host_name(), now);
    send_all(&outgoing, records).await
}

/// Sends composed messages (every notifier concurrently) and returns, per
/// record, whether at least one message about it was delivered. A failure
/// is logged and added to `notify_errors` of each record it carried.
/// `records` are the ones the messages were composed from.
pub async fn send_all(outgoing: &[Outgoing<'_>], records: &mut [RunRecord]) -> Vec<bool> {
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
                    if let Some(flag) = notified.get_mut(i) {
                        *flag = true;
                    }
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
    notified
}

/// The last state of every record's pair; `Err(())` everywhere when the
/// store failed (logged once): then every wanted outcome is notified with
/// `change: unknown`.
async fn last_states<H: History>(
    history: &H,
    records: &[RunRecord],
) -> Vec<Result<Option<LastState>, ()>> {
    let pairs: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.rule.as_str(), r.database.as_str()))
        .collect();
    match history.last_states(&pairs).await {
        Ok(states) => states.into_iter().map(Ok).collect(),
        Err(error) => {
            warn!(%error, "cannot read the run history; notifying with the previous state unknown");
            vec![Err(()); records.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::outcome::Outcome;

    /// A config with rules a (ops, dba), b (ops, only failures) and c (no
    /// notifier), loaded the real way from a temporary folder.
    fn config() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("temp dir");
        let rule = |name: &str, extra: &str| {
            format!("name: {name}\ndatabase: main\ndetect: SELECT 1\n{extra}")
        };
        std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
        for (file, text) in [
            ("rules/a.yaml", rule("a", "notify: [ops, dba]\n")),
            ("rules/b.yaml", rule("b", "notify: [ops]\nnotify_on: [failed]\n")),
            ("rules/c.yaml", rule("c", "notify: []\n")),
            (
                "dbjanitor.yaml",
                "databases: { main: { url: \"sqlite:///tmp/none.db\" } }\nrules: [rules]\n\
                 notifiers:\n  ops: { webhook: { url: \"https://hooks.example.org/T/B/secret-token\", \
                 headers: { X-Key: \"header-secret\" } } }\n  \
                 dba: { email: { smtp: \"smtp://u:smtp-secret@mail:25\", tls: none, from: a@b.org, to: [c@d.org] } }\n"
                    .to_owned(),
            ),
        ] {
            std::fs::write(dir.path().join(file), text).expect("write");
        }
        let config = crate::config::load_with_env(
            &dir.path().join("dbjanitor.yaml"),
            &BTreeMap::<String, String>::new(),
        )
        .expect("valid config");
        (dir, config)
    }

    fn record(rule: &str, outcome: Outcome) -> RunRecord {
        let mut r = RunRecord::new(rule, "main", false, Utc::now());
        r.outcome = outcome;
        r
    }

    #[test]
    fn compose_builds_one_digest_per_notifier() {
        let (_dir, config) = config();
        let records = [
            record("a", Outcome::Fixed),
            record("b", Outcome::Failed),
            record("b", Outcome::Fixed),
            record("c", Outcome::Found),
            record("gone", Outcome::Failed),
        ];
        let pasts = vec![Past::Untracked; records.len()];
        let out = compose(&config, &records, &pasts, "h", Utc::now());
        let summary: Vec<(&str, Vec<usize>, Vec<&str>)> = out
            .iter()
            .map(|o| {
                (
                    o.notifier,
                    o.records.clone(),
                    o.digest.entries.iter().map(|e| e.rule.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("dba", vec![0], vec!["a"]),
                // b's fixed run is not wanted; b's failure comes first.
                ("ops", vec![0, 1], vec!["b", "a"]),
            ]
        );
        assert_eq!(out[1].config.kind(), "webhook");
    }

    #[test]
    fn compose_sends_nothing_when_nothing_is_news() {
        let (_dir, config) = config();
        let records = [record("a", Outcome::Clean), record("b", Outcome::Fixed)];
        let pasts = vec![Past::Untracked; records.len()];
        assert!(compose(&config, &records, &pasts, "h", Utc::now()).is_empty());
    }

    #[test]
    fn scrub_masks_every_notifier_secret() {
        let (_dir, config) = config();
        let ops = config.notifiers.get("ops").expect("ops");
        let dba = config.notifiers.get("dba").expect("dba");
        assert_eq!(
            scrub(
                ops,
                "sent to https://hooks.example.org/T/B/secret-token with header-secret"
            ),
            "sent to <webhook URL> with ***"
        );
        assert_eq!(
            scrub(dba, "535 bad password smtp-secret"),
            "535 bad password ***"
        );
    }
}
