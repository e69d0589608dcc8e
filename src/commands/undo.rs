//! `dbjanitor undo RUN_ID`: take back a run of a rule with `backup:` from its
//! images (see `crate::backup`). Under the rule's lock, in one transaction:
//! every row still as the run left it gets its before-image back; if any row
//! changed since, nothing is restored (exit 3) unless `--only-unchanged`.
//! The undo is a run of its own: it keeps images under its own run id (so it
//! can be undone) and, with an audit table, gets an audit row.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::backup::undo::{Located, Restored, locate, restore};
use crate::backup::{Backup, valid_identifier};
use crate::cli::{OutputFormat, UndoArgs};
use crate::config::Config;
use crate::db::{ConnectSettings, DatabaseConfig, DbError, Dialect, Session};
use crate::error::AppError;
use crate::exit;
use crate::outcome::{Outcome, RunRecord};
use crate::report::print_stdout;

/// Opens a session on `$db` (`db::open`) and evaluates `$body` with it
/// bound to `$s`; a connection error is the result.
macro_rules! with_session {
    ($db:expr, $settings:expr, |$s:ident| $body:expr) => {
        match crate::db::open($db, $settings).await {
            Ok(mut $s) => $body,
            Err(e) => Err(e),
        }
    };
}
pub(crate) use with_session;

/// The run id as typed, checked to be a UUID (it is written into SQL as a literal).
pub(crate) fn parse_run_id(text: &str) -> Result<String, AppError> {
    uuid::Uuid::parse_str(text.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| {
            AppError::Usage(format!(
                "{text:?} is not a run id (a UUID, as in the report's run_id)"
            ))
        })
}

/// The database holding a run's images, searched in every configured
/// database of an engine with backup.
pub(crate) async fn find(
    config: &Config,
    run: &str,
) -> Result<(Arc<DatabaseConfig>, Located), AppError> {
    let settings = ConnectSettings {
        timeout: config.defaults.timeout,
        lock_wait: std::time::Duration::ZERO,
    };
    let mut unreachable = Vec::new();
    for db in config.databases.values() {
        let images = &config.images;
        let found: Result<Option<Located>, DbError> = with_session!(&**db, &settings, |s| {
            let found = locate(&mut s, images, run).await;
            s.close().await;
            found
        });
        match found {
            Ok(Some(located)) => return Ok((Arc::clone(db), located)),
            Ok(None) => {}
            Err(e) => unreachable.push(format!("{}: {e}", db.name)),
        }
    }
    if unreachable.is_empty() {
        Err(AppError::Usage(format!(
            "no database in {} holds images of run {run} (only runs of rules with backup: keep images, for images.keep)",
            config.path.display()
        )))
    } else {
        Err(AppError::Other(anyhow::anyhow!(
            "run {run} was not found in the databases that could be searched; these could not: {}",
            unreachable.join("; ")
        )))
    }
}

/// The backup declaration of a located run: its table, and the key columns
/// named in its images' keys (so a run can be undone after its rule changed
/// or left the config).
pub(crate) async fn backup_of(
    config: &Config,
    db: &DatabaseConfig,
    run: &str,
    located: &Located,
) -> Result<Backup, AppError> {
    let settings = ConnectSettings {
        timeout: config.defaults.timeout,
        lock_wait: std::time::Duration::ZERO,
    };
    let images = &config.images;
    let changes = with_session!(db, &settings, |s| {
        let changes = crate::backup::undo::changes(&mut s, images, run).await;
        s.close().await;
        changes
    })
    .map_err(|e| AppError::Other(anyhow::anyhow!("cannot read the images of run {run}: {e}")))?;
    let key: Vec<String> = changes
        .first()
        .and_then(|c| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&c.key).ok()
        })
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if key.is_empty()
        || !key.iter().all(|k| valid_identifier(k, false))
        || !valid_identifier(&located.table, true)
    {
        return Err(AppError::Other(anyhow::anyhow!(
            "the images of run {run} do not name a plain table and key; they cannot be restored"
        )));
    }
    Ok(Backup {
        table: located.table.clone(),
        key,
        images: config.images.clone(),
    })
}

/// The JSON report of an undo.
#[derive(Debug, Serialize)]
struct Report<'a> {
    run_id: &'a str,
    undo_run_id: &'a str,
    rule: &'a str,
    database: &'a str,
    table: &'a str,
    dry_run: bool,
    outcome: &'a str,
    restored: u64,
    #[serde(flatten)]
    details: &'a Restored,
    exit_code: u8,
}

/// `dbjanitor undo`.
pub(crate) async fn run(config: &Config, args: &UndoArgs) -> Result<u8, AppError> {
    let run = parse_run_id(&args.run_id)?;
    let (db, located) = find(config, &run).await?;
    let backup = backup_of(config, &db, &run, &located).await?;
    let (lock_name, wait, timeout) = lock_of(config, &located.rule);
    let settings = ConnectSettings {
        timeout,
        lock_wait: wait,
    };
    let mut record = RunRecord::new(&located.rule, &db.name, args.dry_run, Utc::now());
    let undo_run = record.run_id.clone();
    let started = std::time::Instant::now();
    let dialect = db.dialect;
    let result: Result<Option<Restored>, DbError> = with_session!(&*db, &settings, |s| {
        let result = undo_in(
            &mut s,
            dialect,
            &backup,
            (&run, &undo_run),
            args,
            (&lock_name, wait, timeout),
        )
        .await;
        match result {
            Ok(done) => {
                s.close().await;
                Ok(done)
            }
            Err(e) => {
                s.abort().await;
                Err(e)
            }
        }
    });
    record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let restored = match result {
        Ok(Some(restored)) => restored,
        Ok(None) => {
            print_stdout(&format!(
                "undo of run {run}: lock {lock_name:?} is held by another run; nothing was restored, try again\n"
            ))?;
            return Ok(exit::RULE_FAILED);
        }
        Err(e) => {
            return Err(AppError::Other(anyhow::anyhow!(
                "undo of run {run} failed, nothing was restored (the transaction is rolled back): {e}"
            )));
        }
    };
    let status = if restored.refused {
        exit::GUARD_TRIPPED
    } else {
        exit::SUCCESS
    };
    let outcome = match (restored.refused, args.dry_run) {
        (true, _) => "refused",
        (false, true) => "would_restore",
        (false, false) => "restored",
    };
    if !restored.refused && !args.dry_run {
        record_undo(config, &mut record, &restored, &run).await;
    }
    let text = report_text(
        args,
        (&run, &undo_run),
        &located,
        &db.name,
        &backup.table,
        &restored,
        (outcome, status),
    )?;
    print_stdout(&text)?;
    Ok(status)
}

/// Records a restore that changed rows as a run of its own in the audit table
/// (outcome `fixed`), so the history shows it; a failure to record is logged.
async fn record_undo(config: &Config, record: &mut RunRecord, restored: &Restored, run: &str) {
    record.outcome = Outcome::Fixed;
    record.changed = Some(restored.total());
    record.kept = Some(restored.kept);
    record.message = Some(format!("undo of run {run}"));
    if let Some(store) = crate::audit::AuditStore::from_config(config) {
        let migrated = store.migrate().await;
        let error = match migrated {
            Ok(_) => {
                crate::audit::record(Some(&store), std::slice::from_ref(record), &[false]).await
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = error {
            tracing::error!(error = %error, "the undo run could not be recorded in the audit table");
        }
    }
}

/// The lock, lock wait and timeout of the rule that made the run; a rule no
/// longer in the config is locked by its name, without waiting.
fn lock_of(config: &Config, rule_name: &str) -> (String, Duration, Duration) {
    match config.rules.iter().find(|r| r.name == rule_name) {
        Some(rule) => (rule.lock.name.clone(), rule.lock.wait, rule.timeout),
        None => (
            rule_name.to_owned(),
            Duration::ZERO,
            config.defaults.timeout,
        ),
    }
}

/// The report on stdout, text or JSON.
fn report_text(
    args: &UndoArgs,
    (run, undo_run): (&str, &str),
    located: &Located,
    database: &str,
    table: &str,
    restored: &Restored,
    (outcome, status): (&str, u8),
) -> Result<String, AppError> {
    Ok(match args.output {
        OutputFormat::Json => {
            let report = Report {
                run_id: run,
                undo_run_id: undo_run,
                rule: &located.rule,
                database,
                table,
                dry_run: args.dry_run,
                outcome,
                restored: if restored.refused {
                    0
                } else {
                    restored.total()
                },
                details: restored,
                exit_code: status,
            };
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| AppError::Other(anyhow::Error::new(e)))?;
            json.push('\n');
            json
        }
        OutputFormat::Text => text_report(run, undo_run, located, database, restored, args.dry_run),
    })
}

/// The steps in one transaction under the rule's lock; `None` when the lock is held.
async fn undo_in<S: Session>(
    session: &mut S,
    dialect: Dialect,
    backup: &Backup,
    (run, undo_run): (&str, &str),
    args: &UndoArgs,
    (lock_name, wait, timeout): (&str, std::time::Duration, std::time::Duration),
) -> Result<Option<Restored>, DbError> {
    if !session.begin_locked(lock_name, wait).await? {
        return Ok(None);
    }
    session.set_statement_timeout(timeout, true).await?;
    let restored = restore(session, dialect, backup, run, undo_run, args.only_unchanged).await?;
    let commit = !restored.refused && !args.dry_run;
    session.finish_locked(commit, lock_name).await?;
    Ok(Some(restored))
}

fn text_report(
    run: &str,
    undo_run: &str,
    located: &Located,
    database: &str,
    restored: &Restored,
    dry_run: bool,
) -> String {
    let mut out = format!(
        "undo of run {run} (rule {}, database {database}, table {}, {} rows kept)\n",
        located.rule, located.table, located.rows
    );
    if restored.refused {
        out.push_str(&format!(
            "refused: {} rows changed since the run; nothing was restored (use --only-unchanged to restore the others)\n",
            restored.conflicts.len()
        ));
    } else {
        let verb = if dry_run { "would restore" } else { "restored" };
        out.push_str(&format!(
            "{verb} {} rows: {} updated back, {} inserted again, {} deleted again{}\n",
            restored.total(),
            restored.updated,
            restored.inserted,
            restored.deleted,
            if dry_run {
                " (dry run: rolled back)"
            } else {
                ""
            }
        ));
        if !dry_run {
            out.push_str(&format!(
                "undo run id: {undo_run} (it can be undone in turn)\n"
            ));
        }
    }
    if !restored.conflicts.is_empty() {
        out.push_str("changed since the run (not restored), by key:\n");
        for key in &restored.conflicts {
            out.push_str(&format!("  {key}\n"));
        }
    }
    out
}
