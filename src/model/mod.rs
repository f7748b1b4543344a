//! The Q-Former: a BERT trunk whose query rows cross-attend to frozen image features.

pub mod attention;
pub mod config;
pub mod embeddings;
pub mod frozen;
pub mod heads;
pub mod layer;
pub mod norm;
pub mod precision;
pub mod qformer;
pub mod vit;

pub use attention::KeyValue;
pub use config::QFormerConfig;
pub use qformer::{Pass, QFormer};

use crate::kernels::Kernels;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// burn draws a parameter's initial value lazily, at its first use, from whatever the backend RNG
/// holds then (a later step's dropout seed, say). Drawing every value right after construction
/// makes a module depend only on the seed it was built under: required for exact resume.
pub(crate) fn materialize<B: Kernels, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Kernels> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
