//! The process exit statuses, defined once.
//!
//! Kubernetes Jobs and systemd units read these, so they are part of the
//! contract (README "Outcomes and exit status") and the README table is
//! written from this list.

use std::process::ExitCode;

/// Every rule ended clean, found, fixed, would_fix or skipped.
pub(crate) const SUCCESS: u8 = 0;
/// At least one rule failed (SQL or connection error, timeout, cancellation).
pub(crate) const RULE_FAILED: u8 = 1;
/// Configuration or usage error: nothing ran and no database was changed.
pub(crate) const USAGE: u8 = 2;
/// A guard tripped (and nothing failed): the fix was rolled back or not run.
pub(crate) const GUARD_TRIPPED: u8 = 3;

/// The statuses with their meaning, in the order the README lists them (a
/// unit test keeps the README's table in step with it).
#[cfg(test)]
const TABLE: [(u8, &str); 4] = [
    (
        SUCCESS,
        "every rule was clean, found, fixed, would_fix or skipped",
    ),
    (RULE_FAILED, "at least one rule failed"),
    (
        USAGE,
        "configuration or usage error; nothing ran, nothing changed",
    ),
    (GUARD_TRIPPED, "a guard tripped (and no rule failed)"),
];

/// Converts one of the constants above into a process exit code.
#[must_use]
pub(crate) fn code(status: u8) -> ExitCode {
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    /// The README's exit-status table is written from [`super::TABLE`].
    #[test]
    fn readme_table_matches() {
        let readme = include_str!("../README.md");
        for (status, meaning) in super::TABLE {
            let row = format!("| {status} | {meaning} |");
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }
}
