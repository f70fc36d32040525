//! `pgha-attach`: see `pgha-attach --help` and [`pgha::attach`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, AttachArgs};

fn main() -> ExitCode {
    let args = AttachArgs::parse();
    cli::init_logging("pgha-attach", args.common.verbose);
    let res = cli::runtime().block_on(pgha::attach::run(&args));
    ExitCode::from(pgha::report::finish("pgha-attach", args.common.json, res) as u8)
}
