//! `dbjanitor changes RUN_ID`: the before and after of every row a run of a
//! rule with `backup:` changed, read from its images (as a table or JSON).

use serde_json::{Value, json};

use crate::backup::undo::Change;
use crate::cli::{ChangesArgs, OutputFormat};
use crate::commands::undo::{find, parse_run_id, with_session};
use crate::config::Config;
use crate::db::{ConnectSettings, Session};
use crate::error::AppError;
use crate::exit;
use crate::report::print_stdout;

/// `dbjanitor changes`.
pub(crate) async fn run(config: &Config, args: &ChangesArgs) -> Result<u8, AppError> {
    let run = parse_run_id(&args.run_id)?;
    let (db, located) = find(config, &run).await?;
    let settings = ConnectSettings {
        timeout: config.defaults.timeout,
        lock_wait: std::time::Duration::ZERO,
    };
    let images = &config.images;
    let changes = with_session!(&*db, &settings, |s| {
        let changes = crate::backup::undo::changes(&mut s, images, &run).await;
        s.close().await;
        changes
    })
    .map_err(|e| AppError::Other(anyhow::anyhow!("cannot read the images of run {run}: {e}")))?;
    let out = match args.output {
        OutputFormat::Json => json_report(&run, &located.rule, &db.name, &located.table, &changes)?,
        OutputFormat::Text => text_report(&run, &located.rule, &db.name, &located.table, &changes),
    };
    print_stdout(&out)?;
    Ok(exit::SUCCESS)
}

/// An image as JSON: a PostgreSQL image is `{"row": to_json(row), "sql_null":
/// {...}}`, of which the row is shown; other text is shown as a string.
fn image_value(text: Option<&str>) -> Value {
    let value = text.map_or(Value::Null, |t| {
        serde_json::from_str(t).unwrap_or(Value::String(t.to_owned()))
    });
    match value {
        Value::Object(mut map) if map.contains_key("row") && map.contains_key("sql_null") => {
            map.remove("row").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// `changes --output json`: one document with every row's key, before and after.
fn json_report(
    run: &str,
    rule: &str,
    database: &str,
    table: &str,
    changes: &[Change],
) -> Result<String, AppError> {
    let rows: Vec<Value> = changes
        .iter()
        .map(|c| {
            json!({
                "key": image_value(Some(&c.key)),
                "before": image_value(c.before.as_deref()),
                "after": image_value(c.after.as_deref()),
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&json!({
        "run_id": run,
        "rule": rule,
        "database": database,
        "table": table,
        "rows": rows,
    }))
    .map_err(|e| AppError::Other(anyhow::Error::new(e)))?;
    text.push('\n');
    Ok(text)
}

/// `changes` as text: a heading, then per row what happened, before and after.
fn text_report(run: &str, rule: &str, database: &str, table: &str, changes: &[Change]) -> String {
    let shown = |text: Option<&str>| match text {
        Some(_) => image_value(text).to_string(),
        None => "(absent)".to_owned(),
    };
    let mut text = format!(
        "run {run}: rule {rule}, database {database}, table {table}, {} rows changed\n",
        changes.len()
    );
    for change in changes {
        let what = match (&change.before, &change.after) {
            (Some(_), Some(_)) => "updated",
            (Some(_), None) => "deleted",
            (None, Some(_)) => "inserted",
            (None, None) => "unchanged",
        };
        text.push_str(&format!("\n{what} {}\n", change.key));
        text.push_str(&format!(
            "  before: {}\n  after:  {}\n",
            shown(change.before.as_deref()),
            shown(change.after.as_deref())
        ));
    }
    text
}
