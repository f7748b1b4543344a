//! qformer: BLIP-2 Q-Former stage-one pretraining (ITC, ITM with hard negatives, ITG) on burn.

pub mod backend;
pub mod bench;
pub mod cache_features;
pub mod check_loss;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod interop;
pub mod kernels;
pub mod model;
pub mod objectives;
pub mod report;
pub mod train;
pub mod trained;

pub use error::{Error, Result};
