//! The life of one call, at a glance: parse → load and validate the config →
//! select → install signal handling → execute → report → exit status.
//!
//! Errors are sorted here into the exit statuses of [`crate::exit`]: anything
//! wrong with the config or the command line is [`AppError::Usage`] (exit 2,
//! nothing ran); anything else that stops the command is exit 1.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::check::{CheckResult, prepare_target};
use crate::cli::{CheckArgs, Cli, Command, OutputFormat, RunArgs};
use crate::config::{self, Config};
use crate::engine::{RunOptions, run_plan};
use crate::exit;
use crate::history::MemoryHistory;
use crate::notify;
use crate::outcome::exit_status;
use crate::plan::{Plan, Selection, Target};
use crate::report;

/// Why a command stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad config, rule or arguments: exit 2, nothing ran.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl AppError {
    fn status(&self) -> u8 {
        match self {
            AppError::Usage(_) => exit::USAGE,
            AppError::Other(_) => exit::RULE_FAILED,
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    crate::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::RULE_FAILED);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(status) => exit::code(status),
        Err(error) => {
            match &error {
                AppError::Usage(text) => eprintln!("{text}"),
                AppError::Other(e) => eprintln!("error: {e:#}"),
            }
            exit::code(error.status())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, AppError> {
    match cli.command {
        Command::Run(args) => run(&cli.config, &args).await,
        Command::Check(args) => check(&cli.config, &args).await,
        Command::List => list(&cli.config),
        Command::Demo(args) => crate::demo::run(args.path.as_deref()).await,
    }
}

/// Loads the config, turning every problem into one usage error.
pub fn load_config(path: &Path) -> Result<Config, AppError> {
    config::load(path).map_err(|errors| {
        let count = errors.0.len();
        AppError::Usage(format!(
            "{errors}\n{count} problem{} in the configuration; nothing was run",
            if count == 1 { "" } else { "s" }
        ))
    })
}

/// Cancels `token` on SIGINT or SIGTERM: running rules roll back and report `failed`.
pub fn cancel_on_signal(token: &CancellationToken) {
    let token = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        warn!("signal received: cancelling running rules (their transactions roll back)");
        token.cancel();
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_stdout(text: &str) -> Result<(), AppError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not a failure of the run.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(AppError::Other(
            anyhow::Error::new(e).context("cannot write the report"),
        )),
    }
}

async fn run(config_path: &Path, args: &RunArgs) -> Result<u8, AppError> {
    let config = load_config(config_path)?;
    let selection = Selection {
        rules: args.rules.clone(),
        tags: args.tags.clone(),
        database: args.database.clone(),
    };
    let plan =
        Plan::select(&config, &selection).map_err(|e| AppError::Usage(format!("error: {e}")))?;
    let cancel = CancellationToken::new();
    cancel_on_signal(&cancel);
    let options = RunOptions {
        dry_run: args.dry_run,
        jobs: usize::from(args.jobs),
    };
    let mut records = run_plan(&plan, &options, &cancel).await;
    // After run_plan every transaction is committed or rolled back: delivery
    // cannot change what was fixed, and its failures only land in the report.
    // One-shot runs keep no history yet (the audit table will supply one).
    notify::deliver(&config, &mut records, None::<&MemoryHistory>).await;
    let rendered = match args.output {
        OutputFormat::Text => report::text(&records, args.dry_run),
        OutputFormat::Json => {
            let mut json = report::json(&records, args.dry_run).map_err(|e| {
                AppError::Other(anyhow::Error::new(e).context("cannot render the JSON report"))
            })?;
            json.push('\n');
            json
        }
    };
    print_stdout(&rendered)?;
    Ok(exit_status(&records))
}

async fn check(config_path: &Path, args: &CheckArgs) -> Result<u8, AppError> {
    let config = load_config(config_path)?;
    let mut out = format!(
        "{}: ok: {} rules, {} databases, {} notifiers\n",
        config.path.display(),
        config.rules.len(),
        config.databases.len(),
        config.notifiers.len()
    );
    if !args.connect {
        print_stdout(&out)?;
        return Ok(exit::SUCCESS);
    }
    // Every rule on every database it names, enabled or not.
    let targets: Vec<Target> = config
        .rules
        .iter()
        .flat_map(|rule| {
            rule.databases.iter().filter_map(|db| {
                config.databases.get(db).map(|database| Target {
                    rule: rule.clone(),
                    database: database.clone(),
                })
            })
        })
        .collect();
    let mut invalid = 0;
    let mut unreachable = 0;
    let mut table = report::plain_table(&["RULE", "DATABASE", "RESULT"]);
    for target in &targets {
        let result = prepare_target(target).await;
        let text = match result {
            CheckResult::Ok { statements } => format!("ok ({statements} statements prepared)"),
            CheckResult::Unreachable(e) => {
                unreachable += 1;
                format!("unreachable: {e}")
            }
            CheckResult::Invalid { query, error } => {
                invalid += 1;
                format!("{query} does not prepare: {error}")
            }
        };
        table.add_row(vec![
            target.rule.name.clone(),
            target.database.name.clone(),
            text,
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out.push_str(&format!(
        "{} pairs: {} ok, {invalid} invalid, {unreachable} unreachable\n",
        targets.len(),
        targets.len() - invalid - unreachable
    ));
    print_stdout(&out)?;
    Ok(if invalid > 0 {
        exit::USAGE
    } else if unreachable > 0 {
        exit::RULE_FAILED
    } else {
        exit::SUCCESS
    })
}

fn list(config_path: &Path) -> Result<u8, AppError> {
    let config = load_config(config_path)?;
    let now = chrono::Utc::now();
    let mut rules = report::plain_table(&[
        "RULE",
        "DATABASES",
        "SCHEDULE",
        "TIMEZONE",
        "NEXT RUN (UTC)",
        "FIX",
        "ENABLED",
    ]);
    for rule in &config.rules {
        let next = rule
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(now, rule.timezone))
            .map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            );
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
        rules.add_row(vec![
            rule.name.clone(),
            rule.databases.join(","),
            rule.schedule
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| s.text().to_owned()),
            rule.timezone.name().to_owned(),
            next,
            fix,
            if rule.enabled { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut databases = report::plain_table(&["DATABASE", "DIALECT", "URL"]);
    for db in config.databases.values() {
        databases.add_row(vec![
            db.name.clone(),
            db.dialect.to_string(),
            db.url.redacted().to_owned(),
        ]);
    }
    print_stdout(&format!("{rules}\n\n{databases}\n"))?;
    Ok(exit::SUCCESS)
}
