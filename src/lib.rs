//! qformer: BLIP-2 Q-Former stage-one pretraining (ITC, ITM with hard negatives, ITG) on burn.

pub mod backend;
pub mod bench;
pub mod check_loss;
pub mod error;
pub mod interop;
pub mod model;
pub mod objectives;

pub use error::{Error, Result};
