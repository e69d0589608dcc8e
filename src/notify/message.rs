//! What a notification says, whatever the channel.
//!
//! One run of dbjanitor produces at most one message per notifier: a
//! [`Digest`] of the runs that notifier is told about, worst outcome first, so
//! that a CronJob sweeping 40 rules sends one mail and the line a reader sees
//! first is the one that needs them. Each run is an [`Entry`]: everything a
//! reader needs to act without opening the logs, and nothing secret — the
//! database is named as in the config, never by its URL, and error texts were
//! already scrubbed of passwords by the engine.
//!
//! The webhook payloads and the mail are rendered from this model by
//! [`super::webhook`] and [`super::email`]; the JSON payload serialises
//! [`Entry`] as it is, so the field list below is the documented schema.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::Change;
use crate::outcome::{Outcome, Reason, RunRecord, Sample};
use crate::report::{sample_heading, sample_lines};

/// One (rule, database) run in a message. Serialised as-is in the JSON
/// payload (`runs[]`), every key always present (`null` when not known).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The run's id, as in the report and the audit table (`run_id`).
    pub run_id: String,
    /// Rule name.
    pub rule: String,
    /// The rule's description: why it exists, what it repairs.
    pub description: String,
    /// Database name from the config (never its URL).
    pub database: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Machine-readable reason, for guard_tripped, failed, skipped and some fixes.
    pub reason: Option<Reason>,
    /// Human explanation of the outcome.
    pub message: Option<String>,
    /// The database error (passwords masked), for failed runs.
    pub error: Option<String>,
    /// Rows detect found.
    pub detected: Option<u64>,
    /// Rows the fix changed (would change, in a dry run).
    pub changed: Option<u64>,
    /// Rows detect still found after the fix.
    pub remaining: Option<u64>,
    /// Batches run, in batch mode.
    pub batches: Option<u64>,
    /// Whether the run was a dry run (nothing was changed).
    pub dry_run: bool,
    /// Wall time of the run.
    pub duration_ms: u64,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Up to 5 detected rows, as text.
    pub sample: Sample,
    /// Why this run is in the message (news, reminder, recovery).
    pub change: Change,
    /// The outcome of the previous real run, where history is kept; for a
    /// recovery, the problem the receivers were last told about.
    pub previous_outcome: Option<Outcome>,
}

impl Entry {
    /// The entry for `record`, which the policy decided to notify.
    #[must_use]
    pub fn new(
        record: &RunRecord,
        description: &str,
        change: Change,
        previous_outcome: Option<Outcome>,
    ) -> Self {
        Self {
            run_id: record.run_id.clone(),
            rule: record.rule.clone(),
            description: description.to_owned(),
            database: record.database.clone(),
            outcome: record.outcome,
            reason: record.reason,
            message: record.message.clone(),
            error: record.error.clone(),
            detected: record.detected,
            changed: record.changed,
            remaining: record.remaining,
            batches: record.batches,
            dry_run: record.dry_run,
            duration_ms: record.duration_ms,
            started_at: record.started_at,
            sample: record.sample.clone(),
            change,
            previous_outcome,
        }
    }

    /// `failed`, or `recovered (clean)`: the word a reader scans for.
    #[must_use]
    pub fn label(&self) -> String {
        match self.change {
            Change::Recovered => format!("recovered ({})", self.outcome),
            _ => self.outcome.to_string(),
        }
    }

    /// `failed: rule on database`, with `(dry run)` when it was one.
    #[must_use]
    pub fn headline(&self) -> String {
        format!(
            "{}: {} on {}{}",
            self.label(),
            self.rule,
            self.database,
            if self.dry_run { " (dry run)" } else { "" }
        )
    }

    /// The facts of the run as (label, value) pairs, in reading order; the
    /// mail prints them as lines, the Slack message as lines and fields.
    #[must_use]
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut facts = Vec::new();
        if let Some(reason) = self.reason {
            facts.push(("reason", reason.to_string()));
        }
        if let Some(message) = &self.message {
            facts.push(("message", message.clone()));
        }
        if let Some(error) = &self.error {
            facts.push(("error", error.clone()));
        }
        for (label, value) in [
            ("detected", self.detected),
            ("changed", self.changed),
            ("remaining", self.remaining),
            ("batches", self.batches),
        ] {
            if let Some(value) = value {
                facts.push((label, value.to_string()));
            }
        }
        facts.push(("duration", format!("{} ms", self.duration_ms)));
        facts.push((
            "started",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ));
        let change = match (self.change, self.previous_outcome) {
            (Change::Untracked, _) => None,
            // A recovery names what the receivers were last told about.
            (Change::Recovered, Some(told)) => Some(format!("recovered (last notified: {told})")),
            (change, Some(previous)) if previous != self.outcome || change == Change::Repeated => {
                Some(format!("{} (previous run: {previous})", change.as_str()))
            }
            (change, _) => Some(change.as_str().to_owned()),
        };
        if let Some(change) = change {
            facts.push(("change", change));
        }
        facts.push(("run id", self.run_id.clone()));
        facts
    }

    /// Whether the sample is worth showing: rows, and an outcome about them.
    #[must_use]
    pub fn shows_sample(&self) -> bool {
        !self.sample.is_empty() && self.outcome != Outcome::Clean
    }
}

/// Everything one notifier is told about one run of dbjanitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Digest {
    /// The machine dbjanitor ran on (pod name, host name).
    pub host: String,
    /// When the message was built.
    pub sent_at: DateTime<Utc>,
    /// The runs, worst outcome first (plan order within one outcome).
    pub entries: Vec<Entry>,
}

impl Digest {
    /// A digest of `entries`, sorted worst outcome first.
    #[must_use]
    pub fn new(host: String, sent_at: DateTime<Utc>, mut entries: Vec<Entry>) -> Self {
        // Stable: rules keep their plan order within one outcome.
        entries.sort_by_key(|e| std::cmp::Reverse(e.outcome.severity()));
        Self {
            host,
            sent_at,
            entries,
        }
    }

    /// The worst outcome in the digest.
    #[must_use]
    pub fn worst(&self) -> Option<Outcome> {
        self.entries.first().map(|e| e.outcome)
    }

    /// Whether every run in it was a dry run (nothing was changed).
    #[must_use]
    pub fn dry_run(&self) -> bool {
        !self.entries.is_empty() && self.entries.iter().all(|e| e.dry_run)
    }

    /// How many runs ended in each outcome, worst first, zero counts left out.
    #[must_use]
    pub fn counts(&self) -> Vec<(Outcome, usize)> {
        let mut outcomes: Vec<Outcome> = Outcome::ALL.to_vec();
        outcomes.sort_by_key(|o| std::cmp::Reverse(o.severity()));
        outcomes
            .into_iter()
            .filter_map(|o| {
                let n = self.entries.iter().filter(|e| e.outcome == o).count();
                (n > 0).then_some((o, n))
            })
            .collect()
    }

    /// `1 failed, 2 fixed, 1 recovered`: counts by label, worst first, with
    /// recoveries counted apart (they are good news, not a clean state).
    #[must_use]
    pub fn summary(&self) -> String {
        let mut parts: Vec<(String, usize)> = Vec::new();
        for entry in &self.entries {
            let label = if entry.change == Change::Recovered {
                "recovered".to_owned()
            } else {
                entry.outcome.to_string()
            };
            match parts.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => parts.push((label, 1)),
            }
        }
        // Recoveries go last, whatever their outcome.
        parts.sort_by_key(|(label, _)| label == "recovered");
        parts
            .iter()
            .map(|(label, n)| format!("{n} {label}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The subject line: outcome, rule and database for one run; counts by
    /// outcome, worst first, for several.
    #[must_use]
    pub fn title(&self) -> String {
        match self.entries.as_slice() {
            [only] => format!("[dbjanitor] {}", only.headline()),
            entries => format!(
                "[dbjanitor] {}: {} rule runs{}",
                self.summary(),
                entries.len(),
                if self.dry_run() { " (dry run)" } else { "" }
            ),
        }
    }

    /// The plain-text body of a mail.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "dbjanitor on {}: {} ({} rule run{})",
            self.host,
            self.summary(),
            self.entries.len(),
            if self.entries.len() == 1 { "" } else { "s" }
        );
        if self.dry_run() {
            let _ = writeln!(
                out,
                "Dry run: the fixes were rolled back, nothing was changed."
            );
        }
        for entry in &self.entries {
            let _ = writeln!(out, "\n{}", entry.headline());
            for line in entry.description.lines() {
                let _ = writeln!(out, "  {}", line.trim_end());
            }
            if !entry.description.is_empty() {
                out.push('\n');
            }
            for (label, value) in entry.facts() {
                let _ = writeln!(out, "  {:<10} {value}", format!("{label}:"));
            }
            if entry.shows_sample() {
                let _ = writeln!(out, "  {}:", sample_heading(&entry.sample, entry.detected));
                for line in sample_lines(&entry.sample) {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\n-- \nSent by dbjanitor on {} at {}.",
            self.host,
            self.sent_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: &str, outcome: Outcome, change: Change) -> Entry {
        let mut record = RunRecord::new(rule, "main", false, Utc::now());
        record.outcome = outcome;
        Entry::new(&record, "", change, None)
    }

    fn digest(entries: Vec<Entry>) -> Digest {
        Digest::new("host-1".to_owned(), Utc::now(), entries)
    }

    #[test]
    fn a_single_run_names_outcome_rule_and_database() {
        let d = digest(vec![entry("jobs.stuck", Outcome::Failed, Change::New)]);
        assert_eq!(d.title(), "[dbjanitor] failed: jobs.stuck on main");
        let d = digest(vec![entry("jobs.stuck", Outcome::Clean, Change::Recovered)]);
        assert_eq!(
            d.title(),
            "[dbjanitor] recovered (clean): jobs.stuck on main"
        );
    }

    #[test]
    fn a_digest_counts_outcomes_worst_first() {
        let d = digest(vec![
            entry("a", Outcome::Fixed, Change::New),
            entry("b", Outcome::Failed, Change::New),
            entry("c", Outcome::Fixed, Change::New),
            entry("d", Outcome::GuardTripped, Change::New),
            entry("e", Outcome::Clean, Change::Recovered),
        ]);
        assert_eq!(
            d.title(),
            "[dbjanitor] 1 failed, 1 guard_tripped, 2 fixed, 1 recovered: 5 rule runs"
        );
        let order: Vec<&str> = d.entries.iter().map(|e| e.rule.as_str()).collect();
        assert_eq!(order, ["b", "d", "a", "c", "e"]);
        assert_eq!(d.worst(), Some(Outcome::Failed));
        assert_eq!(
            d.counts(),
            [
                (Outcome::Failed, 1),
                (Outcome::GuardTripped, 1),
                (Outcome::Fixed, 2),
                (Outcome::Clean, 1)
            ]
        );
    }

    #[test]
    fn dry_run_is_said_in_subject_and_body() {
        let mut record = RunRecord::new("jobs", "main", true, Utc::now());
        record.outcome = Outcome::WouldFix;
        record.detected = Some(3);
        record.changed = Some(3);
        let d = digest(vec![
            Entry::new(&record, "", Change::Untracked, None),
            Entry::new(&record, "", Change::Untracked, None),
        ]);
        assert_eq!(d.title(), "[dbjanitor] 2 would_fix: 2 rule runs (dry run)");
        assert!(d.text().contains("Dry run: the fixes were rolled back"));
    }

    #[test]
    fn the_body_carries_every_fact_and_the_sample() {
        let mut record = RunRecord::new("jobs.stuck", "main", false, Utc::now());
        record.outcome = Outcome::GuardTripped;
        record.reason = Some(Reason::DetectOverMaxRows);
        record.message = Some("detect found 12 rows, more than max_rows 5".to_owned());
        record.detected = Some(12);
        record.duration_ms = 41;
        record.sample = Sample {
            columns: vec!["id".to_owned(), "owner".to_owned()],
            rows: vec![
                vec![Some("1".to_owned()), None],
                vec![Some("2".to_owned()), Some("w2".to_owned())],
            ],
            after_fix: false,
        };
        let d = digest(vec![Entry::new(
            &record,
            "Jobs stay stuck.\nMark them failed.",
            Change::New,
            Some(Outcome::Clean),
        )]);
        let text = d.text();
        for needle in [
            "dbjanitor on host-1: 1 guard_tripped (1 rule run)",
            "\nguard_tripped: jobs.stuck on main\n",
            "  Jobs stay stuck.\n  Mark them failed.\n",
            "  reason:    detect_over_max_rows",
            "  message:   detect found 12 rows, more than max_rows 5",
            "  detected:  12",
            "  duration:  41 ms",
            "  change:    new (previous run: clean)",
            "  sample (2 of 12 rows):",
            "    id  owner",
            "    1   NULL",
            "    2   w2",
            "Sent by dbjanitor on host-1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
