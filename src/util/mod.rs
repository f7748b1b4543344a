//! The bottom layer: errors, seed mixing, atomic file writes, host/device tensor transfers and
//! the reporter through which library code speaks to the person running it. It imports nothing
//! from the crate.

pub mod error;
pub mod fs;
pub mod host;
pub mod report;
pub mod seed;

pub use error::{Error, Result};
