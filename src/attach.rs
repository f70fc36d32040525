//! `pgha-attach`: attach a node in pgpool-II only once it is proven a
//! healthy standby of the current primary: in recovery, on the primary's
//! timeline, streaming from it, replay lag within `[follow] max_lag`.
//! Otherwise it refuses, changes nothing and says why and what to run
//! (`pgha-follow NODE` for a standby that follows the wrong server,
//! `pgha-attach --rejoin NODE` for a diverged one or an old primary).
//!
//! `--rejoin` makes any node but the current primary a standby of it
//! (stop, `pg_rewind`, configure, start, verify; `pg_basebackup` only
//! where `[follow] rebuild` allows), then attaches it: the same
//! observation, decision ([`crate::follow::decide`]) and steps as
//! `pgha-follow`, in [`Mode::Rejoin`].

use crate::cli::AttachArgs;
use crate::cluster::Topology;
use crate::error::Result;
use crate::follow::{self, Mode};
use crate::report::Summary;

/// Run `pgha-attach` as the arguments say.
pub async fn run(args: &AttachArgs) -> Result<Summary> {
    let topo = Topology::load(args.common.config.as_deref())?;
    let mode = if args.rejoin {
        Mode::Rejoin
    } else {
        Mode::Attach
    };
    let hints = follow::Hints {
        discard_wal: args.discard_wal,
        ..follow::Hints::default()
    };
    follow::run_mode(&topo, args.node, mode, &hints, &args.common, "attach").await
}
