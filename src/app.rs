//! The life of one call, at a glance: parse → load and validate the config →
//! select → install signal handling → execute → report → exit status.
//!
//! Errors are sorted here into the variants of [`AppError`], each of which
//! knows its exit status (see [`crate::error`]): anything wrong with the
//! config or the command line is exit 2 (nothing ran); anything else that
//! stops the command is exit 1. `main` prints the error once.
//!
//! The audit table takes part in that sorting (README "Audit history"): a
//! schema newer than this binary, or a half-applied MySQL migration, stops
//! `run` and `daemon` before any rule runs (exit 2: a person must act, a
//! retry cannot help). An audit database that does not answer stops only
//! `run --due` (exit 1: it cannot tell what is due); a plain `run` runs its
//! rules all the same, prints the whole report, and exits 1 if the runs could
//! not be recorded, so the gap in the history is seen.
//!
//! (Over 500 lines: this is the one place that shows a call's whole life;
//! each step is a short function, and the commands live in `commands/`.)

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::{self, AuditError, AuditStore, RunHistory};
use crate::check::{CheckResult, prepare_target};
use crate::cli::{CheckArgs, Cli, Command, DaemonArgs, OutputFormat, RunArgs};
use crate::commands;
use crate::config::{self, Config};
use crate::engine::{RunOptions, run_plan};
use crate::error::AppError;
use crate::exit;
use crate::history::MemoryHistory;
use crate::metrics::{self, PairLabels, PairState};
use crate::notify;
use crate::outcome::{RunRecord, exit_status};
use crate::plan::{Plan, Selection, Target};
use crate::report::{self, print_stdout};
use crate::signals::cancel_on_signal;

/// Library chatter kept out of the default log (issue 12.6): sqlx's
/// `slow statement` WARN (with the SQL) and PostgreSQL server notices such
/// as `relation ... already exists, skipping` (sqlx logs NOTICE at info;
/// tokio-postgres logs every notice at info). Server WARNINGs still show.
const QUIET_LIBRARIES: &str =
    "sqlx::query=error,sqlx::postgres::notice=warn,tokio_postgres::connection=warn";

/// The log filter when `RUST_LOG` is unset: `info`, but `warn` for the demo
/// (its story is its report) and for an interactive `run` (stderr is a
/// terminal and no `--log-dir`): the report is the output there, and per-rule
/// INFO lines above it would only interleave.
fn default_log_filter(cli: &Cli) -> String {
    use std::io::IsTerminal;
    let interactive_run = matches!(cli.command, Command::Run(_))
        && cli.log_dir.is_none()
        && std::io::stderr().is_terminal();
    let level = if matches!(cli.command, Command::Demo(_)) || interactive_run {
        "warn"
    } else {
        "info"
    };
    format!("{level},{QUIET_LIBRARIES}")
}

/// Runs the parsed command line and returns the process exit code. The one
/// place an error is printed.
pub fn main(cli: Cli) -> ExitCode {
    // Kept until this function returns: the log files are flushed when it drops.
    // The demo's story is its report; its per-rule log lines would only interleave.
    let default_filter = default_log_filter(&cli);
    let log_guard =
        match crate::logging::init(cli.log_format, cli.log_dir.as_deref(), &default_filter) {
            Ok(guard) => guard,
            Err(e) => return exit::code(fail(&AppError::Usage(e.to_string()))),
        };
    let one_shot = !matches!(cli.command, Command::Daemon(_));
    let mut status = match execute(cli) {
        Ok(status) => status,
        Err(error) => fail(&error),
    };
    // Flushes the log files: a write that fails here is counted below.
    drop(log_guard);
    if one_shot && status == exit::SUCCESS && crate::logging::file_write_failed() {
        status = exit::RULE_FAILED;
    }
    exit::code(status)
}

/// Runs the command on a new async runtime.
fn execute(cli: Cli) -> Result<u8, AppError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("cannot start the async runtime"))?;
    let result = runtime.block_on(dispatch(cli));
    // Tasks still blocked (a stuck blocking call) must not hold the exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// Prints `error` to stderr and returns its exit status.
fn fail(error: &AppError) -> u8 {
    print_stderr(&error.to_string());
    error.status()
}

/// How long the runtime may take to stop its last tasks after the command.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

async fn dispatch(cli: Cli) -> Result<u8, AppError> {
    match cli.command {
        Command::Run(args) => run(&cli.config, &args).await,
        Command::Check(args) => check(&cli.config, &args).await,
        Command::List(args) => commands::list::run(&cli.config, &args),
        Command::Daemon(args) => daemon(&cli.config, &args).await,
        Command::Demo(args) => crate::demo::run(args.path.as_deref()).await,
        Command::Init(args) => init(&args.dir),
        Command::NotifyTest(args) => notify_test(&cli.config, &args.notifiers).await,
        Command::Undo(args) => {
            let config = config::load(&cli.config)?;
            commands::undo::run(&config, &args).await
        }
        Command::Changes(args) => {
            let config = config::load(&cli.config)?;
            commands::changes::run(&config, &args).await
        }
        Command::Completions(args) => {
            let mut out = Vec::new();
            commands::completions(args.shell, &mut out);
            print_stdout(&String::from_utf8_lossy(&out))?;
            Ok(exit::SUCCESS)
        }
        Command::Man => {
            let mut out = Vec::new();
            commands::man(&mut out).map_err(|e| {
                AppError::Other(anyhow::Error::new(e).context("cannot render the man page"))
            })?;
            print_stdout(&String::from_utf8_lossy(&out))?;
            Ok(exit::SUCCESS)
        }
        Command::Version => {
            print_stdout(&commands::version())?;
            Ok(exit::SUCCESS)
        }
        Command::History(args) => commands::history::run(&cli.config, &args).await,
        Command::Show(args) => commands::show::run(&cli.config, &args),
    }
}

fn init(dir: &Path) -> Result<u8, AppError> {
    let written = commands::init::write(dir).map_err(|e| AppError::Usage(e.to_string()))?;
    let mut out = String::new();
    for path in &written {
        out.push_str(&format!("wrote {}\n", path.display()));
    }
    out.push_str(&format!(
        "next: set APP_DB_URL (or edit the url), then\n  dbjanitor --config {} check --connect\n",
        dir.join("dbjanitor.yaml").display()
    ));
    print_stdout(&out)?;
    Ok(exit::SUCCESS)
}

async fn notify_test(config_path: &Path, wanted: &[String]) -> Result<u8, AppError> {
    let config = config::load(config_path)?;
    let unknown = commands::notify_test::unknown(&config, wanted);
    if !unknown.is_empty() {
        return Err(AppError::Usage(format!(
            "no notifier named {}; notifiers in the config: {:?}",
            unknown.join(", "),
            config.notifiers.keys().collect::<Vec<_>>()
        )));
    }
    if config.notifiers.is_empty() {
        return Err(AppError::Usage(format!(
            "{} defines no notifier (see README \"Notifications\"); nothing was sent",
            config.path.display()
        )));
    }
    let deliveries = commands::notify_test::send(&config, wanted).await;
    let mut table = report::plain_table(&["NOTIFIER", "RESULT"]);
    let mut failed = 0;
    for delivery in &deliveries {
        let text = match &delivery.result {
            Ok(attempts) => format!(
                "delivered ({attempts} attempt{})",
                if *attempts == 1 { "" } else { "s" }
            ),
            Err(e) => {
                failed += 1;
                format!("not delivered: {e}")
            }
        };
        table.add_row(vec![delivery.notifier.clone(), text]);
    }
    print_stdout(&format!(
        "{table}\n{}: {} delivered, {failed} not delivered\n",
        crate::report::counted(deliveries.len() as u64, "notifier"),
        deliveries.len() - failed
    ))?;
    Ok(if failed > 0 {
        exit::RULE_FAILED
    } else {
        exit::SUCCESS
    })
}

/// Writes one line to stderr; a closed stderr is ignored (the standard
/// macro would panic).
fn print_stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Opens the audit store of `config` and brings its schema up to date before
/// anything runs. A schema this binary must not touch is a usage error (exit
/// 2); an unreachable database is returned for the caller to weigh.
async fn open_audit(config: &Config) -> Result<Option<(AuditStore, Option<AuditError>)>, AppError> {
    let Some(store) = AuditStore::from_config(config) else {
        return Ok(None);
    };
    match store.migrate().await {
        Ok(_) => Ok(Some((store, None))),
        Err(e) if e.needs_operator() => Err(AppError::Usage(e.to_string())),
        Err(e) => Ok(Some((store, Some(e)))),
    }
}

async fn run(config_path: &Path, args: &RunArgs) -> Result<u8, AppError> {
    let config = config::load(config_path)?;
    let selection = Selection {
        rules: args.rules.clone(),
        tags: args.tags.clone(),
        database: args.database.clone(),
    };
    let mut plan = Plan::select(&config, &selection).map_err(|e| AppError::Usage(e.to_string()))?;
    if let Some(max_rows) = args.max_rows {
        override_max_rows(&mut plan, &args.rules, max_rows)?;
    }
    if args.due && config.audit.is_none() {
        return Err(AppError::Usage(format!(
            "`run --due` needs the audit history to know when each rule last ran, and {} has no `audit:` section \
             (add `audit: {{ database: <name> }}`, naming one of its databases); nothing was run",
            config.path.display()
        )));
    }
    let audit = match open_audit(&config).await? {
        Some((_, Some(e))) if args.due => {
            return Err(AppError::Other(anyhow::Error::new(e).context(
                "`run --due` cannot tell which rules are due without the audit database; nothing was run",
            )));
        }
        Some((store, Some(e))) => {
            warn!(error = %e, "the audit database is not usable; the rules run anyway and recording is retried after them");
            Some(store)
        }
        Some((store, None)) => Some(store),
        None => None,
    };
    let next_due = match &audit {
        Some(store) if args.due => select_due(&mut plan, store).await?,
        _ => None,
    };
    let cancel = CancellationToken::new();
    cancel_on_signal(&cancel);
    let options = RunOptions {
        dry_run: args.dry_run,
        jobs: usize::from(args.jobs),
    };
    let mut records = run_plan(&plan, &options, &cancel).await;
    let audit_error = notify::claimed::after_run(
        &config,
        audit.as_ref(),
        &mut records,
        args.no_notify,
        &cancel,
    )
    .await;
    let mut status = exit_status(&records);
    if audit_error.is_some() {
        status = exit::RULE_FAILED;
    }
    if let Some(path) = &args.metrics_file
        && let Err(e) = write_metrics_file(path, &config, audit.as_ref(), &records, status).await
    {
        tracing::error!(error = %format!("{e:#}"), "the metrics file was not written");
        status = exit::RULE_FAILED;
    }
    print_stdout(&render(
        args,
        &records,
        status,
        audit_error.as_deref(),
        next_due.as_ref(),
    )?)?;
    Ok(status)
}

/// What the report of a `run --due` that found nothing due says.
struct NothingDue {
    /// The pair that comes due first, if any schedule ticks again.
    next: Option<crate::due::NextDue>,
    now: chrono::DateTime<chrono::Utc>,
}

impl NothingDue {
    /// The text report's last line.
    fn sentence(&self) -> String {
        self.next.as_ref().map_or_else(
            || "nothing is due, and no selected rule has a schedule that ticks again".to_owned(),
            |next| next.describe(self.now),
        )
    }
}

/// `run --due`: keeps the plan's targets that are due now. When none is,
/// returns what the report says about when the next one is.
async fn select_due(
    plan: &mut Plan,
    store: &audit::AuditStore,
) -> Result<Option<NothingDue>, AppError> {
    let all = plan.targets.len();
    let now = chrono::Utc::now();
    let targets = std::mem::take(&mut plan.targets);
    let (due, next) = crate::due::select(targets, store, now).await.map_err(|e| {
        AppError::Other(
            anyhow::Error::new(e).context("`run --due` cannot read the last runs; nothing was run"),
        )
    })?;
    plan.targets = due;
    info!(due = plan.targets.len(), of = all, "rules due now");
    if !plan.targets.is_empty() {
        return Ok(None);
    }
    Ok(Some(NothingDue { next, now }))
}

/// The report of `run` in the requested format, with the audit failure, if
/// any, at its end (text) or in `audit_error` (JSON), and when the next rule
/// is due after an empty `run --due` (a last line, or `next_due`).
fn render(
    args: &RunArgs,
    records: &[RunRecord],
    status: u8,
    audit_error: Option<&str>,
    nothing_due: Option<&NothingDue>,
) -> Result<String, AppError> {
    Ok(match args.output {
        OutputFormat::Text => {
            let mut text = report::text(&commands::connect::grouped(records), args.dry_run);
            if let Some(nothing_due) = nothing_due {
                text.push_str(&format!("{}\n", nothing_due.sentence()));
            }
            if let Some(e) = audit_error {
                text.push_str(&format!("audit: not recorded: {e}\n"));
            }
            text
        }
        OutputFormat::Json => {
            let mut json = report::json_with(
                records,
                args.dry_run,
                status,
                audit_error,
                nothing_due.and_then(|n| n.next.as_ref()),
            )
            .map_err(|e| {
                AppError::Other(anyhow::Error::new(e).context("cannot render the JSON report"))
            })?;
            json.push('\n');
            json
        }
    })
}

/// `run RULE... --max-rows N`: a one-off guard for the rules named on the
/// command line (clearing a known backlog without editing YAML). Refused
/// without rule names, so it can never loosen every rule at once.
fn override_max_rows(plan: &mut Plan, named: &[String], max_rows: u64) -> Result<(), AppError> {
    if named.is_empty() {
        return Err(AppError::Usage(
            "--max-rows applies only to rules named on the command line \
             (e.g. `dbjanitor run myapp.stuck-jobs --max-rows 400 --dry-run`); nothing was run"
                .to_owned(),
        ));
    }
    for target in &mut plan.targets {
        if named.contains(&target.rule.name) && target.rule.max_rows != max_rows {
            warn!(
                rule = %target.rule.name,
                database = %target.database.name,
                rule_max_rows = target.rule.max_rows,
                max_rows,
                "--max-rows: this run uses a different max_rows than the rule file"
            );
            let mut rule = (*target.rule).clone();
            rule.max_rows = max_rows;
            target.rule = std::sync::Arc::new(rule);
        }
    }
    Ok(())
}

/// `--metrics-file`: this run's pairs, plus, when the audit table is
/// available, the last recorded run of every other enabled pair, so that a
/// `--due` run that ran nothing does not make the other rules' series vanish.
/// Dry runs add no pair series of their own (README "Metrics for timers").
async fn write_metrics_file(
    path: &Path,
    config: &Config,
    audit: Option<&AuditStore>,
    records: &[RunRecord],
    status: u8,
) -> anyhow::Result<()> {
    let mut pairs: BTreeMap<PairLabels, PairState> = BTreeMap::new();
    if let Some(store) = audit {
        let all = Plan::select(config, &Selection::default()).unwrap_or_default();
        let keys: Vec<(String, String)> = all
            .targets
            .iter()
            .map(|t| (t.rule.name.clone(), t.database.name.clone()))
            .collect();
        match store.last_runs(&keys).await {
            Ok(lasts) => {
                for ((rule, database), last) in keys.iter().zip(lasts) {
                    if let Some(last) = last {
                        pairs.insert(PairLabels::of(rule, database), last);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "metrics file: the audit table is not readable; only this run's rules are written");
            }
        }
    }
    // A dry run changed nothing: its records never replace the real state's
    // series (success, failure, counts), which come from the audit table.
    for record in records.iter().filter(|r| !r.dry_run) {
        let key = PairLabels::of(&record.rule, &record.database);
        let mut state = PairState::from(record);
        if state.last_success_at.is_none() {
            state.last_success_at = pairs.get(&key).and_then(|p| p.last_success_at);
        }
        pairs.insert(key, state);
    }
    let text = metrics::textfile(&pairs, records.len(), status, chrono::Utc::now());
    let target = path.to_path_buf();
    tokio::task::spawn_blocking(move || metrics::write_atomically(&target, &text))
        .await
        .map_err(anyhow::Error::new)?
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot write {}", path.display())))
}

async fn daemon(config_path: &Path, args: &DaemonArgs) -> Result<u8, AppError> {
    let mut config = config::load(config_path)?;
    if let Some(jobs) = args.jobs {
        config.daemon.jobs = usize::from(jobs);
    }
    let history = match open_audit(&config).await? {
        Some((store, problem)) => {
            if let Some(e) = problem {
                warn!(error = %e, "the audit database is not usable yet; runs are recorded once it is");
            }
            RunHistory::Audit(store)
        }
        None => RunHistory::Memory(MemoryHistory::default()),
    };
    crate::daemon::run(&config, history, args.listen).await?;
    Ok(exit::SUCCESS)
}

async fn check(config_path: &Path, args: &CheckArgs) -> Result<u8, AppError> {
    let config = config::load(config_path)?;
    let mut out = format!(
        "{}: ok: {}, {}, {}\n",
        config.path.display(),
        crate::report::counted(config.rules.len() as u64, "rule"),
        crate::report::counted(config.databases.len() as u64, "database"),
        crate::report::counted(config.notifiers.len() as u64, "notifier")
    );
    // Every rule on every database it names, enabled or not, unless narrowed.
    let targets: Vec<Target> = crate::check::select(&config, &args.rules, args.database.as_deref())
        .map_err(|e| AppError::Usage(e.to_string()))?;
    if !args.connect {
        print_stdout(&out)?;
        return Ok(exit::SUCCESS);
    }
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
        "{}: {} ok, {invalid} invalid, {unreachable} unreachable\n",
        crate::report::counted(targets.len() as u64, "pair"),
        targets.len() - invalid - unreachable
    ));
    for replica in crate::check::check_replicas(&targets).await {
        if replica.lag.is_err() {
            unreachable += 1;
        }
        out.push_str(&replica.line());
    }
    match check_audit(&config).await {
        AuditCheck::None => {}
        AuditCheck::Ok(line) => out.push_str(&line),
        AuditCheck::Unreachable(line) => {
            unreachable += 1;
            out.push_str(&line);
        }
        AuditCheck::Refused(line) => {
            invalid += 1;
            out.push_str(&line);
        }
    }
    print_stdout(&out)?;
    Ok(if invalid > 0 {
        exit::USAGE
    } else if unreachable > 0 {
        exit::RULE_FAILED
    } else {
        exit::SUCCESS
    })
}

/// What `check --connect` found about the audit database.
enum AuditCheck {
    /// No `audit:` section.
    None,
    /// Reachable, with a schema this binary can use (line for the output).
    Ok(String),
    /// Not reachable within `audit.timeout`: every `run` would exit 1.
    Unreachable(String),
    /// A schema this binary must not touch: `run` would exit 2.
    Refused(String),
}

/// `check --connect` on the audit database: connect and read the schema
/// version, changing nothing.
async fn check_audit(config: &Config) -> AuditCheck {
    let Some(store) = AuditStore::from_config(config) else {
        return AuditCheck::None;
    };
    let name = store.database();
    match store.probe().await {
        Ok(version) if version > audit::SCHEMA_VERSION => AuditCheck::Refused(format!(
            "audit database {name}: {}\n",
            AuditError::SchemaTooNew {
                found: version,
                known: audit::SCHEMA_VERSION,
            }
        )),
        Ok(0) => AuditCheck::Ok(format!(
            "audit database {name}: ok (no schema yet: created by the first run)\n"
        )),
        Ok(version) if version < audit::SCHEMA_VERSION => AuditCheck::Ok(format!(
            "audit database {name}: ok (schema version {version}: upgraded to {} by the next run)\n",
            audit::SCHEMA_VERSION
        )),
        Ok(version) => AuditCheck::Ok(format!(
            "audit database {name}: ok (schema version {version})\n"
        )),
        Err(e) => AuditCheck::Unreachable(format!(
            "audit database {name}: unreachable: {e}: runs could not be recorded, `run` would exit 1 and `run --due` would run nothing\n"
        )),
    }
}
