//! `dbjanitor init [DIR]`: a commented starter config and one example rule
//! that `check` accepts, so a new user starts from a file that works rather
//! than from a blank page. Existing files are never overwritten.

use std::path::{Path, PathBuf};

/// The starter config, written to `DIR/dbjanitor.yaml`.
pub(crate) const CONFIG: &str = r#"# dbjanitor configuration (README: "Config reference").
#
# Next steps:
#   1. Point `databases.app.url` at your database (or export APP_DB_URL).
#   2. Edit rules/example/stuck-jobs.yaml, or add your own rules under rules/.
#   3. dbjanitor check --connect     # the server parses every query; nothing runs
#      dbjanitor run --dry-run       # runs the fixes and rolls them back
#      dbjanitor run                 # for real
#      dbjanitor history             # what ran, found and changed, newest first

databases:
  app:
    # postgres://user:pass@host:5432/db, mysql://user:pass@host:3306/db or
    # sqlite://path/to/file.db. ${VAR} is read from the environment, so the
    # password stays out of this file; url_file: reads it from a mounted secret.
    url: ${APP_DB_URL}

# Rule files or folders (searched recursively for *.yaml), relative to this file.
rules: [rules]

defaults:
  timezone: UTC        # cron fields are wall-clock time here
  timeout: 60s         # per statement, server side and client side

# Notifications (README "Notifications"): uncomment and name them in
# defaults.notify (or a rule's notify) to be told what was found and fixed.
# notifiers:
#   ops:
#     webhook: { url: "${OPS_WEBHOOK}", format: slack }
#   dba:
#     email: { smtp: "smtp://mail.example.org:587", from: janitor@example.org, to: [dba@example.org] }

# Run history (README "Audit history"): one row per run in the table
# dbjanitor_runs, created by the first run. `dbjanitor history` reads it;
# `run --due` and the daemon's quiet repeats need it. It may be any of the
# databases above; remove these lines to keep no history.
audit: { database: app, keep: 30d }
"#;

/// The example rule, written to `DIR/rules/example/stuck-jobs.yaml`.
pub(crate) const RULE: &str = r#"# An example rule (README "Your first rule, end to end"): jobs left
# "running" by a worker that died. Adapt the table and columns to yours.
name: example.stuck-jobs
description: |
  Jobs stay "running" when their worker dies without a heartbeat.
  Marks jobs whose heartbeat is older than 15 minutes as failed.
database: app
schedule: "*/5 * * * *"
enabled: false          # runs only when named: dbjanitor run example.stuck-jobs --dry-run
detect:
  postgres: |
    SELECT id, worker, heartbeat_at FROM job
    WHERE state = 'running' AND heartbeat_at < now() - interval '15 minutes'
  mysql: |
    SELECT id, worker, heartbeat_at FROM job
    WHERE state = 'running' AND heartbeat_at < NOW() - INTERVAL 15 MINUTE
  sqlite: |
    SELECT id, worker, heartbeat_at FROM job
    WHERE state = 'running' AND heartbeat_at < datetime('now', '-15 minutes')
fix:
  postgres: |
    UPDATE job SET state = 'failed'
    WHERE state = 'running' AND heartbeat_at < now() - interval '15 minutes'
  mysql: |
    UPDATE job SET state = 'failed'
    WHERE state = 'running' AND heartbeat_at < NOW() - INTERVAL 15 MINUTE
  sqlite: |
    UPDATE job SET state = 'failed'
    WHERE state = 'running' AND heartbeat_at < datetime('now', '-15 minutes')
max_rows: 50            # more than this is not "a few dead workers": stop and tell me
"#;

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    /// A file it would write is already there.
    #[error(
        "{0} already exists; `dbjanitor init` never overwrites a file (choose another folder, or move it away); nothing was written"
    )]
    Exists(PathBuf),
    /// The file system refused.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Writes the starter files into `dir` (created if missing) and returns their
/// paths. Checks every path first, so it writes all or nothing.
pub(crate) fn write(dir: &Path) -> Result<Vec<PathBuf>, InitError> {
    let files = [
        (dir.join("dbjanitor.yaml"), CONFIG),
        (dir.join("rules/example/stuck-jobs.yaml"), RULE),
    ];
    if let Some((path, _)) = files.iter().find(|(path, _)| path.exists()) {
        return Err(InitError::Exists(path.clone()));
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| InitError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| InitError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}
