//! `run --due`: which pairs of a plan are due now.
//!
//! A timer or CronJob fires every minute; the rules keep their own schedules.
//! A pair is due when its schedule had a tick (in the rule's timezone) after
//! the start of its last recorded run, whatever that run's outcome: a failed
//! or skipped run counts as a run, so a broken database is retried at the next
//! tick of its schedule, not every minute. Many missed ticks (a 3-hour outage)
//! still make the pair due once: the question is only "has the schedule ticked
//! since", never "how many times". A pair that never ran is due; a rule
//! without a schedule is never due (it runs only when asked for).

use chrono::{DateTime, Utc};

use crate::history::{History, HistoryError};
use crate::plan::Target;

/// Why a pair is or is not due; logged for each pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Never run before.
    FirstRun,
    /// The schedule ticked at this time, after the last run started.
    Ticked(DateTime<Utc>),
    /// No tick since the last run; the next tick, if any.
    NotYet(Option<DateTime<Utc>>),
    /// The rule has no schedule.
    Unscheduled,
}

impl Due {
    /// Whether the pair runs now.
    #[must_use]
    pub(crate) fn is_due(self) -> bool {
        matches!(self, Due::FirstRun | Due::Ticked(_))
    }
}

/// Decides one pair from its last run's start.
#[must_use]
pub(crate) fn decide(
    target: &Target,
    last_started: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Due {
    let Some(schedule) = &target.rule.schedule else {
        return Due::Unscheduled;
    };
    let Some(last_started) = last_started else {
        return Due::FirstRun;
    };
    let tz = target.rule.timezone;
    match schedule.last_at_or_before(now, tz) {
        Some(tick) if tick > last_started => Due::Ticked(tick),
        _ => Due::NotYet(schedule.next_after(now, tz)),
    }
}

/// The pair that comes due first among those not due now: what `run --due`
/// says when it ran nothing (issue 12.7), so "no rules ran" is not a puzzle
/// (in the text report, and as `next_due` in the JSON one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct NextDue {
    /// The rule.
    pub rule: String,
    /// The database.
    pub database: String,
    /// When its schedule next ticks.
    pub at: DateTime<Utc>,
}

impl NextDue {
    /// `next due: R on D at 2026-12-01 14:00:00 UTC (in 12m)`.
    #[must_use]
    pub(crate) fn describe(&self, now: DateTime<Utc>) -> String {
        let wait = (self.at - now)
            .to_std()
            .map(|d| std::time::Duration::from_secs(d.as_secs().max(1).div_ceil(60) * 60))
            .unwrap_or_default();
        format!(
            "nothing is due; next due: {} on {} at {} UTC (in {})",
            self.rule,
            self.database,
            self.at.format("%Y-%m-%d %H:%M:%S"),
            humantime::format_duration(wait)
        )
    }
}

/// The due targets only: the unit tests' short form of [`select`].
#[cfg(test)]
async fn filter<H: History>(
    targets: Vec<Target>,
    history: &H,
    now: DateTime<Utc>,
) -> Result<Vec<Target>, HistoryError> {
    Ok(select(targets, history, now).await?.0)
}

/// Keeps the targets that are due at `now`, reading each pair's last run from
/// `history`, and finds the [`NextDue`] among the pairs left out (`None` when
/// none of them has a schedule that ticks again). An unreadable history is an
/// error: guessing would either skip work or run everything at once.
pub(crate) async fn select<H: History>(
    targets: Vec<Target>,
    history: &H,
    now: DateTime<Utc>,
) -> Result<(Vec<Target>, Option<NextDue>), HistoryError> {
    let scheduled: Vec<(&str, &str)> = targets
        .iter()
        .filter(|t| t.rule.schedule.is_some())
        .map(|t| (t.rule.name.as_str(), t.database.name.as_str()))
        .collect();
    let mut states = history.last_states(&scheduled).await?.into_iter();
    let mut due = Vec::with_capacity(targets.len());
    let mut next: Option<NextDue> = None;
    for target in targets {
        let last = if target.rule.schedule.is_some() {
            states.next().flatten().map(|s| s.last_run_at)
        } else {
            None
        };
        let decision = decide(&target, last, now);
        tracing::debug!(rule = %target.rule.name, database = %target.database.name, ?decision, "due?");
        if let Due::NotYet(Some(at)) = decision
            && next.as_ref().is_none_or(|n: &NextDue| at < n.at)
        {
            next = Some(NextDue {
                rule: target.rule.name.clone(),
                database: target.database.name.clone(),
                at,
            });
        }
        if decision.is_due() {
            due.push(target);
        }
    }
    Ok((due, next))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use chrono_tz::Tz;

    use super::*;
    use crate::db::{DatabaseConfig, Dialect};
    use crate::history::MemoryHistory;
    use crate::outcome::RunRecord;
    use crate::rule::{DialectSql, LockSpec, Mode, Rule};
    use crate::schedule::Schedule;
    use crate::secret::SecretUrl;

    fn target(schedule: Option<&str>, tz: Tz) -> Target {
        let rule = Rule {
            name: "r".into(),
            description: String::new(),
            source: PathBuf::from("r.yaml"),
            databases: vec!["d".into()],
            schedule: schedule.map(|s| Schedule::parse(s).expect("schedule")),
            timezone: tz,
            tags: Vec::new(),
            detect: DialectSql {
                any: Some("SELECT 1".into()),
                ..DialectSql::default()
            },
            fix: None,
            max_rows: 1,
            verify: true,
            mode: Mode::Transactional,
            batch: None,
            timeout: std::time::Duration::from_secs(1),
            lock: LockSpec {
                name: "r".into(),
                wait: std::time::Duration::ZERO,
            },
            notify: Vec::new(),
            notify_on: std::collections::BTreeSet::new(),
            renotify_after: std::time::Duration::from_hours(1),
            enabled: true,
            backup: None,
        };
        Target {
            rule: Arc::new(rule),
            database: Arc::new(DatabaseConfig {
                pragmas: Vec::new(),
                replicas: Vec::new(),
                name: "d".into(),
                dialect: Dialect::Sqlite,
                url: SecretUrl::new("sqlite://x.db".into()),
                lock: crate::db::LockKind::Auto,
            }),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn after_a_three_hour_outage_a_rule_is_due_once() {
        let t = target(Some("*/10 * * * *"), Tz::UTC);
        let last = utc("2026-11-22T07:00:05Z");
        let now = utc("2026-11-22T10:00:30Z");
        assert_eq!(
            decide(&t, Some(last), now),
            Due::Ticked(utc("2026-11-22T10:00:00Z"))
        );
        // The catch-up run started at `now`: the same minute is not due again.
        assert_eq!(
            decide(&t, Some(now), utc("2026-11-22T10:00:50Z")),
            Due::NotYet(Some(utc("2026-11-22T10:10:00Z")))
        );
    }

    #[test]
    fn first_run_and_unscheduled() {
        let now = utc("2026-11-22T10:00:30Z");
        assert_eq!(
            decide(&target(Some("@yearly"), Tz::UTC), None, now),
            Due::FirstRun
        );
        assert_eq!(decide(&target(None, Tz::UTC), None, now), Due::Unscheduled);
    }

    #[test]
    fn the_timezone_of_the_rule_decides() {
        // 03:00 in Berlin (CET, UTC+1) is 02:00 UTC.
        let t = target(Some("0 3 * * *"), chrono_tz::Europe::Berlin);
        let last = utc("2026-01-14T02:00:10Z");
        assert!(!decide(&t, Some(last), utc("2026-01-15T01:59:00Z")).is_due());
        assert!(decide(&t, Some(last), utc("2026-01-15T02:00:01Z")).is_due());
    }

    #[tokio::test]
    async fn filter_reads_the_history() {
        let history = MemoryHistory::default();
        let now = Utc::now();
        let t = target(Some("@every 1h"), Tz::UTC);
        assert_eq!(
            filter(vec![t.clone()], &history, now)
                .await
                .expect("filter")
                .len(),
            1
        );
        history
            .record(&[RunRecord::new("r", "d", false, now)], &[false])
            .await
            .expect("record");
        assert!(
            filter(vec![t], &history, now)
                .await
                .expect("filter")
                .is_empty()
        );
    }
}
