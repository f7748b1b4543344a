//! One stage-one loss evaluation, in the order of the BLIP-2 figure: the unimodal pass (ITC, and
//! the query keys/values ITG reuses), hard-negative mining, the ITM pass, the ITG pass, and the
//! weighted sum. A switched-off objective costs nothing: no pass, no mask, no head.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use burn::tensor::TensorData;

use super::global::GlobalBatch;
use super::itc::{itc_loss, normalize, similarities};
use super::itg::{self, itg_loss};
use super::itm::{itm_loss, ItmPairs};
use super::masks::AttentionMask;
use super::peers::{Alone, Peers, Split};
use super::sampler::{Direction, NegativeMode, NegativeSampler, SamplerStats};
use super::{pass, ItcGradient, Stage1Batch};
use crate::data::text::TextBatch;
use crate::kernels::Kernels;
use crate::model::{KeyValue, Pass, QFormer};
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Switch {
    pub enabled: bool,
    pub weight: f64,
}

impl Default for Switch {
    fn default() -> Self {
        Self { enabled: true, weight: 1.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    Itc,
    Itm,
    Itg,
}

/// Which objectives run, their weights and their options (the `[objectives]` table of a config).
/// Defaults match LAVIS HEAD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub itc: Switch,
    pub itm: Switch,
    pub itg: Switch,
    pub itc_gradient: ItcGradient,
    /// Label smoothing of ITC and ITG (ITM uses none).
    pub label_smoothing: f64,
    pub negatives: NegativeMode,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            itc: Switch::default(),
            itm: Switch::default(),
            itg: Switch::default(),
            itc_gradient: ItcGradient::Detached,
            label_smoothing: 0.1,
            negatives: NegativeMode::Sample,
        }
    }
}

impl ObjectiveConfig {
    /// Keeps only the named objectives on.
    pub fn only(mut self, enabled: &[Objective]) -> Self {
        self.itc.enabled = enabled.contains(&Objective::Itc);
        self.itm.enabled = enabled.contains(&Objective::Itm);
        self.itg.enabled = enabled.contains(&Objective::Itg);
        self
    }

    /// The rules of `[objectives]` for a run over `peers` peers, in the words of the config.
    pub fn validate(&self, peers: usize, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(Error::config(key, msg, source));
        if !(self.itc.enabled || self.itm.enabled || self.itg.enabled) {
            return err("objectives", "enable at least one of itc, itm, itg");
        }
        for (key, sw) in [("objectives.itc.weight", self.itc), ("objectives.itm.weight", self.itm), ("objectives.itg.weight", self.itg)] {
            if !(sw.weight >= 0.0 && sw.weight.is_finite()) {
                return err(key, "must be >= 0");
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return err("objectives.label_smoothing", "must be in [0, 1)");
        }
        if peers > 1 && self.itc_gradient == ItcGradient::Full {
            return err("objectives.itc_gradient", "\"full\" needs one peer; across peers ITC is \"detached\" (LAVIS)");
        }
        Ok(())
    }
}

/// Every term of one evaluation. Disabled terms are `None`. Across several peers each term is
/// this peer's share of the global batch's mean: the shares of all peers sum to it.
pub struct Stage1Output<B: Kernels> {
    /// `w_itc·itc + w_itm·itm + w_itg·itg`.
    pub loss: Tensor<B, 1>,
    pub itc: Option<Tensor<B, 1>>,
    pub itm: Option<Tensor<B, 1>>,
    pub itg: Option<Tensor<B, 1>>,
    /// `[b, N]` ITC logits of this peer's images against the global batch, when computed.
    pub sim_i2t: Option<Tensor<B, 2>>,
    /// `[pairs, 2]`, this peer's pairs.
    pub itm_logits: Option<Tensor<B, 2>>,
    /// ITM's label mix over the global batch: (matching pairs, all pairs).
    pub itm_labels: Option<(usize, usize)>,
    pub sampler: SamplerStats,
}

/// Host copies of the two `[b, N]` similarity blocks the sampler draws from (this peer's rows
/// against the global batch, nothing else), in one read-back (one device sync): (text → image
/// rows, image → text rows).
fn host_rows<B: Kernels>(sim_t2i: Tensor<B, 2>, sim_i2t: Tensor<B, 2>) -> (Vec<f32>, Vec<f32>) {
    let mut t2i = to_f32(Tensor::cat(vec![sim_t2i.detach(), sim_i2t.detach()], 0));
    let i2t = t2i.split_off(t2i.len() / 2);
    (t2i, i2t)
}

/// The stage-one loss of a batch on one device.
pub fn stage1_loss<B: Kernels>(
    model: &QFormer<B>,
    batch: &Stage1Batch<B>,
    cfg: &ObjectiveConfig,
    sampler: &NegativeSampler,
    train: bool,
) -> Result<Stage1Output<B>> {
    stage1_loss_across(model, batch, cfg, sampler, train, &Alone)
}

/// Every peer's normalised ITC features, in peer order, as constants (LAVIS's gather without
/// gradient).
fn gather_features<B: Kernels>(
    split: &Split,
    peers: &dyn Peers,
    image: &Tensor<B, 3>,
    text: &Tensor<B, 2>,
) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
    let [b, q, e] = image.dims();
    let (image_v, text_v) = (to_f32(image.clone().detach()), to_f32(text.clone().detach()));
    let mut rows = Vec::with_capacity(b * (q + 1) * e);
    for i in 0..b {
        rows.extend_from_slice(&image_v[i * q * e..(i + 1) * q * e]);
        rows.extend_from_slice(&text_v[i * e..(i + 1) * e]);
    }
    let all = split.gather(peers, &rows, (q + 1) * e)?;
    let n = split.total();
    let (mut images, mut texts) = (Vec::with_capacity(n * q * e), Vec::with_capacity(n * e));
    for row in all.chunks((q + 1) * e) {
        images.extend_from_slice(&row[..q * e]);
        texts.extend_from_slice(&row[q * e..]);
    }
    let device = image.device();
    Ok((Tensor::from_data(TensorData::new(images, [n, q, e]), &device), Tensor::from_data(TensorData::new(texts, [n, e]), &device)))
}

/// ITM's images and texts: this peer's rows, then the negatives other peers hold (their frozen
/// features projected here, so their gradient reaches `ln_vision` and the cross-attention as on
/// one device). Maps global picks to indices into these sets.
struct Extended<B: Kernels> {
    image_kv: Vec<Option<KeyValue<B>>>,
    text: TextBatch,
    neg_image: Vec<Option<usize>>,
    neg_text: Vec<Option<usize>>,
}

fn extend<B: Kernels>(
    model: &QFormer<B>,
    global: &GlobalBatch,
    batch: &Stage1Batch<B>,
    image_kv: &[Option<KeyValue<B>>],
    (neg_image, neg_text): (&[Option<usize>], &[Option<usize>]),
) -> Result<Extended<B>> {
    let b = batch.batch_size();
    let index = |picks: &[Option<usize>], remote: &mut Vec<usize>| -> Vec<Option<usize>> {
        let mut seen = HashMap::new();
        picks
            .iter()
            .map(|p| {
                p.map(|g| {
                    global.local_index(g).unwrap_or_else(|| {
                        *seen.entry(g).or_insert_with(|| {
                            remote.push(g);
                            b + remote.len() - 1
                        })
                    })
                })
            })
            .collect()
    };
    let (mut remote_images, mut remote_texts) = (Vec::new(), Vec::new());
    let neg_image = index(neg_image, &mut remote_images);
    let neg_text = index(neg_text, &mut remote_texts);
    let image_kv = if remote_images.is_empty() {
        image_kv.to_vec()
    } else {
        let feats = global.features::<B>(&remote_images, &model.query_tokens.device())?;
        let remote = model.image_key_values(feats);
        image_kv.iter().zip(remote).map(|(local, remote)| local.clone().zip(remote).map(|(l, r)| l.cat_batch(r))).collect()
    };
    let mut text = batch.text.clone();
    let extra = global.text.select(&remote_texts);
    text.ids.extend(extra.ids);
    text.mask.extend(extra.mask);
    Ok(Extended { image_kv, text, neg_image, neg_text })
}

/// The stage-one loss of this peer's slice of a global batch split across `peers` (LAVIS's
/// data parallelism): ITC rows span the whole batch, hard negatives are drawn from the global
/// similarity rows, and every term is this peer's share of the global mean, so that summing the
/// peers' gradients gives the one-device gradient of the whole batch.
pub fn stage1_loss_across<B: Kernels>(
    model: &QFormer<B>,
    batch: &Stage1Batch<B>,
    cfg: &ObjectiveConfig,
    sampler: &NegativeSampler,
    train: bool,
    peers: &dyn Peers,
) -> Result<Stage1Output<B>> {
    cfg.validate(peers.count(), "objectives")?;
    let several = peers.count() > 1;
    if several && matches!(cfg.negatives, NegativeMode::Explicit { .. }) {
        return Err(Error::input("neg_image_idx", "explicit negatives index one device's batch"));
    }
    let device = model.query_tokens.device();
    let (b, q) = (batch.batch_size(), model.num_query);
    let text = &batch.text;
    let mining = cfg.itm.enabled && !matches!(cfg.negatives, NegativeMode::Explicit { .. });
    let global = GlobalBatch::exchange(batch, peers, several && cfg.itm.enabled)?;
    let positives = global.positives();
    // This peer's share of a mean over `global` items of which it holds `local`.
    let share = |t: Tensor<B, 1>, local: usize, global: usize| if several { t.mul_scalar(local as f64 / global as f64) } else { t };
    // Text rows join the unimodal pass when ITC needs them or negatives must be mined.
    let with_text = cfg.itc.enabled || mining;
    let with_queries = with_text || cfg.itg.enabled;

    let image_kv = model.image_key_values(batch.image_feats.clone());

    // Unimodal pass: [queries; text] where neither sees the other. Its query rows are also the
    // ITG prefix (queries see only queries under the multimodal causal mask too).
    let unimodal_keys = train.then(|| batch.dropout_keys(pass::UNIMODAL));
    let unimodal = with_queries.then(|| {
        let ids = with_text.then(|| text.ids_tensor(&device));
        let mask = with_text.then(|| AttentionMask::unimodal(q, &text.mask).to_additive::<B>(&device));
        let embeds = model.embed(Some(model.queries(b)), ids, unimodal_keys.as_ref());
        // Only the queries and [CLS] of the last layer are read.
        let pass = Pass::with_image(embeds, q, &image_kv).masked(mask).dropout(unimodal_keys.as_ref());
        model.encode(if with_text { pass.reading(q + 1) } else { pass })
    });

    let mut out = Stage1Output {
        loss: Tensor::zeros([1], &device),
        itc: None,
        itm: None,
        itg: None,
        sim_i2t: None,
        itm_logits: None,
        itm_labels: None,
        sampler: SamplerStats::default(),
    };
    let mut sims = None;
    if let (true, Some(enc)) = (with_text, &unimodal) {
        let [_, _, d] = enc.hidden.dims();
        let image = normalize(model.project_image(enc.hidden.clone().slice([0..b, 0..q, 0..d])));
        let text_cls = normalize(model.project_text(enc.hidden.clone().slice([0..b, q..q + 1, 0..d]).reshape([b, d])));
        let all = if several {
            gather_features(&global.split, peers, &image, &text_cls)?
        } else if cfg.itc_gradient == ItcGradient::Full {
            (image.clone(), text_cls.clone())
        } else {
            (image.clone().detach(), text_cls.clone().detach())
        };
        let (sim_i2t, sim_t2i) = if cfg.itc.enabled {
            let itc = itc_loss((image, text_cls), all, model.temperature(), &positives, cfg.label_smoothing);
            out.itc = Some(share(itc.loss, b, global.split.total()));
            (itc.sim_i2t, itc.sim_t2i)
        } else {
            similarities(image.detach(), text_cls.detach(), all.0.detach(), all.1.detach(), model.temperature().detach())
        };
        out.sim_i2t = Some(sim_i2t.clone());
        sims = Some((sim_i2t, sim_t2i));
    }

    if cfg.itm.enabled {
        // Negative image for each text from its text-to-image row; negative text for each image
        // from its image-to-text row. `positives` is symmetric, so it serves both directions.
        // Only a mode that draws from the similarities reads them back (explicit indices do not).
        let mode = &cfg.negatives;
        let (t2i, i2t) = match sims {
            Some((sim_i2t, sim_t2i)) if !matches!(mode, NegativeMode::Explicit { .. }) => host_rows(sim_t2i, sim_i2t),
            _ => (Vec::new(), Vec::new()),
        };
        let (neg_image, s1) = sampler.pick(mode, Direction::ImageForText, &t2i, &positives, &batch.keys)?;
        let (neg_text, s2) = sampler.pick(mode, Direction::TextForImage, &i2t, &positives, &batch.keys)?;
        out.sampler = s1;
        out.sampler += s2;
        let ext = extend(model, &global, batch, &image_kv, (&neg_image, &neg_text))?;
        let pairs = ItmPairs::new(&ext.neg_image, &ext.neg_text, &batch.keys);
        let itm = itm_loss(model, &ext.image_kv, &ext.text, &pairs, train);
        out.itm = Some(share(itm.loss, pairs.labels.len(), global.itm_pairs()));
        out.itm_labels = Some(if several { (global.split.total(), global.itm_pairs()) } else { (b, pairs.labels.len()) });
        out.itm_logits = Some(itm.logits);
    }

    if cfg.itg.enabled {
        let enc = unimodal.as_ref().expect("ITG runs the unimodal pass");
        let query_kv: Vec<_> = enc.key_values.iter().map(|kv| kv.narrow_seq(0, q)).collect();
        let keys = train.then(|| batch.dropout_keys(pass::ITG));
        let loss = itg_loss(model, &query_kv, text, model.bos_token_id, cfg.label_smoothing, keys.as_ref());
        out.itg = Some(share(loss, itg::targets(text).0.len(), global.itg_tokens()));
    }

    out.loss = [(cfg.itc, &out.itc), (cfg.itm, &out.itm), (cfg.itg, &out.itg)]
        .into_iter()
        .filter_map(|(sw, term)| term.as_ref().map(|t| t.clone().mul_scalar(sw.weight)))
        .reduce(|a, b| a + b)
        .expect("an objective is enabled");
    Ok(out)
}
