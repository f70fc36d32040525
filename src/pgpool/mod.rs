//! pgpool-II: its configuration file and its PCP control protocol.

pub mod conf;
pub mod ops;
pub mod pcp;
pub mod pcppass;
