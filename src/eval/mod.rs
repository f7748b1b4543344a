//! Evaluation on held-out data.

pub mod retrieval;
pub mod scoring;
