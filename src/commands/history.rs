//! `dbjanitor history`: the audit table, newest first, for the questions an
//! operator asks after a page (what ran, what it found and changed, how long
//! it took, what it said) without writing SQL against `dbjanitor_runs`.
//!
//! It only reads: the schema is neither created nor upgraded, so pointing it
//! at a database changes nothing there.

use std::fmt::Write as _;

use std::path::Path;

use crate::audit::{AuditRun, AuditStore, RunFilter};
use crate::cli::{HistoryArgs, OutputFormat};
use crate::error::AppError;
use crate::report::print_stdout;
use crate::{exit, report};

/// Longest message shown in the text table; the JSON output keeps all of it.
const MESSAGE_CHARS: usize = 80;

/// Runs `dbjanitor history`: exit 2 when the config has no audit table
/// (there is nothing to read, and a retry cannot help), exit 1 when the audit
/// database cannot be read.
pub(crate) async fn run(config_path: &Path, args: &HistoryArgs) -> Result<u8, AppError> {
    let config = crate::config::load(config_path)?;
    let Some(store) = AuditStore::from_config(&config) else {
        return Err(AppError::Usage(format!(
            "{} has no `audit:` section, so no run was recorded: `history` reads the audit table \
             (add `audit: {{ database: <name> }}`, naming one of its databases; README \"Audit history\")",
            config.path.display()
        )));
    };
    if let Some(database) = &args.database
        && !config.databases.contains_key(database)
    {
        return Err(AppError::Usage(format!(
            "unknown database {database:?}; databases in the config: {:?}",
            config.databases.keys().collect::<Vec<_>>()
        )));
    }
    let since = match args.since {
        Some(since) => Some(
            chrono::Duration::from_std(since)
                .ok()
                .and_then(|since| chrono::Utc::now().checked_sub_signed(since))
                .ok_or_else(|| {
                    AppError::Usage(format!(
                        "--since {} reaches before any date dbjanitor can store",
                        humantime::format_duration(since)
                    ))
                })?,
        ),
        None => None,
    };
    let filter = RunFilter {
        rule: args.rule.clone(),
        database: args.database.clone(),
        since,
        limit: args.limit,
    };
    let runs = store.runs(&filter).await.map_err(|e| {
        AppError::Other(anyhow::Error::new(e).context(format!(
            "cannot read the run history from the audit database {}",
            store.database()
        )))
    })?;
    let rendered = match args.output {
        OutputFormat::Text => text(&runs, args.limit),
        OutputFormat::Json => json(&runs).map_err(|e| {
            AppError::Other(anyhow::Error::new(e).context("cannot render the JSON history"))
        })?,
    };
    print_stdout(&rendered)?;
    Ok(exit::SUCCESS)
}

/// The text table: one line per run, newest first, and a count.
#[must_use]
pub(crate) fn text(runs: &[AuditRun], limit: u32) -> String {
    if runs.is_empty() {
        return "no runs recorded that match\n".to_owned();
    }
    let mut table = report::plain_table(&[
        "STARTED (UTC)",
        "RULE",
        "DATABASE",
        "OUTCOME",
        "FOUND",
        "CHANGED",
        "DURATION",
        "RUN ID",
        "MESSAGE",
    ]);
    for run in runs {
        let outcome = if run.dry_run {
            format!("{} (dry run)", run.outcome)
        } else {
            run.outcome.clone()
        };
        table.add_row(vec![
            run.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            run.rule.clone(),
            run.database.clone(),
            outcome,
            count(run.detected),
            count(run.changed),
            duration(run.duration_ms),
            run.run_id.clone().unwrap_or_else(|| "-".to_owned()),
            message(run),
        ]);
    }
    let mut out = format!("{table}\n");
    let shown = runs.len() as u64;
    let _ = write!(out, "{}", report::counted(shown, "run"));
    if shown >= u64::from(limit) {
        let _ = write!(out, " (the newest {limit}; --limit N shows more)");
    }
    out.push('\n');
    out
}

/// The JSON document: `{"runs": [...]}`, newest first.
pub(crate) fn json(runs: &[AuditRun]) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?;
    text.push('\n');
    Ok(text)
}

/// "-" when a count is not known: the table never claims a number it did not see.
fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Milliseconds below a second, else seconds with one decimal.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    }
}

/// The error of a failed run, else its message, on one line and clipped.
fn message(run: &AuditRun) -> String {
    let text = run
        .error
        .as_deref()
        .or(run.message.as_deref())
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_messages_read_at_a_glance() {
        assert_eq!(duration(42), "42ms");
        assert_eq!(duration(1234), "1.2s");
        let run = AuditRun {
            run_id: None,
            rule: "r".into(),
            database: "d".into(),
            started_at: chrono::Utc::now(),
            duration_ms: 1,
            outcome: "failed".into(),
            reason: None,
            message: Some("found 3".into()),
            error: Some(format!("line one\nline {}", "x".repeat(100))),
            detected: None,
            changed: None,
            dry_run: false,
            host: "h".into(),
        };
        let shown = message(&run);
        assert!(shown.starts_with("line one line x"), "{shown}");
        assert!(shown.ends_with('…'));
        assert_eq!(text(&[], 50), "no runs recorded that match\n");
    }
}
