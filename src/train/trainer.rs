//! One optimizer step, and the only place that names the step's random draws, runs the loss,
//! accumulates micro-batches, sums over peers, clips, updates and clamps the temperature:
//! training, the benchmark and the tests all step through it.

use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::tensor::Tensor;

use super::collective::Exchange;
use super::diagnostics::constant_answer_loss;
use super::gradients::GradAccumulator;
use super::optim::AdamW;
use crate::data::text::TextBatch;
use crate::kernels::TrainBackend;
use crate::model::qformer::TEMP_RANGE;
use crate::model::QFormer;
use crate::objectives::{stage1_loss_across, NegativeSampler, ObjectiveConfig, Stage1Batch};
use crate::util::error::Result;
use crate::util::host::to_f64;
use crate::util::seed::mix;

/// Stream tags that keep the seeds of the different random consumers apart.
const SAMPLE_STREAM: u64 = 0x5a3b_1e01;
const SAMPLER_STREAM: u64 = 0x5a3b_1e00;

/// The sums of a step's loss over its micro-batches and every peer. Each peer's values are its
/// share of the global mean, so their sum is the global batch's value.
#[derive(Clone, Debug, Default)]
pub struct StepTotals {
    pub loss: f64,
    /// ITC, ITM and ITG (`None`: switched off).
    pub terms: [Option<f64>; 3],
    /// The loss of a constant answer for the step's ITM label mix ([`constant_answer_loss`]);
    /// the label mix is global, so this is not summed over peers.
    pub itm_constant: Option<f64>,
    pub sampler_fallbacks: usize,
    /// Some peer asked to stop after this step.
    pub stop: bool,
}

impl StepTotals {
    /// The exchanged values: loss, the three terms (0 when off), fallbacks, stop.
    fn to_values(&self) -> Vec<f32> {
        let [itc, itm, itg] = self.terms.map(|t| t.unwrap_or(0.0));
        [self.loss, itc, itm, itg, self.sampler_fallbacks as f64, f64::from(u8::from(self.stop))].map(|v| v as f32).to_vec()
    }

    /// These totals with the values summed over peers ([`StepTotals::to_values`]'s order).
    fn with_values(self, v: &[f32]) -> Self {
        let v: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        Self {
            loss: v[0],
            terms: std::array::from_fn(|i| self.terms[i].map(|_| v[1 + i])),
            sampler_fallbacks: v[4] as usize,
            stop: v[5] > 0.0,
            ..self
        }
    }
}

/// A step's gradients, summed over micro-batches and peers, with its totals: the half of a step
/// before the update ([`Trainer::gradients`]).
pub struct StepGradients<B: TrainBackend> {
    pub grads: GradAccumulator<B>,
    pub totals: StepTotals,
    /// Bytes each peer all-reduced (0 on one device).
    pub bytes_reduced: u64,
    started: Instant,
    forward_s: f64,
}

/// What one step did, over every peer.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    pub totals: StepTotals,
    pub grad_norm: f64,
    /// The update was skipped: the loss or a gradient was not finite.
    pub skipped_update: bool,
    /// Bytes each peer all-reduced in the step (0 on one device).
    pub bytes_reduced: u64,
    /// Seconds in the loss forward (values read back), in backward and the exchange of
    /// gradients, and in the update.
    pub phases: [f64; 3],
}

/// How a trainer steps: gradient clipping and the seed of its random draws.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// Global-norm clipping threshold; off when `None`.
    pub clip: Option<f64>,
    pub seed: u64,
}

/// One peer's model and optimizer, and how a step is taken.
pub struct Trainer<B: TrainBackend> {
    pub model: QFormer<B>,
    pub optim: AdamW<B>,
    objectives: ObjectiveConfig,
    options: StepOptions,
    sampler: NegativeSampler,
    peers: Box<dyn Exchange<B::InnerBackend>>,
}

/// Projects the temperature back into range after an update.
fn clamp_temperature<B: TrainBackend>(mut model: QFormer<B>) -> QFormer<B> {
    let id = model.temp.id;
    let value = model.temp.val().inner().clamp(TEMP_RANGE.0, TEMP_RANGE.1);
    model.temp = Param::initialized(id, Tensor::from_inner(value).require_grad());
    model
}

impl<B: TrainBackend> Trainer<B> {
    pub fn new(
        model: QFormer<B>,
        optim: AdamW<B>,
        objectives: ObjectiveConfig,
        options: StepOptions,
        peers: Box<dyn Exchange<B::InnerBackend>>,
    ) -> Self {
        let sampler = NegativeSampler::new(mix(options.seed, SAMPLER_STREAM));
        Self { model, optim, objectives, options, sampler, peers }
    }

    /// A micro-batch whose rows are named by their stream positions: every random draw of a row
    /// (dropout masks, its hard negatives) is a function of (seed, position, pass, site), the
    /// same on any peer, at any thread count and after a resume.
    pub fn batch(&self, feats: Tensor<B, 3>, text: TextBatch, image_ids: Vec<i64>, positions: &[u64]) -> Result<Stage1Batch<B>> {
        let keys = positions.iter().map(|&p| mix(mix(self.options.seed, SAMPLE_STREAM), p)).collect();
        Stage1Batch::new(feats, text, Some(image_ids))?.keyed(keys)
    }

    /// One optimizer step over `micro` (the micro-batches of this peer's slice) at learning rate
    /// `lr`. `stop` asks every peer to stop after this step ([`StepTotals::stop`]).
    pub fn step(&mut self, micro: &[Stage1Batch<B>], lr: f64, stop: bool) -> Result<StepReport> {
        let gradients = self.gradients(micro, stop)?;
        Ok(self.apply(gradients, lr))
    }

    /// The first half of a step: the loss and gradients of every micro-batch, summed over them
    /// and over every peer.
    pub fn gradients(&self, micro: &[Stage1Batch<B>], stop: bool) -> Result<StepGradients<B>> {
        let started = Instant::now();
        let accum = micro.len() as f64;
        let mut grads = GradAccumulator::new(&self.model);
        let mut totals = StepTotals { stop, ..StepTotals::default() };
        let mut forward_s = 0.0;
        for batch in micro {
            let t = Instant::now();
            let out = stage1_loss_across(&self.model, batch, &self.objectives, &self.sampler, true, self.peers.as_ref())?;
            let terms: Vec<Tensor<B::InnerBackend, 1>> = [Some(&out.loss), out.itc.as_ref(), out.itm.as_ref(), out.itg.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| t.clone().inner())
                .collect();
            // One read-back for every term.
            let mut host = to_f64(Tensor::cat(terms, 0)).into_iter();
            totals.loss += host.next().unwrap_or(f64::NAN) / accum;
            for (i, term) in [&out.itc, &out.itm, &out.itg].into_iter().enumerate() {
                if term.is_some() {
                    *totals.terms[i].get_or_insert(0.0) += host.next().unwrap_or(f64::NAN) / accum;
                }
            }
            totals.sampler_fallbacks += out.sampler.fallbacks;
            if let Some(c) = out.itm_labels.and_then(|(positives, pairs)| constant_answer_loss(positives, pairs)) {
                totals.itm_constant = Some(totals.itm_constant.unwrap_or(0.0) + c / accum);
            }
            forward_s += t.elapsed().as_secs_f64();
            grads.add(&self.model, &out.loss.div_scalar(accum).backward());
        }
        let mut bytes_reduced = grads.all_sum(self.peers.as_ref())?;
        if self.peers.count() > 1 {
            // Summed in f32 (the exchange's type); on one device the f64 sums stay as they are.
            let values = totals.to_values();
            bytes_reduced += (values.len() * 4) as u64;
            let summed = self.peers.all_sum(values)?;
            totals = totals.with_values(&summed);
        }
        Ok(StepGradients { grads, totals, bytes_reduced, started, forward_s })
    }

    /// The second half of a step: clip the summed gradients and update, unless the loss or a
    /// gradient is not finite (then the update is skipped and reported).
    pub fn apply(&mut self, gradients: StepGradients<B>, lr: f64) -> StepReport {
        let StepGradients { mut grads, totals, bytes_reduced, started, forward_s } = gradients;
        let grad_norm = grads.norm();
        let backward_s = started.elapsed().as_secs_f64() - forward_s;
        let skipped_update = !(totals.loss.is_finite() && grad_norm.is_finite());
        let update = Instant::now();
        if !skipped_update {
            if let Some(clip) = self.options.clip.filter(|&c| grad_norm > c) {
                grads.scale(clip / (grad_norm + 1e-6));
            }
            let lr_model = self.optim.update(self.model.clone(), &grads, lr);
            self.model = clamp_temperature(lr_model);
        }
        StepReport { totals, grad_norm, skipped_update, bytes_reduced, phases: [forward_s, backward_s, update.elapsed().as_secs_f64()] }
    }

    /// The model for evaluation (no autodiff).
    pub fn valid(&self) -> QFormer<B::InnerBackend> {
        self.model.valid()
    }
}
