//! `pgha-failover`: see `pgha-failover --help` and [`pgha::failover`].

use std::process::ExitCode;

use clap::Parser;
use pgha::cli::{self, FailoverArgs};

fn main() -> ExitCode {
    let args = FailoverArgs::parse();
    cli::init_logging("pgha-failover", args.common.verbose);
    let res = cli::runtime().block_on(pgha::failover::run(&args));
    // The detached phase reports under its own name: its line lands in
    // pgpool's log after the main run's own final line.
    let name = if args.settle {
        "pgha-failover (settle)"
    } else {
        "pgha-failover"
    };
    ExitCode::from(pgha::report::finish(name, args.common.json, res) as u8)
}
