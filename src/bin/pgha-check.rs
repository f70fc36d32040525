//! `pgha-check`: see `pgha-check --help` and [`pgha::check`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, CheckArgs};

fn main() -> ExitCode {
    let args = CheckArgs::parse();
    cli::init_logging("pgha-check", args.common.verbose);
    let res = cli::runtime().block_on(pgha::check::run(&args));
    ExitCode::from(pgha::report::finish("pgha-check", args.common.json, res) as u8)
}
