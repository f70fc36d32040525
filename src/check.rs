//! `pgha-check` (being written).

use crate::cli::CheckArgs;
use crate::cluster::Topology;
use crate::error::{Error, Result};
use crate::report::Summary;

/// Validate the configuration and arguments; the command itself comes next.
pub async fn run(args: &CheckArgs) -> Result<Summary> {
    let _topo = Topology::load(args.common.config.as_deref())?;
    Err(Error::Step("pgha-check is not implemented in this version".into()))
}
