//! Training: the optimizer, schedules, checkpoints, metrics and the loop itself.

pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod ablate;
pub mod trainer;
