//! Evaluation on held-out data.

pub mod caption;
pub mod confusions;
pub mod evaluate;
pub mod retrieval;
pub mod scoring;
