//! The `dbjanitor` binary: parse the command line and hand off to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dbjanitor::cli::Cli::parse();
    dbjanitor::app::main(cli)
}
