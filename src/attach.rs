//! `pgha-attach` (being written).

use crate::cli::AttachArgs;
use crate::cluster::Topology;
use crate::error::{Error, Result};
use crate::report::Summary;

/// Validate the configuration and arguments; the command itself comes next.
pub async fn run(args: &AttachArgs) -> Result<Summary> {
    let _topo = Topology::load(args.common.config.as_deref())?;
    Err(Error::Step("pgha-attach is not implemented in this version".into()))
}
