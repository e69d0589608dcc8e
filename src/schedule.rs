//! Rule schedules: cron expressions and `@every` intervals.
//!
//! Cron patterns are parsed by `croner`, which accepts 5 fields (minute
//! precision) or 6 (with seconds), the nicknames `@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`, and `L`/`#`, and which follows
//! daylight-saving changes: a wall-clock time that does not exist (02:30 on a
//! spring-forward night in Europe/Berlin) runs once at the first valid instant
//! after it, and a time that happens twice runs once.
//!
//! `@every 10m` ticks at whole multiples of the interval since the Unix epoch
//! (UTC), so every process and every restart agrees on the ticks, which is what
//! `run --due` and the daemon need; the timezone does not affect it.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A compiled schedule.
#[derive(Clone)]
pub enum Schedule {
    /// A cron pattern (5 or 6 fields, or a nickname).
    Cron {
        /// The text as written in the rule.
        text: String,
        /// The compiled pattern.
        cron: Box<Cron>,
    },
    /// `@every <duration>`: epoch-aligned fixed interval.
    Every {
        /// The text as written in the rule.
        text: String,
        /// The interval, at least one second.
        period: Duration,
    },
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl Schedule {
    /// Parses a schedule, returning a message that says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Some(rest) = trimmed.strip_prefix("@every") {
            let period = humantime::parse_duration(rest.trim()).map_err(|e| {
                format!(
                    "invalid @every interval {:?}: {e} (expected e.g. `@every 10m`)",
                    rest.trim()
                )
            })?;
            if period < Duration::from_secs(1) {
                return Err("@every interval must be at least 1s".to_owned());
            }
            return Ok(Schedule::Every {
                text: trimmed.to_owned(),
                period,
            });
        }
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "invalid schedule {trimmed:?}: expected 5 cron fields (minute hour day month weekday), 6 with seconds first, @hourly/@daily/@weekly/@monthly/@yearly, or @every <duration>; found {fields} fields"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        if !trimmed.starts_with('@') {
            check_steps(trimmed)?;
        }
        let cron = parser
            .parse(trimmed)
            .map_err(|e| format!("invalid schedule {trimmed:?}: {e}"))?;
        // A pattern whose day never exists (`0 0 30 2 *`) compiles but never
        // fires: a rule that silently never runs is a mistake, not a choice.
        // croner searches a bounded number of years, so 29 February passes.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(format!(
                "schedule {trimmed:?} never fires: no date matches its day and month fields"
            ));
        }
        Ok(Schedule::Cron {
            text: trimmed.to_owned(),
            cron: Box::new(cron),
        })
    }

    /// The schedule as written.
    #[must_use]
    pub fn text(&self) -> &str {
        match self {
            Schedule::Cron { text, .. } | Schedule::Every { text, .. } => text,
        }
    }

    /// The first tick strictly after `after`, evaluated in `tz`.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => {
                let local = after.with_timezone(&tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every { period, .. } => {
                let period_ms = i64::try_from(period.as_millis()).ok()?.max(1);
                let now_ms = after.timestamp_millis();
                let next = (now_ms.div_euclid(period_ms) + 1).checked_mul(period_ms)?;
                Utc.timestamp_millis_opt(next).single()
            }
        }
    }

    /// The latest tick at or before `at`, if any: `run --due` compares it with
    /// the last recorded run.
    #[must_use]
    pub fn last_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => {
                let local = at.with_timezone(&tz);
                cron.find_previous_occurrence(&local, true)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every { period, .. } => {
                let period_ms = i64::try_from(period.as_millis()).ok()?.max(1);
                let at_ms = at.timestamp_millis();
                let last = at_ms.div_euclid(period_ms).checked_mul(period_ms)?;
                Utc.timestamp_millis_opt(last).single()
            }
        }
    }
}

/// Names and sizes of the cron fields, for 5 fields (no seconds) or 6.
fn cron_fields(count: usize) -> &'static [(&'static str, u32)] {
    const WITH_SECONDS: [(&str, u32); 6] = [
        ("second", 60),
        ("minute", 60),
        ("hour", 24),
        ("day-of-month", 31),
        ("month", 12),
        ("day-of-week", 7),
    ];
    if count == 6 {
        &WITH_SECONDS
    } else {
        &WITH_SECONDS[1..]
    }
}

/// Refuses steps (`*/61`) at least as large as their field: croner accepts
/// them and fires once per larger unit (`*/61 * * * *` runs hourly), which is
/// never what the author meant.
fn check_steps(pattern: &str) -> Result<(), String> {
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    for (field, &(name, size)) in fields.iter().zip(cron_fields(fields.len())) {
        for part in field.split(',') {
            let Some((_, step)) = part.split_once('/') else {
                continue;
            };
            let Ok(step) = step.parse::<u32>() else {
                continue; // croner reports a malformed step itself
            };
            if step == 0 || step >= size {
                return Err(format!(
                    "invalid schedule {pattern:?}: step /{step} in the {name} field is out of range \
                     (1 to {}): it would not repeat within the {name} field",
                    size - 1
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
    }

    fn next(schedule: &str, after: &str, tz: Tz) -> String {
        let s = Schedule::parse(schedule).unwrap_or_else(|e| panic!("{e}"));
        s.next_after(utc(after), tz)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_the_documented_forms() {
        for ok in [
            "*/10 * * * *",
            "0 */10 * * * *",
            "@hourly",
            "@daily",
            "@every 10m",
            "0 3 L * *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "@every",
            "@every 0s",
            "@sometimes",
            "* * * * * * *",
            "*/61 * * * *",
            "*/60 * * * *",
            "0 */24 * * *",
            "*/0 * * * *",
            "*/60 * * * * *",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    /// Issue 9.9: the reasons say what is wrong.
    #[test]
    fn never_firing_and_oversized_steps_are_explained() {
        let never = Schedule::parse("0 0 30 2 *").err().unwrap_or_default();
        assert!(never.contains("never fires"), "{never}");
        let step = Schedule::parse("*/61 * * * *").err().unwrap_or_default();
        assert!(step.contains("step /61 in the minute field"), "{step}");
        // Rare but real: 29 February fires in leap years; */59 fires twice an hour.
        for ok in ["0 0 29 2 *", "*/59 * * * *", "0 */23 * * *", "0 0 31 * *"] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            next("*/10 * * * *", "2026-01-01T00:01:00Z", Tz::UTC),
            "2026-01-01T00:10:00+00:00"
        );
        assert_eq!(
            next("30 * * * * *", "2026-01-01T00:00:31Z", Tz::UTC),
            "2026-01-01T00:01:30+00:00"
        );
    }

    #[test]
    fn timezones_are_wall_clock() {
        // 03:00 in Tokyo (UTC+9) is 18:00 UTC the day before.
        assert_eq!(
            next("0 3 * * *", "2026-06-01T00:00:00Z", chrono_tz::Asia::Tokyo),
            "2026-06-01T18:00:00+00:00"
        );
        // New York in summer is UTC-4.
        assert_eq!(
            next(
                "0 3 * * *",
                "2026-06-01T00:00:00Z",
                chrono_tz::America::New_York
            ),
            "2026-06-01T07:00:00+00:00"
        );
    }

    #[test]
    fn spring_forward_runs_once_after_the_gap() {
        // Europe/Berlin jumps from 02:00 CET to 03:00 CEST on 2026-03-29.
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(
            next("30 2 * * *", "2026-03-28T23:00:00Z", berlin),
            "2026-03-29T01:00:00+00:00"
        );
        // The following day is back to normal: 02:30 CEST = 00:30 UTC.
        assert_eq!(
            next("30 2 * * *", "2026-03-29T02:00:00Z", berlin),
            "2026-03-30T00:30:00+00:00"
        );
    }

    #[test]
    fn fall_back_runs_once() {
        // Europe/Berlin repeats 02:00-03:00 on 2026-10-25; 02:30 happens twice.
        let berlin = chrono_tz::Europe::Berlin;
        let first = next("30 2 * * *", "2026-10-24T23:00:00Z", berlin);
        assert_eq!(first, "2026-10-25T00:30:00+00:00");
        // After the first 02:30 the next run is the next day, not the second 02:30.
        assert_eq!(
            next("30 2 * * *", &first, berlin),
            "2026-10-26T01:30:00+00:00"
        );
    }

    #[test]
    fn every_is_epoch_aligned() {
        assert_eq!(
            next("@every 10m", "2026-01-01T00:01:00Z", Tz::UTC),
            "2026-01-01T00:10:00+00:00"
        );
        let s = Schedule::parse("@every 10m").unwrap_or_else(|e| panic!("{e}"));
        let last = s.last_at_or_before(utc("2026-01-01T00:19:59Z"), Tz::UTC);
        assert_eq!(
            last.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "2026-01-01T00:10:00+00:00"
        );
    }

    /// The next `n` ticks after `from`, in UTC, as the daemon's loop would fire them.
    fn ticks(schedule: &str, tz: Tz, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(schedule).unwrap_or_else(|e| panic!("{e}"));
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = s
                    .next_after(at, tz)
                    .unwrap_or_else(|| panic!("no tick after {at}"));
                at.format("%m-%dT%H:%M").to_string()
            })
            .collect()
    }

    /// Both transitions, in both hemispheres: a daily job at a wall-clock
    /// time that does not exist runs once, at the first instant after the gap;
    /// one that happens twice runs once, at its first occurrence; an hourly or
    /// every-30-minutes job keeps its real-time cadence (every real hour runs,
    /// the skipped hour does not exist, the repeated hour runs twice).
    #[test]
    fn daylight_saving_in_several_timezones() {
        use chrono_tz::{America, Australia, Europe};
        let cases: [(&str, Tz, &str, [&str; 3]); 8] = [
            // Berlin, spring forward 2026-03-29 02:00 CET -> 03:00 CEST.
            (
                "30 2 * * *",
                Europe::Berlin,
                "2026-03-28T12:00:00Z",
                ["03-29T01:00", "03-30T00:30", "03-31T00:30"],
            ),
            // Berlin, fall back 2026-10-25 03:00 CEST -> 02:00 CET.
            (
                "30 2 * * *",
                Europe::Berlin,
                "2026-10-24T12:00:00Z",
                ["10-25T00:30", "10-26T01:30", "10-27T01:30"],
            ),
            (
                "0 * * * *",
                Europe::Berlin,
                "2026-10-24T23:30:00Z",
                ["10-25T00:00", "10-25T01:00", "10-25T02:00"],
            ),
            // New York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT.
            (
                "30 2 * * *",
                America::New_York,
                "2026-03-07T12:00:00Z",
                ["03-08T07:00", "03-09T06:30", "03-10T06:30"],
            ),
            // New York, fall back 2026-11-01 02:00 EDT -> 01:00 EST.
            (
                "30 1 * * *",
                America::New_York,
                "2026-10-31T12:00:00Z",
                ["11-01T05:30", "11-02T06:30", "11-03T06:30"],
            ),
            (
                "*/30 * * * *",
                America::New_York,
                "2026-11-01T05:15:00Z",
                ["11-01T05:30", "11-01T06:00", "11-01T06:30"],
            ),
            // Sydney (southern hemisphere): fall back 2026-04-05 03:00 AEDT -> 02:00 AEST,
            (
                "30 2 * * *",
                Australia::Sydney,
                "2026-04-04T00:00:00Z",
                ["04-04T15:30", "04-05T16:30", "04-06T16:30"],
            ),
            // and spring forward 2026-10-04 02:00 AEST -> 03:00 AEDT.
            (
                "30 2 * * *",
                Australia::Sydney,
                "2026-10-03T00:00:00Z",
                ["10-03T16:00", "10-04T15:30", "10-05T15:30"],
            ),
        ];
        for (schedule, tz, from, expected) in cases {
            assert_eq!(
                ticks(schedule, tz, from, 3),
                expected,
                "{schedule} in {tz} from {from}"
            );
        }
    }

    /// `run --due` compares the last tick with the last run; the daemon fires
    /// `next_after`. They must agree on every instant of a DST night, or a
    /// rule would run twice (or never) around the change: the last tick at or
    /// before `t` is at or before `t`, and the next tick after it is after `t`.
    #[test]
    fn last_tick_agrees_with_next_tick_across_dst() {
        use chrono_tz::{America, Australia, Europe};
        let nights: [(Tz, &str); 6] = [
            (Europe::Berlin, "2026-03-28T20:00:00Z"),
            (Europe::Berlin, "2026-10-24T20:00:00Z"),
            (America::New_York, "2026-03-08T02:00:00Z"),
            (America::New_York, "2026-11-01T02:00:00Z"),
            (Australia::Sydney, "2026-04-04T12:00:00Z"),
            (Australia::Sydney, "2026-10-03T12:00:00Z"),
        ];
        for schedule in [
            "30 2 * * *",
            "0 * * * *",
            "*/20 * * * *",
            "0 3 * * *",
            "15 1 * * *",
        ] {
            let s = Schedule::parse(schedule).unwrap_or_else(|e| panic!("{e}"));
            for (tz, start) in nights {
                let start = utc(start);
                for step in 0..(12 * 12) {
                    let t = start + chrono::Duration::minutes(5 * step);
                    let last = s
                        .last_at_or_before(t, tz)
                        .unwrap_or_else(|| panic!("no tick before {t}"));
                    assert!(last <= t, "{schedule} {tz}: last {last} after {t}");
                    let next = s
                        .next_after(last, tz)
                        .unwrap_or_else(|| panic!("no tick after {last}"));
                    assert!(
                        next > t,
                        "{schedule} {tz} at {t}: tick {next} between last {last} and now"
                    );
                }
            }
        }
    }
}
