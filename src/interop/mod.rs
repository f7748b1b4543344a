//! Files shared with other tools: Q-Former weights under Hugging Face names, and batch files.

pub mod batch_file;
pub mod bert;
pub mod hf;
pub mod hf_config;
pub mod lavis;
pub mod pretrained;
pub mod safetensors_io;
pub mod source;
pub mod vit;
pub mod weights;
