//! Process plumbing shared by the platform's binaries (the router and Lightbulb), which must
//! not depend on each other: the shutdown signal and the log setup.
#![warn(missing_docs)]

pub mod signal;
pub mod telemetry;
