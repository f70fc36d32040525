//! `pgha-attach`: attach a node in pgpool-II only once it is proven a
//! healthy standby of the current primary: in recovery, on the primary's
//! timeline, streaming from it, replay lag within `[follow] max_lag`.
//! Otherwise it refuses, changes nothing and says why and what to run
//! (`pgha-follow NODE` for a standby that follows the wrong server,
//! `pgha-attach --rejoin NODE` for a diverged one or an old primary).
//!
//! `--rejoin` makes any node but the current primary a standby of it
//! (stop, `pg_rewind`, configure, start, verify; `pg_basebackup` only
//! where `[follow] rebuild` allows), then attaches it: the same engine
//! ([`crate::standby`]) and decision ([`crate::plan::standby::decide`]) as
//! `pgha-follow`, in [`Mode::Rejoin`].

use crate::cli::AttachArgs;
use crate::cluster::Topology;
use crate::error::Result;
use crate::plan::standby::Mode;
use crate::report::Summary;
use crate::standby::{self, Request};

/// Run `pgha-attach` as the arguments say.
pub async fn run(args: &AttachArgs) -> Result<Summary> {
    let topo = Topology::load(args.common.config.as_deref())?;
    let req = Request {
        node: topo.node(args.node)?.clone(),
        mode: if args.rejoin {
            Mode::Rejoin
        } else {
            Mode::Attach
        },
        new_primary: None,
        old_primary: None,
        discard_wal: args.discard_wal,
        dry_run: args.common.dry_run,
        command: "attach",
    };
    standby::run(&topo, &req).await
}
