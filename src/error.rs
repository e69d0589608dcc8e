//! The errors that stop a command early, each with its exit status, and the
//! one place they are rendered (as just's `error.rs` does).
//!
//! Every variant knows its exit status ([`AppError::status`]) and its text
//! ([`std::fmt::Display`], which carries the `error: ` prefix where one
//! belongs); `app::main` prints that text once, to stderr. Call sites build a
//! variant and never format the prefix themselves.

use crate::config::ConfigErrors;
use crate::exit;

/// Why a command stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// The config or a rule file is wrong: every problem with file, line and
    /// column, then how many (exit 2, nothing ran).
    #[error("{0}\n{count} in the configuration; nothing was run", count = problems(.0))]
    Config(ConfigErrors),
    /// Bad arguments, or a state a person must fix before anything may run
    /// (exit 2, nothing ran, nothing changed).
    #[error("error: {0}")]
    Usage(String),
    /// Anything else that stops the command: exit 1. The whole context chain
    /// is printed.
    #[error("error: {0:#}")]
    Other(#[from] anyhow::Error),
}

impl AppError {
    /// The process exit status for this error (see [`crate::exit`]).
    #[must_use]
    pub(crate) fn status(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Usage(_) => exit::USAGE,
            AppError::Other(_) => exit::RULE_FAILED,
        }
    }
}

impl From<ConfigErrors> for AppError {
    fn from(errors: ConfigErrors) -> Self {
        AppError::Config(errors)
    }
}

fn problems(errors: &ConfigErrors) -> String {
    crate::report::counted(errors.0.len() as u64, "problem")
}

#[cfg(test)]
mod tests {
    use super::AppError;
    use crate::config::{ConfigError, ConfigErrors};
    use crate::exit;

    /// Each variant's text and status, the one place both are decided.
    #[test]
    fn each_variant_renders_once_with_its_status() {
        let config = AppError::from(ConfigErrors(vec![
            ConfigError::file(std::path::Path::new("a.yaml"), "one"),
            ConfigError::file(std::path::Path::new("b.yaml"), "two"),
        ]));
        assert_eq!(
            config.to_string(),
            "a.yaml:1:1: one\nb.yaml:1:1: two\n2 problems in the configuration; nothing was run"
        );
        assert_eq!(config.status(), exit::USAGE);
        let usage = AppError::Usage("no such rule".to_owned());
        assert_eq!(usage.to_string(), "error: no such rule");
        assert_eq!(usage.status(), exit::USAGE);
        let other = AppError::from(anyhow::anyhow!("refused").context("cannot connect"));
        assert_eq!(other.to_string(), "error: cannot connect: refused");
        assert_eq!(other.status(), exit::RULE_FAILED);
    }
}
