//! The application layer: one job per subcommand, with its command-line arguments beside it, built
//! from the layers below, and the only place that prints (progress, tables, notes from the library
//! through [`console::Console`]).

pub mod ablate;
pub mod args;
pub mod bench;
pub mod cache_features;
pub mod check_loss;
pub mod console;
pub mod eval;
pub mod export;
pub mod orchestrator;
pub mod report;
pub mod synth;
pub mod train;
