//! Input embeddings: word + absolute position for text (positions restart at 0 in every pass),
//! nothing added to queries, then one LayerNorm and dropout over the whole [queries; text] sequence.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};

use super::norm::LayerNorm;
use burn::tensor::{Int, Tensor};

use super::attention::layer_norm;
use super::QFormerConfig;
use crate::kernels::{dropout, DropoutSite, Kernels};

#[derive(Module, Debug)]
pub struct Embeddings<B: Kernels> {
    pub word: Embedding<B>,
    pub position: Embedding<B>,
    pub norm: LayerNorm<B>,
    pub hidden_dropout: f64,
}

impl<B: Kernels> Embeddings<B> {
    pub fn new(cfg: &QFormerConfig, device: &B::Device) -> Self {
        let embedding = |n| {
            EmbeddingConfig::new(n, cfg.hidden_size)
                .with_initializer(Initializer::Normal { mean: 0.0, std: cfg.initializer_range })
                .init(device)
        };
        Self {
            word: embedding(cfg.vocab_size),
            position: embedding(cfg.max_position_embeddings),
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, device),
            hidden_dropout: cfg.hidden_dropout_prob,
        }
    }

    /// `queries`: `[B, Q, D]`; `ids`: `[B, T]`. At least one must be given.
    pub fn forward(&self, queries: Option<Tensor<B, 3>>, ids: Option<Tensor<B, 2, Int>>, site: Option<DropoutSite<'_>>) -> Tensor<B, 3> {
        let text = ids.map(|ids| {
            let [_, t] = ids.dims();
            let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &ids.device()).reshape([1, t]);
            self.word.forward(ids) + self.position.forward(positions)
        });
        let seq = match (queries, text) {
            (Some(q), Some(t)) => Tensor::cat(vec![q, t], 1),
            (Some(q), None) => q,
            (None, Some(t)) => t,
            (None, None) => panic!("embeddings need queries or text"),
        };
        dropout(self.norm.forward(seq), self.hidden_dropout, site)
    }
}
