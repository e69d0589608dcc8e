//! `dbjanitor notify-test [NOTIFIER...]`: sends a clearly marked test message
//! through each notifier (or the ones named) and reports delivery, so an
//! operator can prove a webhook URL, a token or an SMTP relay before the first
//! real incident depends on it. Nothing runs against any database.

use chrono::Utc;
use futures_util::future::join_all;

use crate::config::Config;
use crate::notify::{self, Change, Digest, Entry, Outgoing};
use crate::outcome::{Outcome, RunRecord};

/// The rule name the test message carries, so receivers can filter it.
pub(crate) const TEST_RULE: &str = "dbjanitor.notify-test";

/// How one notifier fared.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The notifier's name.
    pub notifier: String,
    /// `Ok(attempts)` or the delivery error (already scrubbed of secrets).
    pub result: Result<u32, String>,
}

/// Names in `wanted` that the config does not define.
#[must_use]
pub(crate) fn unknown<'a>(config: &Config, wanted: &'a [String]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|name| !config.notifiers.contains_key(name.as_str()))
        .map(String::as_str)
        .collect()
}

/// Sends the test message through the notifiers named in `wanted` (every
/// notifier when empty), all at once, each with its own retries and deadline.
pub(crate) async fn send(config: &Config, wanted: &[String]) -> Vec<Delivery> {
    let host = notify::host_name();
    let now = Utc::now();
    let mut record = RunRecord::new(TEST_RULE, "-", false, now);
    record.outcome = Outcome::Found;
    record.message = Some(format!(
        "TEST MESSAGE from `dbjanitor notify-test` on {host}: this notifier works. Nothing ran; no database was touched."
    ));
    let entry = Entry::new(
        &record,
        "A test of dbjanitor's notifications, sent on request.",
        Change::New,
        None,
    );
    let outgoing: Vec<Outgoing<'_>> = config
        .notifiers
        .iter()
        .filter(|(name, _)| wanted.is_empty() || wanted.iter().any(|w| w == *name))
        .map(|(name, notifier)| Outgoing {
            notifier: name,
            config: notifier,
            digest: Digest::new(host.clone(), now, vec![entry.clone()]),
            records: vec![0],
        })
        .collect();
    let results = join_all(outgoing.iter().map(notify::send)).await;
    outgoing
        .iter()
        .zip(results)
        .map(|(message, result)| Delivery {
            notifier: message.notifier.to_owned(),
            result: result.map_err(|e| e.to_string()),
        })
        .collect()
}
