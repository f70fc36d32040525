//! `pgha-failover`: see `pgha-failover --help` and [`pgha::failover`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, FailoverArgs};

fn main() -> ExitCode {
    let args = FailoverArgs::parse();
    cli::init_logging("pgha-failover", args.common.verbose);
    let res = cli::runtime().block_on(pgha::failover::run(&args));
    ExitCode::from(pgha::report::finish("pgha-failover", args.common.json, res) as u8)
}
