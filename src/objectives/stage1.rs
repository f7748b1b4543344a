//! One stage-one loss evaluation, in the order of the BLIP-2 figure: the unimodal pass (ITC, and
//! the query keys/values ITG reuses), hard-negative mining, the ITM pass, the ITG pass, and the
//! weighted sum. A switched-off objective costs nothing: no pass, no mask, no head.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::itc::{itc_loss, normalize, similarities};
use super::itg::itg_loss;
use super::itm::{itm_loss, ItmPairs};
use super::masks::AttentionMask;
use super::sampler::{Direction, NegativeMode, NegativeSampler, SamplerStats};
use super::{ItcGradient, Stage1Batch};
use crate::kernels::Kernels;
use crate::model::{Pass, QFormer};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn any_enabled(&self) -> bool {
        self.itc.enabled || self.itm.enabled || self.itg.enabled
    }
}

/// Every term of one evaluation. Disabled terms are `None`.
pub struct Stage1Output<B: Kernels> {
    /// `w_itc·itc + w_itm·itm + w_itg·itg`.
    pub loss: Tensor<B, 1>,
    pub itc: Option<Tensor<B, 1>>,
    pub itm: Option<Tensor<B, 1>>,
    pub itg: Option<Tensor<B, 1>>,
    /// `[B, B]` ITC logits, when they were computed.
    pub sim_i2t: Option<Tensor<B, 2>>,
    /// `[pairs, 2]`.
    pub itm_logits: Option<Tensor<B, 2>>,
    pub sampler: SamplerStats,
}

/// Host copy of a `[B, N]` tensor for the sampler.
fn host_rows<B: Kernels>(t: Tensor<B, 2>) -> Vec<f32> {
    to_f32(t.detach())
}

pub fn stage1_loss<B: Kernels>(
    model: &QFormer<B>,
    batch: &Stage1Batch<B>,
    cfg: &ObjectiveConfig,
    sampler: &mut NegativeSampler,
    train: bool,
) -> Result<Stage1Output<B>> {
    if !cfg.any_enabled() {
        return Err(Error::config("objectives", "at least one objective must be enabled", "objectives"));
    }
    let device = model.query_tokens.device();
    let (b, q) = (batch.batch_size(), model.num_query);
    let text = &batch.text;
    let positives = batch.positives();
    let mining = cfg.itm.enabled && !matches!(cfg.negatives, NegativeMode::Explicit { .. });
    // Text rows join the unimodal pass when ITC needs them or negatives must be mined.
    let with_text = cfg.itc.enabled || mining;
    let with_queries = with_text || cfg.itg.enabled;

    let image_kv = model.image_key_values(batch.image_feats.clone());

    // Unimodal pass: [queries; text] where neither sees the other. Its query rows are also the
    // ITG prefix (queries see only queries under the multimodal causal mask too).
    let unimodal = with_queries.then(|| {
        let ids = with_text.then(|| text.ids_tensor(&device));
        let mask = with_text.then(|| AttentionMask::unimodal(q, &text.mask).to_additive::<B>(&device));
        let embeds = model.embed(Some(model.queries(b)), ids, train);
        // Only the queries and [CLS] of the last layer are read.
        let pass = Pass::with_image(embeds, q, &image_kv).masked(mask).training(train);
        model.encode(if with_text { pass.reading(q + 1) } else { pass })
    });

    let mut out = Stage1Output {
        loss: Tensor::zeros([1], &device),
        itc: None,
        itm: None,
        itg: None,
        sim_i2t: None,
        itm_logits: None,
        sampler: SamplerStats::default(),
    };
    let mut sims = None;
    if let (true, Some(enc)) = (with_text, &unimodal) {
        let [_, _, d] = enc.hidden.dims();
        let image = model.project_image(enc.hidden.clone().slice([0..b, 0..q, 0..d]));
        let text_cls = model.project_text(enc.hidden.clone().slice([0..b, q..q + 1, 0..d]).reshape([b, d]));
        let (sim_i2t, sim_t2i) = if cfg.itc.enabled {
            let itc = itc_loss(image, text_cls, model.temperature(), &positives, cfg.itc_gradient, cfg.label_smoothing);
            out.itc = Some(itc.loss);
            (itc.sim_i2t, itc.sim_t2i)
        } else {
            similarities(normalize(image).detach(), normalize(text_cls).detach(), model.temperature().detach(), cfg.itc_gradient)
        };
        out.sim_i2t = Some(sim_i2t.clone());
        sims = Some((sim_i2t, sim_t2i));
    }

    if cfg.itm.enabled {
        // Negative image for each text from its text-to-image row; negative text for each image
        // from its image-to-text row. `positives` is symmetric, so it serves both directions.
        let (t2i, i2t) = match sims {
            Some((sim_i2t, sim_t2i)) => (host_rows(sim_t2i), host_rows(sim_i2t)),
            None => (Vec::new(), Vec::new()),
        };
        let mode = &cfg.negatives;
        let (neg_image, s1) = sampler.pick(mode, Direction::ImageForText, &t2i, &positives)?;
        let (neg_text, s2) = sampler.pick(mode, Direction::TextForImage, &i2t, &positives)?;
        out.sampler = s1;
        out.sampler += s2;
        let itm = itm_loss(model, &image_kv, text, &ItmPairs::new(&neg_image, &neg_text), train);
        out.itm = Some(itm.loss);
        out.itm_logits = Some(itm.logits);
    }

    if cfg.itg.enabled {
        let enc = unimodal.as_ref().expect("ITG runs the unimodal pass");
        let query_kv: Vec<_> = enc.key_values.iter().map(|kv| kv.narrow_seq(0, q)).collect();
        out.itg = Some(itg_loss(model, &query_kv, text, model.bos_token_id, cfg.label_smoothing, train));
    }

    out.loss = [(cfg.itc, &out.itc), (cfg.itm, &out.itm), (cfg.itg, &out.itg)]
        .into_iter()
        .filter_map(|(sw, term)| term.as_ref().map(|t| t.clone().mul_scalar(sw.weight)))
        .reduce(|a, b| a + b)
        .expect("an objective is enabled");
    Ok(out)
}
