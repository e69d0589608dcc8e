//! The small commands around the main job: `init`, `completions`, `man`,
//! `version`, `notify-test`, `list`, `show`, `history`, `changes` and `undo`.
//! Each takes what it needs from the command line (and the loaded config) and
//! returns an exit status. `history` reads the audit table, `changes` the
//! images table; only `undo` writes, under the rule's lock.

pub(crate) mod changes;
pub(crate) mod connect;
pub(crate) mod history;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod notify_test;
pub(crate) mod show;
pub(crate) mod undo;

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// `dbjanitor completions SHELL`: the completion script on stdout.
pub(crate) fn completions(shell: Shell, out: &mut impl Write) {
    let mut command = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::Elvish => clap_complete::Shell::Elvish,
        Shell::Powershell => clap_complete::Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut command, "dbjanitor", out);
}

/// `dbjanitor man`: the man page (roff) on stdout.
pub(crate) fn man(out: &mut impl Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// `dbjanitor version`: the version, and what it can read and write, for bug
/// reports and for checking a rollout (the audit schema it knows).
#[must_use]
pub(crate) fn version() -> String {
    format!(
        "dbjanitor {}\naudit schema: up to version {}\nengines: postgres, mysql (MySQL and MariaDB), sqlite\n",
        env!("CARGO_PKG_VERSION"),
        crate::audit::SCHEMA_VERSION,
    )
}
