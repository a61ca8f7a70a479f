//! The `ember` command: a thin adapter from command-line flags or a config file to the
//! `ember` library.

mod cli;
mod logger;
mod terminal;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
