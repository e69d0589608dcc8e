//! The command line (README "Command line"), defined with clap's derive API.
//!
//! Usage errors exit with status 2, like configuration errors: nothing ran.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A scheduled database janitor: detect rot with SQL, fix it under a lock,
/// with dry-run, row-count guards and verification.
#[derive(Debug, Parser)]
#[command(name = "dbjanitor", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "DBJANITOR_CONFIG",
        default_value = "dbjanitor.yaml"
    )]
    pub config: PathBuf,

    /// Log format on stderr: text for a terminal, json for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Also write logs to daily rolling files in this folder (`dbjanitor.log.YYYY-MM-DD`).
    #[arg(long, global = true, value_name = "DIR", env = "DBJANITOR_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run rules now (all enabled rules, or those selected).
    #[command(
        after_help = "Examples:\n  dbjanitor run --dry-run                      # every enabled rule: run the fixes, roll them back\n  dbjanitor run myapp.stuck-jobs               # one rule, for real\n  dbjanitor run myapp.stuck-jobs --max-rows 400 --dry-run   # a known backlog, once\n  dbjanitor run --due --metrics-file /var/lib/node_exporter/dbjanitor.prom   # from a timer"
    )]
    Run(RunArgs),
    /// Validate the config and rules; with --connect also prepare their SQL.
    #[command(
        after_help = "Examples:\n  dbjanitor check\n  dbjanitor check --connect    # the servers parse every query; nothing runs\n  dbjanitor check --connect myapp.stuck-jobs --database app   # one rule on one database"
    )]
    Check(CheckArgs),
    /// List rules, databases, schedules and next runs.
    #[command(
        after_help = "Examples:\n  dbjanitor --config /etc/dbjanitor/dbjanitor.yaml list\n  dbjanitor list myapp.stuck-jobs --output json | jq '.rules[0].next_run'"
    )]
    List(ListArgs),
    /// Run every enabled rule on its own schedule until SIGTERM/SIGINT; serve /healthz and /metrics.
    #[command(
        after_help = "Examples:\n  dbjanitor daemon --listen 127.0.0.1:9187\n  dbjanitor daemon --listen localhost:9187"
    )]
    Daemon(DaemonArgs),
    /// Run the whole job on an embedded SQLite database with two seeded incidents.
    #[command(
        after_help = "Example:\n  dbjanitor demo --path /tmp/dbj-demo    # then: sqlite3 /tmp/dbj-demo/app.db"
    )]
    Demo(DemoArgs),
    /// Write a commented starter config and one example rule (never overwrites).
    #[command(
        after_help = "Example:\n  dbjanitor init ops/janitor && dbjanitor --config ops/janitor/dbjanitor.yaml check"
    )]
    Init(InitArgs),
    /// Send a clearly marked test message through each notifier (or those named).
    #[command(
        after_help = "Example:\n  dbjanitor notify-test ops    # exit 0 when every notifier took the message"
    )]
    NotifyTest(NotifyTestArgs),
    /// Take back a run of a rule with `backup:`: restore the rows it changed, unless they changed since.
    #[command(
        after_help = "Examples:\n  dbjanitor undo 019a5a64-8c3e-7d1a-9a4e-0b6f1c2d3e4f --dry-run   # what would be restored\n  dbjanitor undo 019a5a64-8c3e-7d1a-9a4e-0b6f1c2d3e4f --only-unchanged\n\nExit status: 0 restored (or would restore), 3 rows changed since the run (nothing restored), 1 an error, 2 no such run."
    )]
    Undo(UndoArgs),
    /// Show the before and after of every row a run of a rule with `backup:` changed.
    #[command(
        after_help = "Example:\n  dbjanitor changes 019a5a64-8c3e-7d1a-9a4e-0b6f1c2d3e4f --output json"
    )]
    Changes(ChangesArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  dbjanitor completions bash > /etc/bash_completion.d/dbjanitor"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  dbjanitor man > /usr/local/share/man/man1/dbjanitor.1")]
    Man,
    /// Print the version and the audit schema version this binary knows.
    #[command(after_help = "Example:\n  dbjanitor version")]
    Version,
    /// Show the audit table, newest first: outcome, counts, duration and message of each run.
    #[command(
        after_help = "Examples:\n  dbjanitor history                               # the newest 50 runs of every rule\n  dbjanitor history myapp.stuck-jobs --since 24h\n  dbjanitor history --database app --output json | jq '.runs[0]'"
    )]
    History(HistoryArgs),
    /// Show a rule as it will run: every setting with where it came from, and the SQL per database.
    #[command(
        after_help = "Example:\n  dbjanitor show myapp.stuck-jobs    # timeout 60s from defaults (dbjanitor.yaml:14), ..."
    )]
    Show(ShowArgs),
}

/// `dbjanitor show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The rule's name.
    pub rule: String,
}

/// `dbjanitor history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this rule (its history stays readable after the rule is deleted).
    pub rule: Option<String>,

    /// Only this database (its name in the config).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,

    /// Only runs that started within this long (24h, 7d, 30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,

    /// At most this many runs, the newest.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `--since`: a duration in the README's words (`24h`, `7d`, `90m`).
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 24h, 7d or 30m ({e})"))
}

/// `dbjanitor undo`.
#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The run id (from the report, a notification, the audit table or `history`).
    pub run_id: String,

    /// Do everything inside the transaction, then roll it back: show what would be restored.
    #[arg(long)]
    pub dry_run: bool,

    /// Restore the rows that did not change since the run, and list the others
    /// (without it, one changed row stops the whole undo).
    #[arg(long)]
    pub only_unchanged: bool,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `dbjanitor changes`.
#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// The run id.
    pub run_id: String,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `dbjanitor init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder for dbjanitor.yaml and rules/ (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// `dbjanitor notify-test`.
#[derive(Debug, Args)]
pub struct NotifyTestArgs {
    /// Notifier names from the config (default: every notifier).
    pub notifiers: Vec<String>,
}

/// `dbjanitor completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Shells `completions` can write for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
    /// elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

/// `dbjanitor run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Rule names to run (default: every enabled rule). Named rules run even if disabled.
    pub rules: Vec<String>,

    /// Only rules with this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// Only this database.
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,

    /// Run each fix inside a transaction and roll it back: show exactly what would change.
    #[arg(long)]
    pub dry_run: bool,

    /// How many (rule, database) pairs run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Only the rules whose schedule ticked since their last run recorded in the
    /// audit database (each at most once); for a timer or CronJob firing every minute.
    #[arg(long)]
    pub due: bool,

    /// Write Prometheus metrics of this run to PATH (textfile-collector format, atomically).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Send no notification for this run (a preview from a laptop, a manual re-run).
    #[arg(long)]
    pub no_notify: bool,

    /// For this run only, replace `max_rows` of the rules named on the command
    /// line (a known backlog on first deploy); refused without rule names.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows: Option<u64>,
}

/// `dbjanitor daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Serve /healthz, /livez and /metrics on this address: HOST:PORT, the
    /// host an IP address or a name (127.0.0.1:9187, localhost:9187, 0.0.0.0:9187).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen)]
    pub listen: Option<std::net::SocketAddr>,

    /// At most this many runs at once (default: `daemon.jobs` of the config, else 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
}

/// `dbjanitor check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also connect to every database and prepare (not run) every detect and fix.
    #[arg(long)]
    pub connect: bool,

    /// Rule names to check on their databases with --connect (default: every
    /// rule, disabled ones included). The whole config is validated either way.
    pub rules: Vec<String>,

    /// With --connect, only this database.
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
}

/// `dbjanitor list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only these rules (default: every rule).
    pub rules: Vec<String>,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `dbjanitor demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo database, config and rules (default: a new temporary folder, kept).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Text,
    /// One JSON document: `{"rules": [...], "exit_code": N}`.
    Json,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--listen`: an address, or a host name resolved once at start (issue
/// 12.7: `localhost:9187` was refused); the first IPv4 address it resolves
/// to, else the first address.
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<std::net::SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| {
            format!("{text:?} is not HOST:PORT (e.g. 127.0.0.1:9187 or localhost:9187): {e}")
        })?
        .collect();
    // IPv4 first: `localhost` then means 127.0.0.1, which every probe reaches.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}
