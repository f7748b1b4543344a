//! Training: the run's config, the optimizer, schedules, checkpoints, metrics, the model a run
//! starts from or ends with, and the loop itself.

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod diagnostics;
pub mod frozen_cache;
pub mod gradients;
pub mod leader;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod run_folder;
pub mod run_lock;
pub mod schedule;
pub mod trained;
pub mod trainer;
