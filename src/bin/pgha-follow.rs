//! `pgha-follow`: see `pgha-follow --help` and [`pgha::follow`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, FollowArgs};

fn main() -> ExitCode {
    let args = FollowArgs::parse();
    cli::init_logging("pgha-follow", args.common.verbose);
    let res = cli::runtime().block_on(pgha::follow::run(&args));
    ExitCode::from(pgha::report::finish("pgha-follow", args.common.json, res) as u8)
}
