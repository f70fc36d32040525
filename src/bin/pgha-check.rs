//! `pgha-check`: see `pgha-check --help` and [`pgha::check`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, CheckArgs};

fn main() -> ExitCode {
    let args = CheckArgs::parse();
    cli::init_logging("pgha-check", args.common.verbose);
    let res = cli::runtime().block_on(pgha::check::run(&args));
    // pgha-check prints its own full report with --json.
    ExitCode::from(pgha::report::finish("pgha-check", false, res) as u8)
}
