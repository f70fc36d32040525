//! pgpool-II: its configuration file and its PCP control protocol.

pub(crate) mod conf;
pub mod ops;
pub mod pcp;
pub(crate) mod pcppass;
pub mod watchdog;
