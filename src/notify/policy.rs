//! When a run is worth a message: the alert-fatigue policy.
//!
//! A janitor that runs every five minutes and sends a mail each time a rule
//! is still failing teaches its readers to ignore it. So, where run history
//! exists (the daemon's memory, the audit table), a message goes out when the
//! state of a (rule, database) pair *changes*, when a notified problem
//! *recovers*, and as a reminder when an unchanged state was last notified
//! `renotify_after` ago. Without history every run whose outcome is in
//! `notify_on` is notified: there is nothing to compare with.
//!
//! [`decide`] is a pure function of the rule's settings, the new outcome, the
//! last known state and the current time, so every case is a unit test.
//!
//! (Over 500 lines because of its tests: the policy itself is under 200; the
//! table of cases below is the specification of alert fatigue.)

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::history::LastState;
#[cfg(test)]
use crate::history::Notified;
use crate::outcome::Outcome;
use crate::rule::Rule;

/// The notification settings of one rule.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Outcomes the rule wants to hear about.
    pub notify_on: &'a BTreeSet<Outcome>,
    /// Quiet time for an unchanged state after it was notified.
    pub renotify_after: Duration,
}

impl<'a> Policy<'a> {
    /// The settings of `rule`.
    #[must_use]
    pub fn of(rule: &'a Rule) -> Self {
        Self {
            notify_on: &rule.notify_on,
            renotify_after: rule.renotify_after,
        }
    }
}

/// What is known about the runs before this one.
#[derive(Debug, Clone, Copy)]
pub enum Past<'a> {
    /// No history store (a one-shot run without audit): nothing to compare with.
    Untracked,
    /// The store knows no earlier run of this pair.
    Never,
    /// The latest recorded run.
    Last(&'a LastState),
    /// The store exists but could not be read (audit database down or
    /// stalled) and this process knows nothing of the pair either: whether
    /// this is news cannot be known.
    Unknown,
}

/// Why a message goes out; carried in every message so that a reader (or a
/// receiving program) knows whether this is news, a reminder or good news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// No run history is kept: every matching outcome is notified.
    Untracked,
    /// A state the receivers have not been told about: the first run, a
    /// different outcome than last time, or a state whose notification was
    /// never delivered.
    New,
    /// The same outcome as last time, notified again because
    /// `renotify_after` has passed since the last message.
    Repeated,
    /// A problem that was notified is gone: the pair is `clean` or `fixed`
    /// now (sent even when those outcomes are not in `notify_on`).
    Recovered,
    /// The run history could not be read and nothing else is known about
    /// the pair: the outcome is told (a duplicate is better than a missed
    /// alert) without claiming it is new.
    Unknown,
}

impl Change {
    /// The snake_case name used in payloads and mails.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Untracked => "untracked",
            Change::New => "new",
            Change::Repeated => "repeated",
            Change::Recovered => "recovered",
            Change::Unknown => "unknown",
        }
    }
}

/// Why a run stays quiet (logged at debug level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// The outcome is not in the rule's `notify_on`.
    NotWanted,
    /// Unchanged since it was notified; a reminder is due at `until`.
    Unchanged {
        /// When the next reminder may go out.
        until: DateTime<Utc>,
    },
}

/// The verdict for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send a message, saying why.
    Notify(Change),
    /// Stay quiet.
    Quiet(Quiet),
}

/// Decides whether the run that ended in `outcome` is notified.
///
/// With history (`Past::Never`/`Past::Last`), the past is the pair's last
/// *real* state (dry runs and `skipped` runs are not states: a skipped run
/// found the lock held elsewhere and says nothing about the data) and the
/// last notification that was *delivered* (what the receivers were told):
/// - the receivers were last told about a problem (`found`, `would_fix`,
///   `guard_tripped`, `failed`) and the pair is `clean` or `fixed` now →
///   `Recovered`, whatever `notify_on` says (they were told about the
///   problem, so they are told it is over; a problem nobody was told of
///   never gets a recovery message);
/// - otherwise an outcome not in `notify_on` → quiet;
/// - no earlier state, or an outcome different from the last state → `New`;
/// - the same outcome as the last state → `New` if the receivers were never
///   told about this outcome (its notification was not delivered, or the
///   last delivered one was about another outcome), else `Repeated` once the
///   last delivered message is `renotify_after` old, quiet until then.
#[must_use]
pub fn decide(
    policy: &Policy<'_>,
    outcome: Outcome,
    past: Past<'_>,
    now: DateTime<Utc>,
) -> Decision {
    let wanted = policy.notify_on.contains(&outcome);
    let last = match past {
        Past::Untracked if wanted => return Decision::Notify(Change::Untracked),
        Past::Never if wanted => return Decision::Notify(Change::New),
        Past::Unknown if wanted => return Decision::Notify(Change::Unknown),
        Past::Untracked | Past::Never | Past::Unknown => {
            return Decision::Quiet(Quiet::NotWanted);
        }
        Past::Last(last) => last,
    };
    if outcome.is_in_order() && last.notified.is_some_and(|told| told.outcome.is_problem()) {
        return Decision::Notify(Change::Recovered);
    }
    if !wanted {
        return Decision::Quiet(Quiet::NotWanted);
    }
    if last.state != Some(outcome) {
        return Decision::Notify(Change::New);
    }
    let Some(told) = last.notified.filter(|told| told.outcome == outcome) else {
        return Decision::Notify(Change::New);
    };
    // A renotify_after too large for chrono means "never remind".
    let Ok(quiet) = chrono::Duration::from_std(policy.renotify_after) else {
        return Decision::Quiet(Quiet::Unchanged {
            until: DateTime::<Utc>::MAX_UTC,
        });
    };
    let until = told
        .at
        .checked_add_signed(quiet)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= until {
        Decision::Notify(Change::Repeated)
    } else {
        Decision::Quiet(Quiet::Unchanged { until })
    }
}

/// The outcome a message names as the previous one: for a recovery, the
/// problem the receivers were last told about; otherwise the last state.
#[must_use]
pub fn previous_outcome(change: Change, past: Past<'_>) -> Option<Outcome> {
    match (change, past) {
        (Change::Recovered, Past::Last(last)) => last.notified.map(|told| told.outcome),
        (_, Past::Last(last)) => last.state,
        (_, Past::Untracked | Past::Never | Past::Unknown) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const HOUR: Duration = Duration::from_hours(1);

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn default_on() -> BTreeSet<Outcome> {
        Outcome::ALL
            .into_iter()
            .filter(|o| o.notified_by_default())
            .collect()
    }

    /// A pair whose last state is `outcome` (started at `started`), last
    /// notified at `notified` about that same outcome.
    fn last(outcome: Outcome, started: u32, notified: Option<u32>) -> LastState {
        LastState {
            last_run_at: at(started),
            state: Some(outcome),
            notified: notified.map(|hour| Notified {
                outcome,
                at: at(hour),
            }),
        }
    }

    fn decide_with(
        on: &BTreeSet<Outcome>,
        outcome: Outcome,
        last: Option<&LastState>,
        now: u32,
    ) -> Decision {
        let policy = Policy {
            notify_on: on,
            renotify_after: 4 * HOUR,
        };
        let past = last.map_or(Past::Never, Past::Last);
        decide(&policy, outcome, past, at(now))
    }

    #[test]
    fn without_history_every_wanted_outcome_notifies() {
        let on = default_on();
        let policy = Policy {
            notify_on: &on,
            renotify_after: HOUR,
        };
        for outcome in Outcome::ALL {
            let expected = if outcome.notified_by_default() {
                Decision::Notify(Change::Untracked)
            } else {
                Decision::Quiet(Quiet::NotWanted)
            };
            assert_eq!(
                decide(&policy, outcome, Past::Untracked, at(1)),
                expected,
                "{outcome}"
            );
        }
    }

    /// Issue 9: an unreadable history is not "no history": the wanted
    /// outcome is told as `unknown`, never as `new`; nothing else is.
    #[test]
    fn an_unreadable_history_tells_wanted_outcomes_as_unknown() {
        let on = default_on();
        let policy = Policy {
            notify_on: &on,
            renotify_after: HOUR,
        };
        assert_eq!(
            decide(&policy, Outcome::Failed, Past::Unknown, at(1)),
            Decision::Notify(Change::Unknown)
        );
        // A recovery cannot be told: nobody knows what was told before.
        assert_eq!(
            decide(&policy, Outcome::Clean, Past::Unknown, at(1)),
            Decision::Quiet(Quiet::NotWanted)
        );
        assert_eq!(previous_outcome(Change::Unknown, Past::Unknown), None);
    }

    #[test]
    fn first_run_notifies_only_wanted_outcomes() {
        let on = default_on();
        assert_eq!(
            decide_with(&on, Outcome::Failed, None, 1),
            Decision::Notify(Change::New)
        );
        assert_eq!(
            decide_with(&on, Outcome::Clean, None, 1),
            Decision::Quiet(Quiet::NotWanted)
        );
        assert_eq!(
            decide_with(&on, Outcome::Skipped, None, 1),
            Decision::Quiet(Quiet::NotWanted)
        );
    }

    #[test]
    fn first_failure_after_clean_notifies() {
        let on = default_on();
        let prev = last(Outcome::Clean, 1, None);
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 2),
            Decision::Notify(Change::New)
        );
    }

    #[test]
    fn unchanged_failure_is_quiet_until_renotify_after() {
        let on = default_on();
        let prev = last(Outcome::Failed, 2, Some(1));
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 3),
            Decision::Quiet(Quiet::Unchanged { until: at(5) })
        );
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 4),
            Decision::Quiet(Quiet::Unchanged { until: at(5) })
        );
        // Exactly renotify_after later: the reminder is due.
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 5),
            Decision::Notify(Change::Repeated)
        );
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 9),
            Decision::Notify(Change::Repeated)
        );
    }

    #[test]
    fn every_unchanged_outcome_follows_the_same_rule() {
        let on = default_on();
        for outcome in [
            Outcome::Found,
            Outcome::Fixed,
            Outcome::WouldFix,
            Outcome::GuardTripped,
        ] {
            let prev = last(outcome, 2, Some(2));
            assert_eq!(
                decide_with(&on, outcome, Some(&prev), 3),
                Decision::Quiet(Quiet::Unchanged { until: at(6) }),
                "{outcome}"
            );
        }
    }

    #[test]
    fn a_change_between_problems_notifies_at_once() {
        let on = default_on();
        // Notified a minute ago as found; now the guard trips: that is news.
        let prev = last(Outcome::Found, 2, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::GuardTripped, Some(&prev), 2),
            Decision::Notify(Change::New)
        );
        let prev = last(Outcome::GuardTripped, 2, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 2),
            Decision::Notify(Change::New)
        );
        let prev = last(Outcome::Clean, 2, Some(1));
        assert_eq!(
            decide_with(&on, Outcome::Found, Some(&prev), 2),
            Decision::Notify(Change::New)
        );
    }

    #[test]
    fn recovery_to_clean_is_notified_even_when_clean_is_not_wanted() {
        let on = default_on();
        assert!(!on.contains(&Outcome::Clean));
        for problem in [
            Outcome::Found,
            Outcome::WouldFix,
            Outcome::GuardTripped,
            Outcome::Failed,
        ] {
            let prev = last(problem, 2, Some(1));
            assert_eq!(
                decide_with(&on, Outcome::Clean, Some(&prev), 3),
                Decision::Notify(Change::Recovered),
                "{problem}"
            );
        }
    }

    #[test]
    fn recovery_by_a_fix_is_notified_even_when_fixed_is_not_wanted() {
        let on: BTreeSet<Outcome> = [Outcome::Failed].into();
        let prev = last(Outcome::Failed, 2, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::Fixed, Some(&prev), 3),
            Decision::Notify(Change::Recovered)
        );
        // And when it is wanted, it is still labelled a recovery.
        let on = default_on();
        assert_eq!(
            decide_with(&on, Outcome::Fixed, Some(&prev), 3),
            Decision::Notify(Change::Recovered)
        );
    }

    #[test]
    fn no_recovery_message_for_a_problem_nobody_was_told_about() {
        // found is not wanted, so nobody heard of it: its end is not news either.
        let on: BTreeSet<Outcome> = [Outcome::Failed].into();
        let prev = last(Outcome::Found, 2, None);
        assert_eq!(
            decide_with(&on, Outcome::Clean, Some(&prev), 3),
            Decision::Quiet(Quiet::NotWanted)
        );
        // Never notified at all (delivery failed, or nothing was configured).
        let on = default_on();
        let prev = last(Outcome::Failed, 2, None);
        assert_eq!(
            decide_with(&on, Outcome::Clean, Some(&prev), 3),
            Decision::Quiet(Quiet::NotWanted)
        );
    }

    /// Issue 16 item 10: found (told) → failed (webhook 500) → failed → clean.
    #[test]
    fn only_delivered_notifications_of_the_same_state_keep_it_quiet() {
        let on = default_on();
        let told_found = Some(Notified {
            outcome: Outcome::Found,
            at: at(1),
        });
        // The failure at 2 was not delivered: at 3 the state is still news.
        let failed_untold = LastState {
            last_run_at: at(2),
            state: Some(Outcome::Failed),
            notified: told_found,
        };
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&failed_untold), 3),
            Decision::Notify(Change::New)
        );
        // Had it gone clean instead, the receivers last heard "found": the
        // recovery is about that, never about the failure nobody was told of.
        let past = Past::Last(&failed_untold);
        let policy = Policy {
            notify_on: &on,
            renotify_after: 4 * HOUR,
        };
        assert_eq!(
            decide(&policy, Outcome::Clean, past, at(3)),
            Decision::Notify(Change::Recovered)
        );
        assert_eq!(
            previous_outcome(Change::Recovered, past),
            Some(Outcome::Found)
        );
        assert_eq!(previous_outcome(Change::New, past), Some(Outcome::Failed));
        // Once the failure is delivered (at 3), it is quiet and a recovery names it.
        let failed_told = last(Outcome::Failed, 3, Some(3));
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&failed_told), 4),
            Decision::Quiet(Quiet::Unchanged { until: at(7) })
        );
        assert_eq!(
            previous_outcome(Change::Recovered, Past::Last(&failed_told)),
            Some(Outcome::Failed)
        );
        // A recovery that was delivered is not repeated.
        let recovered = LastState {
            last_run_at: at(5),
            state: Some(Outcome::Clean),
            notified: Some(Notified {
                outcome: Outcome::Clean,
                at: at(5),
            }),
        };
        assert_eq!(
            decide_with(&on, Outcome::Clean, Some(&recovered), 6),
            Decision::Quiet(Quiet::NotWanted)
        );
    }

    #[test]
    fn clean_after_clean_or_fixed_is_quiet() {
        let on = default_on();
        for previous in [Outcome::Clean, Outcome::Fixed] {
            let prev = last(previous, 2, Some(2));
            assert_eq!(
                decide_with(&on, Outcome::Clean, Some(&prev), 3),
                Decision::Quiet(Quiet::NotWanted),
                "{previous}"
            );
        }
    }

    #[test]
    fn clean_in_notify_on_repeats_like_any_outcome() {
        let on: BTreeSet<Outcome> = Outcome::ALL.into();
        let prev = last(Outcome::Clean, 2, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::Clean, Some(&prev), 3),
            Decision::Quiet(Quiet::Unchanged { until: at(6) })
        );
        let prev = last(Outcome::Fixed, 2, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::Clean, Some(&prev), 3),
            Decision::Notify(Change::New)
        );
    }

    #[test]
    fn an_undelivered_state_is_notified_on_the_next_run() {
        let on = default_on();
        let prev = last(Outcome::Failed, 2, None);
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 3),
            Decision::Notify(Change::New)
        );
    }

    /// Issue 9 item 1: a replica that lost the lock recorded `skipped`.
    #[test]
    fn a_skipped_run_in_between_changes_nothing() {
        let on = default_on();
        let found_then_skipped = LastState {
            last_run_at: at(3),
            state: Some(Outcome::Found),
            notified: Some(Notified {
                outcome: Outcome::Found,
                at: at(2),
            }),
        };
        assert_eq!(
            decide_with(&on, Outcome::Found, Some(&found_then_skipped), 3),
            Decision::Quiet(Quiet::Unchanged { until: at(6) })
        );
        // Only skipped runs so far: the first real state is news.
        let only_skipped = LastState {
            last_run_at: at(3),
            state: None,
            notified: None,
        };
        assert_eq!(
            decide_with(&on, Outcome::Found, Some(&only_skipped), 3),
            Decision::Notify(Change::New)
        );
        // Skipped itself is not wanted by default.
        let prev = last(Outcome::Failed, 3, Some(2));
        assert_eq!(
            decide_with(&on, Outcome::Skipped, Some(&prev), 3),
            Decision::Quiet(Quiet::NotWanted)
        );
    }

    #[test]
    fn renotify_after_zero_repeats_every_run_and_huge_never_does() {
        let on = default_on();
        let prev = last(Outcome::Failed, 2, Some(2));
        let every_run = Policy {
            notify_on: &on,
            renotify_after: Duration::ZERO,
        };
        assert_eq!(
            decide(&every_run, Outcome::Failed, Past::Last(&prev), at(2)),
            Decision::Notify(Change::Repeated)
        );
        let never = Policy {
            notify_on: &on,
            renotify_after: Duration::MAX,
        };
        assert!(matches!(
            decide(&never, Outcome::Failed, Past::Last(&prev), at(23)),
            Decision::Quiet(Quiet::Unchanged { .. })
        ));
    }

    #[test]
    fn a_clock_that_went_backwards_stays_quiet() {
        let on = default_on();
        let prev = last(Outcome::Failed, 5, Some(5));
        assert_eq!(
            decide_with(&on, Outcome::Failed, Some(&prev), 4),
            Decision::Quiet(Quiet::Unchanged { until: at(9) })
        );
    }
}
