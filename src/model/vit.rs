//! The frozen image encoder: a pre-norm ViT in the two shapes BLIP-2 uses. `eva` is EVA-CLIP
//! ViT-g as LAVIS runs it (separate q/v biases, GELU, no final norm); `clip` is CLIP ViT-L
//! (`ln_pre`, quick-GELU, no final norm). Either keeps the first `depth` blocks of its checkpoint,
//! so the penultimate-layer features LAVIS uses come from `depth` = checkpoint depth − 1.
//!
//! It runs on the inner (non-autodiff) backend: no gradient, no optimizer state, never written to
//! checkpoints. Without `weights` it is a random ViT, the same for a given seed; checkpoints in
//! LAVIS, EVA, HF BLIP-2 and HF CLIP names are read by `interop::vit`.

use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};

use super::norm::LayerNorm;
use burn::tensor::{activation, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use super::attention::{layer_norm, scaled_dot_product, split_heads, KeyValue};
use super::precision::{self, Precision};

use crate::kernels::Kernels;
use crate::util::error::{Error, Result};

/// A trained ViT's initial std for its class token and position embedding; a random encoder
/// draws both from it unless `position_std` says otherwise.
const TRAINED_VIT_INIT_STD: f64 = 0.02;

/// Architecture family of the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VitKind {
    #[default]
    Eva,
    Clip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    #[serde(default)]
    pub kind: VitKind,
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    /// Blocks to run; a checkpoint may hold more (they are ignored).
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    /// Random weights are drawn from this seed when `weights` is not set.
    #[serde(default)]
    pub seed: u64,
    /// Standard deviation of a random encoder's position embedding; default 0.02, a trained
    /// ViT's initialisation. At 0.02 the positions are a 2 % ripple on patch embeddings of unit
    /// scale, so a random encoder's tokens hardly say where they are; a trained encoder's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_std: Option<f64>,
    /// Defaults: 1e-6 for `eva`, 1e-5 for `clip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norm_eps: Option<f64>,
    /// Pretrained weights: LAVIS/EVA `.pth`, HF `Blip2VisionModel` or HF `CLIPVisionModel`
    /// (safetensors or PyTorch). Position embeddings are interpolated to `image_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    #[serde(default)]
    pub precision: Precision,
}

impl VitConfig {
    /// Random-weight stand-ins with the compute of the real encoders (for benchmarks): `eva-g`
    /// (EVA ViT-g/14, 39 blocks, as LAVIS) and `clip-l` (CLIP ViT-L/14, 23 blocks), at 224 px;
    /// `tiny`, the encoder of configs/tiny.toml (the default run, configs/shapes.toml, uses 16-pixel
    /// patches).
    pub fn preset(name: &str) -> Option<Self> {
        let base = Self {
            kind: VitKind::Eva,
            image_size: 224,
            patch_size: 14,
            width: 1408,
            depth: 39,
            heads: 16,
            mlp_ratio: 4.3637,
            seed: 0,
            position_std: None,
            layer_norm_eps: None,
            weights: None,
            precision: Precision::F32,
        };
        match name {
            "eva-g" => Some(base),
            "clip-l" => Some(Self { kind: VitKind::Clip, width: 1024, depth: 23, mlp_ratio: 4.0, ..base }),
            "tiny" => Some(Self { image_size: 64, patch_size: 8, width: 384, depth: 2, heads: 6, mlp_ratio: 4.0, ..base }),
            _ => None,
        }
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_tokens(&self) -> usize {
        self.grid().pow(2) + 1
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }

    pub fn eps(&self) -> f64 {
        self.layer_norm_eps.unwrap_or(match self.kind {
            VitKind::Eva => 1e-6,
            VitKind::Clip => 1e-5,
        })
    }

    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(Error::config(format!("encoder.{key}"), msg, source));
        if self.patch_size == 0 || self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return err("image_size", "must be a positive multiple of encoder.patch_size");
        }
        if self.depth == 0 || self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return err("width", "must be a multiple of encoder.heads, with depth > 0");
        }
        if !(self.mlp_ratio > 0.0) {
            return err("mlp_ratio", "must be > 0");
        }
        if let Some(std) = self.position_std {
            if !(std.is_finite() && std >= 0.0) {
                return err("position_std", "must be a finite number >= 0");
            }
            if self.weights.is_some() {
                return err("position_std", "sets a random encoder's positions; a checkpoint (encoder.weights) brings its own");
            }
        }
        if let Some(w) = &self.weights {
            if !w.exists() {
                return err("weights", &format!("file not found: {}", w.display()));
            }
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub(crate) struct Block<B: Kernels> {
    pub(crate) norm1: LayerNorm<B>,
    /// q, k and v in one product; EVA's k bias is zero.
    pub(crate) qkv: Linear<B>,
    pub(crate) proj: Linear<B>,
    pub(crate) norm2: LayerNorm<B>,
    pub(crate) fc1: Linear<B>,
    pub(crate) fc2: Linear<B>,
    pub(crate) heads: usize,
    pub(crate) quick_gelu: bool,
}

#[derive(Module, Debug)]
pub struct Vit<B: Kernels> {
    /// The patch convolution as a product over flattened `[C, p, p]` patches.
    pub(crate) patch_embed: Linear<B>,
    pub(crate) cls_token: Param<Tensor<B, 3>>,
    pub(crate) pos_embed: Param<Tensor<B, 3>>,
    /// CLIP's `ln_pre`.
    pub(crate) pre_norm: Option<LayerNorm<B>>,
    pub(crate) blocks: Vec<Block<B>>,
    pub(crate) patch_size: usize,
    #[module(skip)]
    pub(crate) compute: Option<FloatDType>,
}

impl<B: Kernels> Vit<B> {
    /// A random EVA-shaped ViT, identical for identical `cfg` (including the seed) on a backend.
    pub fn random(cfg: &VitConfig, device: &B::Device) -> Self {
        B::seed(device, cfg.seed);
        let normal = Initializer::Normal { mean: 0.0, std: TRAINED_VIT_INIT_STD };
        let positions = Initializer::Normal { mean: 0.0, std: cfg.position_std.unwrap_or(TRAINED_VIT_INIT_STD) };
        let linear =
            |i, o| LinearConfig::new(i, o).with_initializer(Initializer::Normal { mean: 0.0, std: (1.0 / i as f64).sqrt() }).init(device);
        let eps = cfg.eps();
        let vit = super::materialize(Self {
            patch_embed: linear(3 * cfg.patch_size * cfg.patch_size, cfg.width),
            cls_token: normal.init([1, 1, cfg.width], device),
            pos_embed: positions.init([1, cfg.num_tokens(), cfg.width], device),
            pre_norm: (cfg.kind == VitKind::Clip).then(|| layer_norm(cfg.width, eps, device)),
            blocks: (0..cfg.depth)
                .map(|_| {
                    let mut qkv = linear(cfg.width, 3 * cfg.width);
                    // A key bias shifts every score of a query equally, so it is a no-op; EVA has none.
                    if let Some(bias) = qkv.bias.take() {
                        #[allow(clippy::single_range_in_vec_init)] // burn takes one range per dimension
                        let b = bias.val().slice_assign([cfg.width..2 * cfg.width], Tensor::zeros([cfg.width], device));
                        qkv.bias = Some(Param::from_tensor(b));
                    }
                    Block {
                        norm1: layer_norm(cfg.width, eps, device),
                        qkv,
                        proj: linear(cfg.width, cfg.width),
                        norm2: layer_norm(cfg.width, eps, device),
                        fc1: linear(cfg.width, cfg.mlp_hidden()),
                        fc2: linear(cfg.mlp_hidden(), cfg.width),
                        heads: cfg.heads,
                        quick_gelu: cfg.kind == VitKind::Clip,
                    }
                })
                .collect(),
            patch_size: cfg.patch_size,
            compute: None,
        });
        vit.with_precision(cfg.precision)
    }

    /// Stores the matmul weights in `precision` (frozen: no f32 master copy is needed); biases,
    /// LayerNorms, class token and positions stay f32. Attention runs in f32, as LAVIS's
    /// half-precision EVA encoder keeps its softmax in f32.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let Some(dt) = precision.dtype() else { return self };
        let cast = |l: &mut Linear<B>| l.weight = Param::from_tensor(l.weight.val().cast(dt));
        cast(&mut self.patch_embed);
        for b in &mut self.blocks {
            for l in [&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2] {
                cast(l);
            }
        }
        self.compute = Some(dt);
        self
    }

    fn linear(&self, l: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        precision::linear(l, x, self.compute)
    }

    fn block(&self, blk: &Block<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let qkv = self.linear(&blk.qkv, blk.norm1.forward(x.clone()));
        let part = |i: usize| split_heads(qkv.clone().slice([0..b, 0..s, i * d..(i + 1) * d]), blk.heads);
        let kv = KeyValue { key: part(1), value: part(2) };
        let x = x + self.linear(&blk.proj, scaled_dot_product(part(0), &kv, None, 0.0, None, None));
        let h = self.linear(&blk.fc1, blk.norm2.forward(x.clone()));
        let h = if blk.quick_gelu { h.clone() * activation::sigmoid(h.mul_scalar(1.702)) } else { activation::gelu(h) };
        x + self.linear(&blk.fc2, h)
    }

    /// `images`: normalised `[B, 3, H, W]`. Returns `[B, 1 + patches, width]`, the input of
    /// `ln_vision`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p]: one row per patch, PyTorch's conv order.
        let patches = images.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p]);
        let x = self.linear(&self.patch_embed, patches);
        let [_, _, d] = x.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos_embed.val();
        if let Some(norm) = &self.pre_norm {
            x = norm.forward(x);
        }
        for block in &self.blocks {
            x = self.block(block, x);
        }
        x
    }
}
