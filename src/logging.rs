//! Logs go to stderr (the report owns stdout), filtered by `RUST_LOG`, and,
//! with `--log-dir`, also to daily rolling files.
//!
//! The default filter is `info` (`warn` for `demo`). Driver crates log each statement at debug
//! level; statements never contain passwords (URLs are never logged, and the
//! config's secrets print redacted), so `RUST_LOG=debug` is safe to use.
//!
//! Files are written by `tracing-appender` on a background thread. Its
//! default writer *drops* lines when its buffer is full and loses whatever is
//! still buffered when the process ends; here it is built with
//! `lossy(false)` (a full buffer makes logging wait instead of dropping), and
//! [`init`] hands back the [`LogGuard`] that flushes the buffer when dropped.
//! The caller keeps it alive until `main` returns, so the last lines of a run
//! (its outcome, a shutdown) are on disk when the process exits.
//!
//! A line that cannot be written (a full disk) is said once on stderr, and
//! [`file_write_failed`] tells `main` to make the exit status 1.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::cli::LogFormat;

/// File name prefix of the rolling files: `dbjanitor.log.2026-11-22`.
pub(crate) const LOG_FILE_PREFIX: &str = "dbjanitor.log";

/// Daily files kept in `--log-dir`; older ones are deleted as days roll over.
pub(crate) const LOG_FILES_KEPT: usize = 31;

/// Flushes the log files when dropped: keep it alive until the process exits.
#[must_use = "dropping the guard stops writing the log files"]
pub(crate) struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// The log directory could not be used.
#[derive(Debug, thiserror::Error)]
#[error("--log-dir {dir}: {reason}")]
pub(crate) struct LogDirError {
    dir: String,
    reason: String,
}

/// Installs the global subscriber: stderr, plus daily files in `dir` if given.
/// Safe to call once per process (a second call leaves the first in place).
pub(crate) fn init(
    format: LogFormat,
    dir: Option<&Path>,
    default_filter: &str,
) -> Result<LogGuard, LogDirError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let Some(dir) = dir else {
        install(format, filter, std::io::stderr, true);
        return Ok(LogGuard { _file: None });
    };
    let error = |reason: String| LogDirError {
        dir: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| error(format!("cannot create it: {e}")))?;
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .max_log_files(LOG_FILES_KEPT)
        .build(dir)
        .map_err(|e| error(format!("cannot open a log file in it: {e}")))?;
    let (file, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("dbjanitor-log-writer")
        .finish(ReportingWriter {
            inner: appender,
            dir: dir.display().to_string(),
        });
    // ANSI colours would end up in the file as escape codes.
    install(format, filter, std::io::stderr.and(file), false);
    Ok(LogGuard { _file: Some(guard) })
}

/// Set once a line could not be written to the log files.
static FILE_WRITE_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether a line could not be written to `--log-dir` (a full disk, a
/// removed folder). `main` makes a one-shot command's exit status 1 then:
/// the README promises that lines are never lost, so losing some must not
/// pass as success.
#[must_use]
pub(crate) fn file_write_failed() -> bool {
    FILE_WRITE_FAILED.load(Ordering::SeqCst)
}

/// The log file writer, reporting its first failure on stderr.
///
/// tracing-appender's worker thread drops a write error without a word (its
/// source says "TODO: ... print to stderr"), so a full disk under `--log-dir`
/// used to leave an empty file and exit 0. This wrapper says so on stderr,
/// once per process, and sets the flag [`file_write_failed`] reads.
struct ReportingWriter<W> {
    inner: W,
    dir: String,
}

impl<W> ReportingWriter<W> {
    fn failed(&self, error: &std::io::Error) {
        if !FILE_WRITE_FAILED.swap(true, Ordering::SeqCst) {
            // Straight to stderr: logging about logging would loop back here.
            let _ = writeln!(
                std::io::stderr(),
                "error: --log-dir {}: cannot write the log file: {error}; \
                 log lines are being lost (said once; the exit status will be 1)",
                self.dir
            );
        }
    }
}

impl<W: Write> Write for ReportingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| self.failed(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|e| self.failed(e))
    }
}

fn install<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second initialisation (tests) is not an error worth reporting.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
