//! `dbjanitor demo`: the whole job on an embedded SQLite database.
//!
//! It writes a config and the real rule files of the pack (compiled into the
//! binary from `rules/`) into a folder, seeds two SQLite databases with small
//! replicas of two incidents — several active scheduler rows for one host
//! (Dragonfly2), several pending HA work items for one VM (CloudStack) — and
//! then runs them through the real loader and engine: a dry run, the fix, and
//! a clean re-run. The folder is kept so the operator can look inside.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::engine::{RunOptions, run_plan};
use crate::error::AppError;
use crate::exit;
use crate::outcome::{Outcome, RunRecord};
use crate::plan::{Plan, Selection};
use crate::report::{self, print_stdout};

const RULES: [(&str, &str); 2] = [
    (
        "rules/dragonfly/duplicate-active-schedulers.yaml",
        include_str!("../../rules/dragonfly/duplicate-active-schedulers.yaml"),
    ),
    (
        "rules/cloudstack/duplicate-pending-ha-work.yaml",
        include_str!("../../rules/cloudstack/duplicate-pending-ha-work.yaml"),
    ),
];

const SEEDS: [(&str, &str); 2] = [
    ("dragonfly.db", include_str!("dragonfly.sql")),
    ("cloudstack.db", include_str!("cloudstack.sql")),
];

/// Runs the demo in `path` (or a new temporary folder) and returns the exit status.
pub(crate) async fn run(path: Option<&Path>) -> Result<u8, AppError> {
    let dir = prepare_folder(path)?;
    let config_path = write_files(&dir).await?;
    print_stdout(&format!("dbjanitor demo in {}\n\n", dir.display()))?;
    let config = config::load(&config_path)?;
    let plan =
        Plan::select(&config, &Selection::default()).map_err(|e| AppError::Usage(e.to_string()))?;
    let cancel = CancellationToken::new();
    let mut all_as_expected = true;
    for (title, dry_run, expected) in [
        (
            "1. dry run: the fix runs inside a transaction and is rolled back",
            true,
            Outcome::WouldFix,
        ),
        ("2. the fix, verified and committed", false, Outcome::Fixed),
        ("3. the next run finds nothing", false, Outcome::Clean),
    ] {
        let records = run_plan(&plan, &RunOptions { dry_run, jobs: 2 }, &cancel).await;
        print_stdout(&format!(
            "== {title}\n{}\n",
            report::text(&records, dry_run)
        ))?;
        all_as_expected &= outcomes_are(&records, expected);
    }
    print_stdout(&format!(
        "Look inside: sqlite3 {} 'SELECT id, host_name, ip, state FROM scheduler'\nConfig and rules: {}\n",
        dir.join("dragonfly.db").display(),
        config_path.display()
    ))?;
    Ok(if all_as_expected {
        exit::SUCCESS
    } else {
        exit::RULE_FAILED
    })
}

fn outcomes_are(records: &[RunRecord], expected: Outcome) -> bool {
    !records.is_empty() && records.iter().all(|r| r.outcome == expected)
}

fn prepare_folder(path: Option<&Path>) -> Result<PathBuf, AppError> {
    let dir = match path {
        Some(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create the demo folder {}", path.display()))?;
            path.to_path_buf()
        }
        None => tempfile::Builder::new()
            .prefix("dbjanitor-demo-")
            .tempdir()
            .context("cannot create a temporary folder")?
            .keep(),
    };
    for (name, _) in SEEDS {
        let db = dir.join(name);
        if db.exists() {
            return Err(AppError::Usage(format!(
                "{} already exists; the demo needs a fresh folder (remove it or pick another --path)",
                db.display()
            )));
        }
    }
    Ok(std::path::absolute(&dir).unwrap_or(dir))
}

async fn write_files(dir: &Path) -> Result<PathBuf, AppError> {
    for (relative, text) in RULES {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (file, seed) in SEEDS {
        let url = sqlite_url(&dir.join(file));
        let options = SqliteConnectOptions::from_str(&url)
            .map(|o| o.create_if_missing(true))
            .with_context(|| format!("bad demo database path {url}"))?;
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("cannot create {url}"))?;
        conn.execute(sqlx::raw_sql(seed))
            .await
            .with_context(|| format!("cannot seed {url}"))?;
        conn.close()
            .await
            .context("cannot close the demo database")?;
    }
    let config = format!(
        "# Written by `dbjanitor demo`.\ndatabases:\n  dragonfly:\n    url: \"{}\"\n  cloudstack:\n    url: \"{}\"\nrules: [rules/dragonfly, rules/cloudstack]\ndefaults: {{ timezone: UTC, timeout: 30s }}\n",
        sqlite_url(&dir.join("dragonfly.db")),
        sqlite_url(&dir.join("cloudstack.db")),
    );
    let config_path = dir.join("dbjanitor.yaml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(config_path)
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}
