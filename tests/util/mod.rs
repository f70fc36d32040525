//! Helpers shared by the end-to-end tests. Not every test uses every helper.

#[allow(dead_code)]
pub mod cmd;
#[allow(dead_code)]
pub mod lab;
#[allow(dead_code)]
pub mod watch;
