//! Logs go to stderr (the report owns stdout), filtered by `RUST_LOG`.
//!
//! The default filter is `info`. Driver crates log each statement at debug
//! level; statements never contain passwords (URLs are never logged, and the
//! config's secrets print redacted), so `RUST_LOG=debug` is safe to use.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second initialisation (tests) is not an error worth reporting.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
