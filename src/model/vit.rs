//! The frozen image encoder: a ViT (patch embedding, class token, learned positions, pre-norm
//! blocks, no final norm, as LAVIS uses EVA ViT-g). It runs on the inner (non-autodiff) backend,
//! so it has no gradient and no optimizer state, and it is never written to checkpoints: until
//! real weights can be loaded, it is a random ViT that is the same for a given seed.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, Linear, LinearConfig};
use burn::tensor::{activation::gelu, backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use super::attention::{layer_norm, scaled_dot_product, split_heads, KeyValue};
use super::linear_rows;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    /// Weights are drawn from this seed; recorded with every run.
    pub seed: u64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-6
}

impl VitConfig {
    pub fn num_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(Error::config(format!("encoder.{key}"), msg, source));
        if self.patch_size == 0 || self.image_size == 0 || self.image_size % self.patch_size != 0 {
            return err("image_size", "must be a positive multiple of encoder.patch_size");
        }
        if self.depth == 0 || self.heads == 0 || self.width % self.heads != 0 {
            return err("width", "must be a multiple of encoder.heads, with depth > 0");
        }
        if !(self.mlp_ratio > 0.0) {
            return err("mlp_ratio", "must be > 0");
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    qkv: Linear<B>,
    proj: Linear<B>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    heads: usize,
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let qkv = linear_rows(&self.qkv, self.norm1.forward(x.clone()));
        let part = |i: usize| split_heads(qkv.clone().slice([0..b, 0..s, i * d..(i + 1) * d]), self.heads);
        let kv = KeyValue { key: part(1), value: part(2) };
        let x = x + linear_rows(&self.proj, scaled_dot_product(part(0), &kv, None, 0.0, false));
        let h = gelu(linear_rows(&self.fc1, self.norm2.forward(x.clone())));
        x.clone() + linear_rows(&self.fc2, h)
    }
}

#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    patch_embed: Linear<B>,
    cls_token: Param<Tensor<B, 3>>,
    pos_embed: Param<Tensor<B, 3>>,
    blocks: Vec<Block<B>>,
    patch_size: usize,
}

impl<B: Backend> Vit<B> {
    /// A random ViT, identical for identical `cfg` (including the seed) on a given backend.
    pub fn random(cfg: &VitConfig, device: &B::Device) -> Self {
        B::seed(device, cfg.seed);
        let normal = Initializer::Normal { mean: 0.0, std: 0.02 };
        let linear = |i, o| LinearConfig::new(i, o).with_initializer(Initializer::Normal { mean: 0.0, std: (1.0 / i as f64).sqrt() }).init(device);
        let hidden = (cfg.width as f64 * cfg.mlp_ratio) as usize;
        super::materialize(Self {
            patch_embed: linear(3 * cfg.patch_size * cfg.patch_size, cfg.width),
            cls_token: normal.init([1, 1, cfg.width], device),
            pos_embed: normal.init([1, cfg.num_tokens(), cfg.width], device),
            blocks: (0..cfg.depth)
                .map(|_| Block {
                    norm1: layer_norm(cfg.width, cfg.layer_norm_eps, device),
                    qkv: linear(cfg.width, 3 * cfg.width),
                    proj: linear(cfg.width, cfg.width),
                    norm2: layer_norm(cfg.width, cfg.layer_norm_eps, device),
                    fc1: linear(cfg.width, hidden),
                    fc2: linear(hidden, cfg.width),
                    heads: cfg.heads,
                })
                .collect(),
            patch_size: cfg.patch_size,
        })
    }

    /// `images`: normalised `[B, 3, H, W]`. Returns `[B, 1 + patches, width]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p]: one row per patch, PyTorch's conv order.
        let patches = images
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let x = linear_rows(&self.patch_embed, patches);
        let [_, _, d] = x.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos_embed.val();
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}
