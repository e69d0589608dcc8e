//! The run report on stdout: a table for people, one JSON document for machines.
//!
//! JSON shape (stable; documented in the README):
//! `{"version": 1, "dry_run": bool, "rules": [RunRecord...], "exit_code": N}`,
//! with `audit_error` and `next_due` when they apply.

use std::fmt::Write as _;
use std::io::Write as _;

use comfy_table::{Cell, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::due::NextDue;
use crate::outcome::{Outcome, RunRecord, Sample};

/// The JSON report.
#[derive(Debug, Serialize)]
pub(crate) struct JsonReport<'a> {
    /// Schema version of this document.
    pub version: u32,
    /// Whether the run was a dry run.
    pub dry_run: bool,
    /// One entry per (rule, database).
    pub rules: &'a [RunRecord],
    /// The process exit status.
    pub exit_code: u8,
    /// Why the runs could not be recorded in the audit table (they ran all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_error: Option<&'a str>,
    /// After a `run --due` that ran nothing: the pair that comes due first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<&'a NextDue>,
}

/// Renders the JSON report with the exit status the process will return and
/// the audit failure, if any (an audit failure raises the status to 1).
pub(crate) fn json_with(
    records: &[RunRecord],
    dry_run: bool,
    exit_code: u8,
    audit_error: Option<&str>,
    next_due: Option<&NextDue>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&JsonReport {
        version: 1,
        dry_run,
        rules: records,
        exit_code,
        audit_error,
        next_due,
    })
}

/// A plain table: no borders, a rule under the header; fits logs and terminals.
#[must_use]
pub(crate) fn plain_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    table
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Renders the text report.
#[must_use]
pub(crate) fn text(records: &[RunRecord], dry_run: bool) -> String {
    let mut out = String::new();
    if records.is_empty() {
        out.push_str("no rules ran\n");
        return out;
    }
    let mut table = plain_table(&[
        "RULE", "DATABASE", "OUTCOME", "DETECTED", "CHANGED", "TIME", "RUN ID",
    ]);
    for r in records {
        table.add_row(vec![
            r.rule.clone(),
            r.database.clone(),
            r.outcome.to_string(),
            count(r.detected),
            count(r.changed),
            format!("{}ms", r.duration_ms),
            r.run_id.clone(),
        ]);
    }
    let _ = writeln!(out, "{}", table.to_string().trim_end());
    for r in records {
        let detail = details(r);
        if !detail.is_empty() {
            let _ = write!(
                out,
                "\n{} @ {}: {}\n{detail}",
                r.rule, r.database, r.outcome
            );
        }
    }
    let _ = writeln!(out, "\n{}", summary(records, dry_run));
    out
}

fn details(r: &RunRecord) -> String {
    let mut out = String::new();
    if let Some(reason) = r.reason {
        let _ = writeln!(out, "  reason: {reason}");
    }
    if let Some(message) = &r.message {
        let _ = writeln!(out, "  {message}");
    }
    if let Some(error) = &r.error {
        let _ = writeln!(out, "  error: {error}");
    }
    if let Some(waited) = r.lag_waited_ms.filter(|ms| *ms > 0) {
        let _ = writeln!(
            out,
            "  waited {waited} ms in all for replica lag between batches"
        );
    }
    if !r.sample.is_empty() && r.outcome != Outcome::Clean {
        let _ = writeln!(out, "  {}:", sample_heading(&r.sample, r.detected));
        for line in sample_lines(&r.sample) {
            let _ = writeln!(out, "    {line}");
        }
    }
    for e in &r.notify_errors {
        let _ = writeln!(out, "  notify error: {e}");
    }
    out
}

/// `1 rule`, `2 rules`: a count with its noun in the right number (issue
/// 12.7: reports said `1 rules, 1 databases`). Every noun counted in
/// dbjanitor's output takes a plain `s`.
#[must_use]
pub(crate) fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `sample (3 of 12 rows)`: how much of what detect found the sample shows.
#[must_use]
pub(crate) fn sample_heading(sample: &Sample, detected: Option<u64>) -> String {
    let shown = sample.rows.len();
    if sample.after_fix {
        return format!("rows left after the fix ({shown} shown)");
    }
    let total = detected.unwrap_or(shown as u64);
    format!("sample ({shown} of {})", counted(total, "row"))
}

/// The sample rows as an aligned plain table (header first, `NULL` for SQL
/// NULL), one string per line without trailing blanks: the report and the
/// notifications show samples the same way.
#[must_use]
pub(crate) fn sample_lines(sample: &Sample) -> Vec<String> {
    let mut table = plain_table(
        &sample
            .columns
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    for row in &sample.rows {
        table.add_row(
            row.iter()
                .map(|c| c.clone().unwrap_or_else(|| "NULL".to_owned())),
        );
    }
    table
        .to_string()
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// One line: how many pairs ended in each outcome.
#[must_use]
pub(crate) fn summary(records: &[RunRecord], dry_run: bool) -> String {
    let parts: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|o| {
            let n = records.iter().filter(|r| r.outcome == *o).count();
            (n > 0).then(|| format!("{n} {o}"))
        })
        .collect();
    format!(
        "{}{}: {}",
        counted(records.len() as u64, "rule run"),
        if dry_run {
            " (dry run, nothing changed)"
        } else {
            ""
        },
        parts.join(", ")
    )
}

/// Writes to stdout. A closed pipe (`dbjanitor list | head -1`) ends the
/// output quietly: no panic (which `println!` would do), no error, and the
/// exit status stays that of the work done, since the rules ran all the same.
/// Every command writes its output through here.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not a failure of the run.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write the report")),
    }
}
