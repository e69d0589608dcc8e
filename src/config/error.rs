//! Configuration errors: each names a file, a line and a column.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, MessageFormatter, UserMessageFormatter};

/// A position in a config or rule file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl SourceLocation {
    /// A location from a YAML position; unknown positions become 1:1.
    #[must_use]
    pub fn new(file: &Path, location: Location) -> Self {
        Self {
            file: file.to_path_buf(),
            line: location.line().max(1),
            column: location.column().max(1),
        }
    }

    /// The start of a file, for problems with the file as a whole.
    #[must_use]
    pub fn start_of(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// Where the problem is.
    pub location: SourceLocation,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error at a YAML position.
    #[must_use]
    pub fn at(file: &Path, location: Location, message: impl Into<String>) -> Self {
        Self {
            location: SourceLocation::new(file, location),
            message: message.into(),
        }
    }

    /// An error about a file as a whole (unreadable, empty).
    #[must_use]
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            location: SourceLocation::start_of(file),
            message: message.into(),
        }
    }

    /// Converts a YAML parse or shape error.
    #[must_use]
    pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> Self {
        let inner = err.without_snippet();
        let message = UserMessageFormatter
            .format_message(inner)
            .escape_debug()
            .to_string();
        Self {
            location: SourceLocation::new(file, err.location().unwrap_or(Location::UNKNOWN)),
            message,
        }
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
