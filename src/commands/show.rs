//! `dbjanitor show RULE`: the rule as dbjanitor will run it, after defaults
//! and built-in values are applied, each setting with where it came from
//! (the rule file's line, the config's `defaults:`, or built-in), and the
//! SQL each of its databases will receive. It answers "why did it do that?"
//! without reading the loader.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::ShowArgs;
use crate::config::Config;
use crate::error::AppError;
use crate::exit;
use crate::plan::SelectionError;
use crate::report;
use crate::report::print_stdout;
use crate::rule::Rule;

/// Where one setting's value came from.
struct Origins {
    rule_path: String,
    rule_text: String,
    config_path: String,
    config_text: String,
}

impl Origins {
    /// `rules/x.yaml:7` when the rule file sets `key`, else `defaults
    /// (dbjanitor.yaml:12)` when `defaults:` does and `inherits`, else `built-in`.
    fn of(&self, key: &str, inherits: bool) -> String {
        if let Some(line) = top_level_line(&self.rule_text, key) {
            return format!("{}:{line}", self.rule_path);
        }
        if inherits && let Some(line) = defaults_line(&self.config_text, key) {
            return format!("defaults ({}:{line})", self.config_path);
        }
        "built-in".to_owned()
    }
}

/// The 1-based line of a top-level `key:` in a YAML text.
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .map(|index| index + 1)
}

/// The 1-based line of `key:` inside the top-level `defaults:` block.
fn defaults_line(text: &str, key: &str) -> Option<usize> {
    let start = top_level_line(text, "defaults")?;
    let lines: Vec<&str> = text.lines().collect();
    // `defaults: { timezone: UTC, ... }` on one line.
    if let Some(line) = lines.get(start - 1)
        && line.contains('{')
    {
        return line.contains(&format!("{key}:")).then_some(start);
    }
    for (index, line) in lines.iter().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.len() == line.len() {
            break;
        }
        if trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
        {
            return Some(index + 1);
        }
    }
    None
}

/// Runs `dbjanitor show RULE`; an unknown rule is a usage error (exit 2).
pub(crate) fn run(config_path: &Path, args: &ShowArgs) -> Result<u8, AppError> {
    let config = crate::config::load(config_path)?;
    let Some(rule) = config.rules.iter().find(|r| r.name == args.rule) else {
        return Err(AppError::Usage(
            SelectionError::UnknownRule(args.rule.clone()).to_string(),
        ));
    };
    let origins = Origins {
        rule_path: rule.source.display().to_string(),
        rule_text: std::fs::read_to_string(&rule.source).unwrap_or_default(),
        config_path: config.path.display().to_string(),
        config_text: std::fs::read_to_string(&config.path).unwrap_or_default(),
    };
    print_stdout(&render(&config, rule, &origins))?;
    Ok(exit::SUCCESS)
}

/// The rule's effective settings, where each came from, and its SQL per database.
fn render(config: &Config, rule: &Rule, origins: &Origins) -> String {
    let mut table = report::plain_table(&["SETTING", "VALUE", "FROM"]);
    for (setting, value, from) in settings(rule, origins) {
        table.add_row(vec![setting.to_owned(), value, from]);
    }
    let mut out = format!("rule {} ({})\n", rule.name, origins.rule_path);
    if let Some(first) = rule.description.lines().next().filter(|l| !l.is_empty()) {
        let _ = writeln!(out, "  {first}");
    }
    let _ = writeln!(out, "\n{table}");
    out.push_str(&sql_per_database(config, rule));
    out
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// `batch:` in one line: pause and max_batches, with size, key and lag if set.
fn batch_summary(rule: &Rule) -> String {
    rule.batch.as_ref().map_or_else(
        || "-".to_owned(),
        |b| {
            let size = b.size.as_ref().map_or_else(String::new, |s| {
                format!(
                    ", size {} (min {}, max {}{})",
                    s.initial,
                    s.min,
                    s.max,
                    s.target
                        .map_or_else(String::new, |t| format!(", target {}", duration(t)))
                )
            });
            let key = b
                .key
                .as_ref()
                .map_or_else(String::new, |k| format!(", key {}", k.column));
            let lag = b.lag.map_or_else(String::new, |l| {
                format!(
                    ", max_replica_lag {} (max_lag_wait {})",
                    duration(l.max_lag),
                    duration(l.max_wait)
                )
            });
            format!(
                "pause {}, max_batches {}{size}{key}{lag}",
                duration(b.pause),
                b.max_batches
            )
        },
    )
}

/// One row per setting: its name, effective value, and where it came from.
fn settings(rule: &Rule, origins: &Origins) -> Vec<(&'static str, String, String)> {
    let mode = serde_json::to_value(rule.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let notify_on: Vec<String> = rule
        .notify_on
        .iter()
        .map(|o| o.as_str().to_owned())
        .collect();
    vec![
        (
            "databases",
            list(&rule.databases),
            origins.of("database", false),
        ),
        (
            "schedule",
            rule.schedule
                .as_ref()
                .map_or_else(|| "- (only when named)".to_owned(), |s| s.text().to_owned()),
            origins.of("schedule", false),
        ),
        (
            "timezone",
            rule.timezone.name().to_owned(),
            origins.of("timezone", true),
        ),
        ("tags", list(&rule.tags), origins.of("tags", false)),
        (
            "fix",
            if rule.fix.is_some() {
                "yes"
            } else {
                "no (report only)"
            }
            .to_owned(),
            origins.of("fix", false),
        ),
        (
            "max_rows",
            rule.max_rows.to_string(),
            origins.of("max_rows", false),
        ),
        (
            "verify",
            rule.verify.to_string(),
            origins.of("verify", false),
        ),
        ("mode", mode, origins.of("mode", false)),
        ("batch", batch_summary(rule), origins.of("batch", false)),
        (
            "timeout",
            duration(rule.timeout),
            origins.of("timeout", true),
        ),
        (
            "lock",
            format!("{} (wait {})", rule.lock.name, duration(rule.lock.wait)),
            origins.of("lock", false),
        ),
        ("notify", list(&rule.notify), origins.of("notify", true)),
        ("notify_on", list(&notify_on), origins.of("notify_on", true)),
        (
            "renotify_after",
            duration(rule.renotify_after),
            origins.of("renotify_after", true),
        ),
        (
            "enabled",
            rule.enabled.to_string(),
            origins.of("enabled", false),
        ),
    ]
}

/// Each database's detect and fix statements, as that dialect runs them.
fn sql_per_database(config: &Config, rule: &Rule) -> String {
    let mut out = String::new();
    for name in &rule.databases {
        let Some(database) = config.databases.get(name) else {
            continue;
        };
        let dialect = database.dialect;
        let _ = writeln!(out, "\non {name} ({dialect}):");
        let detect = rule.detect.for_dialect(dialect).unwrap_or("-");
        let _ = writeln!(out, "  detect:\n{}", indent(detect));
        if let Some(fix) = &rule.fix {
            for (i, statement) in fix.statements(dialect).iter().enumerate() {
                let _ = writeln!(out, "  fix statement {}:\n{}", i + 1, indent(statement));
            }
        }
    }
    out
}

fn indent(sql: &str) -> String {
    sql.trim()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_keys_in_a_rule_and_in_defaults() {
        let rule = "name: a\ndetect: SELECT 1\ntimeout: 5s\n";
        assert_eq!(top_level_line(rule, "timeout"), Some(3));
        assert_eq!(top_level_line(rule, "time"), None);
        let config = "databases: {}\ndefaults:\n  # note\n  timezone: Europe/Berlin\nrules: [r]\n  timeout: 1s\n";
        assert_eq!(defaults_line(config, "timezone"), Some(4));
        assert_eq!(defaults_line(config, "timeout"), None);
        assert_eq!(
            defaults_line("defaults: { timeout: 3s }\n", "timeout"),
            Some(1)
        );
    }
}
