//! `pgha-follow`: make one node stream from the current primary, then
//! attach it in pgpool. What pgpool-II 4.x runs as `follow_primary_command`
//! after a primary failover, once per node it marked down (the failed old
//! primary and detached nodes included), one at a time, ignoring the exit
//! status:
//!
//! ```text
//! follow_primary_command = '/usr/bin/pgha-follow %d --new-primary %m --old-primary %P'
//! ```
//!
//! (`%d` the node, `%m` the new main node, which is the new primary, `%P`
//! the old primary.) It also runs by hand: `pgha-follow NODE` finds the
//! primary by looking (and by asking pgpool when two servers claim it).
//!
//! The work is [`crate::standby`]'s (observe, decide with
//! [`crate::plan::standby::decide`], act) in [`Mode::Follow`]: repoint a
//! standby that follows the wrong server, rewind one whose WAL diverged
//! (an old primary only with `[follow] rejoin_old_primary`), rebuild one
//! that cannot be rewound only with `[follow] rebuild`; skip a node that
//! is not running, unreachable or another cluster's server.

use crate::cli::FollowArgs;
use crate::cluster::Topology;
use crate::error::Result;
use crate::plan::standby::Mode;
use crate::report::Summary;
use crate::standby::{self, Request, pgpool_node};

/// Run `pgha-follow` as the arguments say.
pub async fn run(args: &FollowArgs) -> Result<Summary> {
    let topo = Topology::load(args.common.config.as_deref())?;
    let req = Request {
        node: topo.node(args.node)?.clone(),
        mode: Mode::Follow {
            rejoin_old_primary: topo.config.follow.rejoin_old_primary,
        },
        new_primary: pgpool_node(&topo, args.new_primary)?,
        old_primary: pgpool_node(&topo, args.old_primary)?,
        discard_wal: args.discard_wal,
        dry_run: args.common.dry_run,
        command: "follow",
    };
    standby::run(&topo, &req).await
}
