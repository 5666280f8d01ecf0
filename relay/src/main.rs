//! The `blindrelay` binary. Everything but the exit status lives in `blindrelay::cli`,
//! where it can be tested without a process.

use blindrelay::cli::{self, Cli};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::init_tracing(&cli.log).and_then(|()| cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Some messages (TOML snippets) end in a newline of their own.
            eprintln!("blindrelay: {}", e.to_string().trim_end());
            ExitCode::from(e.exit_code())
        }
    }
}
