//! The `stasisd` binary: parses arguments and runs [`stasisd::run`].
#![deny(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = stasisd::Args::parse();
    match stasisd::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stasisd: {e}");
            ExitCode::FAILURE
        }
    }
}
