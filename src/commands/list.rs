//! `dbjanitor list [RULE...] [--output text|json]`: what the config holds
//! (rules with their schedules and next runs, databases with redacted URLs),
//! as a table for people or JSON for scripts and dashboards.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::{ListArgs, OutputFormat};
use crate::config::Config;
use crate::error::AppError;
use crate::plan::SelectionError;
use crate::report::print_stdout;
use crate::rule::Rule;
use crate::{exit, report};

/// One rule as `list` shows it.
#[derive(Debug, Serialize)]
struct ListedRule {
    name: String,
    databases: Vec<String>,
    schedule: Option<String>,
    timezone: String,
    /// The next tick of the schedule, in UTC (`None`: no schedule, or it never fires again).
    next_run: Option<DateTime<Utc>>,
    /// `report only`, or the mode (`transactional`, `autocommit`), `, batch` when batched.
    fix: String,
    enabled: bool,
    tags: Vec<String>,
    source: String,
}

/// One database as `list` shows it (the URL without its password).
#[derive(Debug, Serialize)]
struct ListedDatabase {
    name: String,
    dialect: String,
    url: String,
}

/// Runs `dbjanitor list`; an unknown rule name is a usage error (exit 2).
pub(crate) fn run(config_path: &Path, args: &ListArgs) -> Result<u8, AppError> {
    let config = crate::config::load(config_path)?;
    if let Some(unknown) = args
        .rules
        .iter()
        .find(|name| !config.rules.iter().any(|r| &r.name == *name))
    {
        return Err(AppError::Usage(
            SelectionError::UnknownRule(unknown.clone()).to_string(),
        ));
    }
    let now = Utc::now();
    let rules: Vec<ListedRule> = config
        .rules
        .iter()
        .filter(|r| args.rules.is_empty() || args.rules.contains(&r.name))
        .map(|rule| listed(rule, now))
        .collect();
    let databases = databases(&config, &rules, !args.rules.is_empty());
    let text = match args.output {
        OutputFormat::Text => text(&rules, &databases),
        OutputFormat::Json => {
            let mut json = serde_json::to_string_pretty(
                &serde_json::json!({ "rules": rules, "databases": databases }),
            )
            .map_err(|e| AppError::Other(anyhow::Error::new(e).context("cannot render JSON")))?;
            json.push('\n');
            json
        }
    };
    print_stdout(&text)?;
    Ok(exit::SUCCESS)
}

fn listed(rule: &Rule, now: DateTime<Utc>) -> ListedRule {
    let fix = match (&rule.fix, rule.mode, rule.batch.is_some()) {
        (None, _, _) => "report only".to_owned(),
        (Some(_), mode, batch) => format!(
            "{}{}",
            serde_json::to_value(mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            if batch { ", batch" } else { "" }
        ),
    };
    ListedRule {
        name: rule.name.clone(),
        databases: rule.databases.clone(),
        schedule: rule.schedule.as_ref().map(|s| s.text().to_owned()),
        timezone: rule.timezone.name().to_owned(),
        next_run: rule
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(now, rule.timezone)),
        fix,
        enabled: rule.enabled,
        tags: rule.tags.clone(),
        source: rule.source.display().to_string(),
    }
}

/// Every database, or with rule names only those the listed rules use.
fn databases(config: &Config, rules: &[ListedRule], narrowed: bool) -> Vec<ListedDatabase> {
    config
        .databases
        .values()
        .filter(|db| !narrowed || rules.iter().any(|r| r.databases.contains(&db.name)))
        .map(|db| ListedDatabase {
            name: db.name.clone(),
            dialect: db.dialect.to_string(),
            url: db.url.redacted().to_owned(),
        })
        .collect()
}

fn text(rules: &[ListedRule], databases: &[ListedDatabase]) -> String {
    let mut table = report::plain_table(&[
        "RULE",
        "DATABASES",
        "SCHEDULE",
        "TIMEZONE",
        "NEXT RUN (UTC)",
        "FIX",
        "ENABLED",
    ]);
    for rule in rules {
        table.add_row(vec![
            rule.name.clone(),
            rule.databases.join(","),
            rule.schedule.clone().unwrap_or_else(|| "-".to_owned()),
            rule.timezone.clone(),
            rule.next_run.map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            rule.fix.clone(),
            if rule.enabled { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut dbs = report::plain_table(&["DATABASE", "DIALECT", "URL"]);
    for db in databases {
        dbs.add_row(vec![db.name.clone(), db.dialect.clone(), db.url.clone()]);
    }
    format!("{table}\n\n{dbs}\n")
}
