//! The integration tests, one binary: a test crate links the whole library and its backends, so
//! one crate instead of one per file saves most of the test build. Each module is one concern;
//! `common` holds the shared helpers and the lock for the process-wide backend RNG.

mod bad_inputs;
mod bert_init;
mod caption;
mod cli;
mod common;
mod config;
mod data_formats;
mod data_parallel;
mod determinism;
mod dropout;
mod encoders;
mod eval_sets;
mod fuzz;
mod interop;
mod kernels;
mod layers;
mod losses;
mod nodes;
mod parity;
mod precision;
mod reliability;
mod run_folder;
mod torture;
mod training;
mod weights;
