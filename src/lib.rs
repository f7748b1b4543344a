//! qformer: BLIP-2 Q-Former stage-one pretraining (ITC, ITM with hard negatives, ITG) on burn.
//!
//! The modules are layers, bottom to top; each imports only from itself and the layers below
//! (checked by `tests/suite/layers.rs`): `util` → `kernels` → `model` → `data` → `objectives` →
//! `interop` → `eval` → `train` → `app`. Only `app` prints.

// `!(x > 0.0)` in the config checks is deliberate: it refuses NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
// Coefficients and constants are written as published (CLIP's statistics, the exp polynomial).
#![allow(clippy::excessive_precision)]
// The large variants (a frozen encoder, a memory map) are built once per run, never in a loop.
#![allow(clippy::large_enum_variant)]

pub mod app;
pub mod data;
pub mod eval;
pub mod interop;
pub mod kernels;
pub mod model;
pub mod objectives;
pub mod train;
pub mod util;

pub use util::error::{Error, Result};
