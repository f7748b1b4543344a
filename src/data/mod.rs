//! Image-caption data: annotation formats, decoding and transforms, tokenisation, the embedded
//! synthetic set, and the batch loader.

pub mod annotations;
pub mod dataset;
pub mod eval_set;
pub mod feature_cache;
pub mod images;
pub mod loader;
pub mod skip_limit;
pub mod synth;
pub mod text;
