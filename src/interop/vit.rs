//! Frozen image encoders from checkpoints: the key namings of LAVIS/EVA pickles, HF
//! `Blip2VisionModel` and HF `CLIPVisionModel` (detected from the keys), the position table resized
//! to the configured resolution, and the HF BLIP-2 names for export. The module itself is
//! `model::vit`.

use std::path::PathBuf;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::source::{transpose, HostTensor, TensorSource};
use crate::kernels::Kernels;
use crate::model::attention::layer_norm;
use crate::model::norm::LayerNorm;
use crate::model::vit::{Block, Vit, VitConfig, VitKind};
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

/// Tensors of a checkpoint that the encoder did not use (extra blocks, final norms, heads).
pub struct LoadReport {
    pub path: PathBuf,
    pub format: &'static str,
    pub unused: Vec<String>,
    pub interpolated_from: Option<usize>,
}

impl LoadReport {
    /// One line for the run log: which file, how it was read, what was left out.
    pub fn summary(&self) -> String {
        let mut line = format!("encoder weights {} ({})", self.path.display(), self.format);
        if let Some(old) = self.interpolated_from {
            line += &format!(", positions interpolated from a {old}x{old} grid");
        }
        if !self.unused.is_empty() {
            let shown: Vec<&str> = self.unused.iter().take(4).map(String::as_str).collect();
            line += &format!(
                "; {} tensors unused ({}{})",
                self.unused.len(),
                shown.join(", "),
                if self.unused.len() > 4 { ", ..." } else { "" }
            );
        }
        line
    }
}

/// The encoder `cfg` describes: loaded from `cfg.weights`, or random from `cfg.seed`.
pub fn build_encoder<B: Kernels>(cfg: &VitConfig, device: &B::Device) -> Result<(Vit<B>, Option<LoadReport>)> {
    match &cfg.weights {
        None => Ok((Vit::random(cfg, device), None)),
        Some(path) => {
            let source = TensorSource::open(path)?;
            let (vit, report) = load_encoder(cfg, &source, device)?;
            Ok((vit.with_precision(cfg.precision), Some(report)))
        }
    }
}

/// Loads from a checkpoint in any of the supported namings, detected from its keys.
pub fn load_encoder<B: Kernels>(cfg: &VitConfig, src: &TensorSource, device: &B::Device) -> Result<(Vit<B>, LoadReport)> {
    let names = Naming::detect(src, cfg.kind)?;
    let used = std::cell::RefCell::new(std::collections::HashSet::new());
    let get = |name: String, shape: &[usize]| -> Result<HostTensor> {
        let t = src.get_shaped(&name, shape)?;
        used.borrow_mut().insert(name);
        Ok(t)
    };
    let (w, p) = (cfg.width, cfg.patch_size);
    let tensor = |t: HostTensor, shape: Vec<usize>| TensorData::new(t.values, shape);
    let linear = |weight: HostTensor, bias: Option<HostTensor>| -> Linear<B> {
        let (out, inp) = (weight.shape[0], weight.shape[1..].iter().product::<usize>());
        let values = transpose(&weight.values, out, inp);
        Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(values, [inp, out]), device)),
            bias: Some(Param::from_tensor(match bias {
                Some(b) => Tensor::from_data(tensor(b, vec![out]), device),
                None => Tensor::zeros([out], device),
            })),
        }
    };
    let norm = |g: HostTensor, b: HostTensor| -> LayerNorm<B> {
        let mut n = layer_norm(w, cfg.eps(), device);
        n.gamma = Param::from_tensor(Tensor::from_data(tensor(g, vec![w]), device));
        n.beta = Some(Param::from_tensor(Tensor::from_data(tensor(b, vec![w]), device)));
        n
    };
    let n = &names;
    let patch_bias = match names.patch_bias() {
        Some(b) => Some(get(b, &[w])?),
        None => None,
    };
    let patch_embed = linear(get(n.patch_weight(), &[w, 3, p, p])?, patch_bias);
    let cls = get(n.cls(), &n.cls_shape(w))?;
    let pos_name = n.pos();
    let pos = src.get(&pos_name)?;
    used.borrow_mut().insert(pos_name.clone());
    let (pos, interpolated_from) = resize_positions(&src.path, &pos_name, pos, w, cfg.grid())?;
    let pre_norm = match n.pre_norm() {
        Some(pn) => Some(norm(get(format!("{pn}.weight"), &[w])?, get(format!("{pn}.bias"), &[w])?)),
        None => None,
    };
    let hidden = cfg.mlp_hidden();
    let mut blocks = Vec::with_capacity(cfg.depth);
    for i in 0..cfg.depth {
        let b = n.block(i);
        let (qkv_w, qkv_b) = match n {
            Naming::LavisEva(_) => {
                let q = get(format!("{b}.attn.q_bias"), &[w])?;
                let v = get(format!("{b}.attn.v_bias"), &[w])?;
                let bias = [q.values, vec![0.0; w], v.values].concat();
                (get(format!("{b}.attn.qkv.weight"), &[3 * w, w])?, HostTensor { shape: vec![3 * w], values: bias })
            }
            Naming::HfBlip2(_) => {
                (get(format!("{b}.self_attn.qkv.weight"), &[3 * w, w])?, get(format!("{b}.self_attn.qkv.bias"), &[3 * w])?)
            }
            Naming::HfClip(_) => {
                let mut weight = Vec::with_capacity(3 * w * w);
                let mut bias = Vec::with_capacity(3 * w);
                for part in ["q", "k", "v"] {
                    weight.extend(get(format!("{b}.self_attn.{part}_proj.weight"), &[w, w])?.values);
                    bias.extend(get(format!("{b}.self_attn.{part}_proj.bias"), &[w])?.values);
                }
                (HostTensor { shape: vec![3 * w, w], values: weight }, HostTensor { shape: vec![3 * w], values: bias })
            }
        };
        let [n1, n2, proj, fc1, fc2] = n.block_parts();
        let pair = |name: &str, out: usize, inp: usize| -> Result<(HostTensor, HostTensor)> {
            Ok((get(format!("{b}.{name}.weight"), &[out, inp])?, get(format!("{b}.{name}.bias"), &[out])?))
        };
        let (proj_w, proj_b) = pair(proj, w, w)?;
        let (fc1_w, fc1_b) = pair(fc1, hidden, w)?;
        let (fc2_w, fc2_b) = pair(fc2, w, hidden)?;
        blocks.push(Block {
            norm1: norm(get(format!("{b}.{n1}.weight"), &[w])?, get(format!("{b}.{n1}.bias"), &[w])?),
            qkv: linear(qkv_w, Some(qkv_b)),
            proj: linear(proj_w, Some(proj_b)),
            norm2: norm(get(format!("{b}.{n2}.weight"), &[w])?, get(format!("{b}.{n2}.bias"), &[w])?),
            fc1: linear(fc1_w, Some(fc1_b)),
            fc2: linear(fc2_w, Some(fc2_b)),
            heads: cfg.heads,
            quick_gelu: cfg.kind == VitKind::Clip,
        });
    }
    let vit = Vit {
        patch_embed,
        cls_token: Param::from_tensor(Tensor::from_data(tensor(cls, vec![1, 1, w]), device)),
        pos_embed: Param::from_tensor(Tensor::from_data(TensorData::new(pos, [1, cfg.num_tokens(), w]), device)),
        pre_norm,
        blocks,
        patch_size: p,
        compute: None,
    };
    let used = used.into_inner();
    // In a whole-model file (LAVIS, HF BLIP-2) only the encoder's own part is reported.
    let unused = src.names().into_iter().filter(|k| k.starts_with(n.prefix()) && !used.contains(k)).collect();
    Ok((vit, LoadReport { path: src.path.clone(), format: n.describe(), unused, interpolated_from }))
}

/// Every tensor under HF `Blip2VisionModel` names (`vision_model.` prefix), `[out, in]`
/// layout, for export. Only the `eva` family has that shape.
pub fn hf_blip2_tensors<B: Kernels>(vit: &Vit<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let host = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<f32>) {
        let t = t.cast(FloatDType::F32).swap_dims(0, 1);
        (t.dims().to_vec(), to_f32(t))
    };
    let vec1 = |t: Tensor<B, 1>| to_f32(t);
    let mut out = Vec::new();
    let push_linear = |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: String, l: &Linear<B>| {
        let (shape, values) = host(l.weight.val());
        out.push((format!("{name}.weight"), shape.clone(), values));
        if let Some(b) = &l.bias {
            out.push((format!("{name}.bias"), vec![shape[0]], vec1(b.val())));
        }
    };
    let push_norm = |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: String, n: &LayerNorm<B>| {
        out.push((format!("{name}.weight"), n.gamma.dims().to_vec(), vec1(n.gamma.val())));
        if let Some(b) = &n.beta {
            out.push((format!("{name}.bias"), b.dims().to_vec(), vec1(b.val())));
        }
    };
    let pre = "vision_model";
    let (shape, values) = host(vit.patch_embed.weight.val());
    let p = vit.patch_size;
    out.push((format!("{pre}.embeddings.patch_embedding.weight"), vec![shape[0], 3, p, p], values));
    if let Some(b) = &vit.patch_embed.bias {
        out.push((format!("{pre}.embeddings.patch_embedding.bias"), vec![shape[0]], vec1(b.val())));
    }
    let dims3 = |t: Tensor<B, 3>| (t.dims().to_vec(), to_f32(t));
    let (s, v) = dims3(vit.cls_token.val());
    out.push((format!("{pre}.embeddings.class_embedding"), s, v));
    let (s, v) = dims3(vit.pos_embed.val());
    out.push((format!("{pre}.embeddings.position_embedding"), s, v));
    for (i, blk) in vit.blocks.iter().enumerate() {
        let b = format!("{pre}.encoder.layers.{i}");
        push_norm(&mut out, format!("{b}.layer_norm1"), &blk.norm1);
        push_linear(&mut out, format!("{b}.self_attn.qkv"), &blk.qkv);
        push_linear(&mut out, format!("{b}.self_attn.projection"), &blk.proj);
        push_norm(&mut out, format!("{b}.layer_norm2"), &blk.norm2);
        push_linear(&mut out, format!("{b}.mlp.fc1"), &blk.fc1);
        push_linear(&mut out, format!("{b}.mlp.fc2"), &blk.fc2);
    }
    out
}

/// The key naming of an encoder checkpoint, with the prefix its keys carry.
enum Naming {
    /// EVA/LAVIS: `blocks.N.attn.qkv.weight`, `q_bias`, `v_bias` (`visual_encoder.` in LAVIS files).
    LavisEva(String),
    /// HF `Blip2VisionModel`: `encoder.layers.N.self_attn.qkv.*`.
    HfBlip2(String),
    /// HF `CLIPVisionModel`: `encoder.layers.N.self_attn.{q,k,v}_proj.*`, `pre_layrnorm`.
    HfClip(String),
}

impl Naming {
    fn detect(src: &TensorSource, kind: VitKind) -> Result<Self> {
        let found = |prefixes: &[&str], key: &str| prefixes.iter().find(|p| src.contains(&format!("{p}{key}"))).map(|p| p.to_string());
        let naming = if let Some(p) = found(&["", "visual_encoder."], "blocks.0.attn.qkv.weight") {
            Naming::LavisEva(p)
        } else if let Some(p) = found(&["vision_model.", ""], "encoder.layers.0.self_attn.qkv.weight") {
            Naming::HfBlip2(p)
        } else if let Some(p) = found(&["vision_model.", ""], "encoder.layers.0.self_attn.q_proj.weight") {
            Naming::HfClip(p)
        } else {
            return Err(Error::file(
                &src.path,
                "no known ViT naming (looked for EVA/LAVIS `blocks.0.attn.qkv.weight`, HF Blip2Vision `encoder.layers.0.self_attn.qkv.weight`, HF CLIPVision `encoder.layers.0.self_attn.q_proj.weight`)",
            ));
        };
        let file_kind = if matches!(naming, Naming::HfClip(_)) { VitKind::Clip } else { VitKind::Eva };
        if file_kind != kind {
            return Err(Error::file(
                &src.path,
                format!(
                    "holds a {} ViT ({}), but encoder.kind is {kind:?}",
                    if file_kind == VitKind::Clip { "clip" } else { "eva" },
                    naming.describe()
                ),
            ));
        }
        Ok(naming)
    }

    fn describe(&self) -> &'static str {
        match self {
            Naming::LavisEva(_) => "EVA/LAVIS names",
            Naming::HfBlip2(_) => "HF Blip2VisionModel names",
            Naming::HfClip(_) => "HF CLIPVisionModel names",
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Naming::LavisEva(p) | Naming::HfBlip2(p) | Naming::HfClip(p) => p,
        }
    }

    fn patch_weight(&self) -> String {
        match self {
            Naming::LavisEva(p) => format!("{p}patch_embed.proj.weight"),
            _ => format!("{}embeddings.patch_embedding.weight", self.prefix()),
        }
    }

    /// CLIP's patch convolution has no bias.
    fn patch_bias(&self) -> Option<String> {
        match self {
            Naming::LavisEva(p) => Some(format!("{p}patch_embed.proj.bias")),
            Naming::HfBlip2(p) => Some(format!("{p}embeddings.patch_embedding.bias")),
            Naming::HfClip(_) => None,
        }
    }

    fn cls(&self) -> String {
        match self {
            Naming::LavisEva(p) => format!("{p}cls_token"),
            _ => format!("{}embeddings.class_embedding", self.prefix()),
        }
    }

    fn cls_shape(&self, w: usize) -> Vec<usize> {
        match self {
            Naming::HfClip(_) => vec![w],
            _ => vec![1, 1, w],
        }
    }

    fn pos(&self) -> String {
        match self {
            Naming::LavisEva(p) => format!("{p}pos_embed"),
            Naming::HfBlip2(p) => format!("{p}embeddings.position_embedding"),
            Naming::HfClip(p) => format!("{p}embeddings.position_embedding.weight"),
        }
    }

    fn pre_norm(&self) -> Option<String> {
        match self {
            Naming::HfClip(p) => Some(format!("{p}pre_layrnorm")),
            _ => None,
        }
    }

    fn block(&self, i: usize) -> String {
        match self {
            Naming::LavisEva(p) => format!("{p}blocks.{i}"),
            _ => format!("{}encoder.layers.{i}", self.prefix()),
        }
    }

    /// Names of norm1, norm2, output projection, fc1 and fc2 inside a block.
    fn block_parts(&self) -> [&'static str; 5] {
        match self {
            Naming::LavisEva(_) => ["norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"],
            Naming::HfBlip2(_) => ["layer_norm1", "layer_norm2", "self_attn.projection", "mlp.fc1", "mlp.fc2"],
            Naming::HfClip(_) => ["layer_norm1", "layer_norm2", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"],
        }
    }
}

/// Checks a position table (`[1, N, w]` or `[N, w]`, class position first) and resizes its grid
/// to `grid × grid` when the checkpoint was trained at another resolution. Returns the values
/// and the original grid when it was resized.
fn resize_positions(path: &std::path::Path, name: &str, pos: HostTensor, w: usize, grid: usize) -> Result<(Vec<f32>, Option<usize>)> {
    let n = pos.values.len() / w.max(1);
    let old = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
    if pos.values.len() != n * w || old * old + 1 != n || pos.shape.last() != Some(&w) {
        return Err(Error::file(
            path,
            format!("tensor `{name}` has shape {:?}: expected a class position plus a square grid, width {w}", pos.shape),
        ));
    }
    if old == grid {
        return Ok((pos.values, None));
    }
    let (cls, rest) = pos.values.split_at(w);
    let mut out = cls.to_vec();
    out.extend(bicubic_resize(rest, old, grid, w));
    Ok((out, Some(old)))
}

/// Bicubic resize of a `[old, old, channels]` grid to `[new, new, channels]`, as PyTorch's
/// `interpolate(mode="bicubic", align_corners=False)` (cubic coefficient −0.75, edge taps
/// clamped), which LAVIS and HF use for position embeddings.
pub fn bicubic_resize(grid: &[f32], old: usize, new: usize, channels: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let cubic1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cubic2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let taps = |i: usize| -> ([usize; 4], [f64; 4]) {
        let src = (i as f64 + 0.5) * old as f64 / new as f64 - 0.5;
        let base = src.floor();
        let t = src - base;
        let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        let idx = [-1, 0, 1, 2].map(|o| (base as i64 + o).clamp(0, old as i64 - 1) as usize);
        (idx, w)
    };
    let mut out = vec![0.0f32; new * new * channels];
    for y in 0..new {
        let (iy, wy) = taps(y);
        for x in 0..new {
            let (ix, wx) = taps(x);
            for c in 0..channels {
                let mut acc = 0.0f64;
                for (a, &yy) in iy.iter().enumerate() {
                    let row: f64 = ix.iter().zip(wx).map(|(&xx, wxx)| grid[(yy * old + xx) * channels + c] as f64 * wxx).sum();
                    acc += row * wy[a];
                }
                out[(y * new + x) * channels + c] = acc as f32;
            }
        }
    }
    out
}
