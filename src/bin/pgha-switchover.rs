//! `pgha-switchover`: see `pgha-switchover --help` and [`pgha::switchover`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, SwitchoverArgs};

fn main() -> ExitCode {
    let args = SwitchoverArgs::parse();
    cli::init_logging("pgha-switchover", args.common.verbose);
    let res = cli::runtime().block_on(pgha::switchover::run(&args));
    ExitCode::from(pgha::report::finish("pgha-switchover", args.common.json, res) as u8)
}
