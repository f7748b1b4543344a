//! One optimizer step, and the only place that names the step's random draws, runs the loss,
//! accumulates micro-batches, sums over peers, clips, updates and clamps the temperature:
//! training, the benchmark and the tests all step through it.

use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::tensor::Tensor;

use super::collective::Exchange;
use super::diagnostics::constant_answer_loss;
use super::optim::{AdamW, GradAccumulator};
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

/// What one step did, over every peer.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// The global batch's loss and its ITC, ITM and ITG terms (micro-batches averaged).
    pub loss: f64,
    pub terms: [Option<f64>; 3],
    /// The loss of a constant answer for the step's ITM label mix ([`constant_answer_loss`]).
    pub itm_constant: Option<f64>,
    pub grad_norm: f64,
    /// The update was skipped: the loss or a gradient was not finite.
    pub skipped_update: bool,
    pub sampler_fallbacks: usize,
    /// Some peer asked to stop after this step.
    pub stop: bool,
    /// Bytes each peer all-reduced in the step (0 on one device).
    pub bytes_reduced: u64,
    /// Seconds in the loss forward (values read back), in backward and the exchange of
    /// gradients, and in the update.
    pub phases: [f64; 3],
}

/// One peer's model and optimizer, and how a step is taken.
pub struct Trainer<B: TrainBackend> {
    pub model: QFormer<B>,
    pub optim: AdamW<B>,
    objectives: ObjectiveConfig,
    clip: Option<f64>,
    seed: u64,
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
        (clip, seed): (Option<f64>, u64),
        peers: Box<dyn Exchange<B::InnerBackend>>,
    ) -> Self {
        Self { model, optim, objectives, clip, seed, sampler: NegativeSampler::new(mix(seed, SAMPLER_STREAM)), peers }
    }

    pub fn peers(&self) -> &dyn Exchange<B::InnerBackend> {
        self.peers.as_ref()
    }

    /// A micro-batch whose rows are named by their stream positions: every random draw of a row
    /// (dropout masks, its hard negatives) is a function of (seed, position, pass, site), the
    /// same on any peer, at any thread count and after a resume.
    pub fn batch(&self, feats: Tensor<B, 3>, text: TextBatch, image_ids: Vec<i64>, positions: &[u64]) -> Result<Stage1Batch<B>> {
        let keys = positions.iter().map(|&p| mix(mix(self.seed, SAMPLE_STREAM), p)).collect();
        Stage1Batch::new(feats, text, Some(image_ids))?.keyed(keys)
    }

    /// One optimizer step over `micro` (the micro-batches of this peer's slice) at learning rate
    /// `lr`. `stop` asks every peer to stop after this step ([`StepReport::stop`]).
    pub fn step(&mut self, micro: &[Stage1Batch<B>], lr: f64, stop: bool) -> Result<StepReport> {
        let started = Instant::now();
        let accum = micro.len() as f64;
        let mut grads = GradAccumulator::new(&self.model);
        // Loss, ITC, ITM, ITG, fallbacks, stop.
        let mut values = [0.0f64; 6];
        let mut present = [false; 3];
        let mut forward = 0.0;
        let mut itm_constant = None;
        for batch in micro {
            let t = Instant::now();
            let out = stage1_loss_across(&self.model, batch, &self.objectives, &self.sampler, true, self.peers.as_peers())?;
            let terms: Vec<Tensor<B::InnerBackend, 1>> = [Some(&out.loss), out.itc.as_ref(), out.itm.as_ref(), out.itg.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| t.clone().inner())
                .collect();
            // One read-back for every term.
            let mut host = to_f64(Tensor::cat(terms, 0)).into_iter();
            values[0] += host.next().unwrap_or(f64::NAN) / accum;
            for (i, term) in [&out.itc, &out.itm, &out.itg].into_iter().enumerate() {
                if term.is_some() {
                    present[i] = true;
                    values[1 + i] += host.next().unwrap_or(f64::NAN) / accum;
                }
            }
            values[4] += out.sampler.fallbacks as f64;
            if let Some(c) = out.itm_labels.and_then(|(positives, pairs)| constant_answer_loss(positives, pairs)) {
                itm_constant = Some(itm_constant.unwrap_or(0.0) + c / accum);
            }
            forward += t.elapsed().as_secs_f64();
            grads.add(&self.model, &out.loss.div_scalar(accum).backward());
        }
        values[5] = f64::from(u8::from(stop));
        let mut bytes_reduced = grads.all_sum(self.peers.as_ref())?;
        if self.peers.count() > 1 {
            // Each peer's terms are its share of the global mean: their sum is the global loss.
            let summed = self.peers.all_sum(values.iter().map(|&v| v as f32).collect())?;
            values = std::array::from_fn(|i| f64::from(summed[i]));
            bytes_reduced += (values.len() * 4) as u64;
        }
        let grad_norm = grads.norm();
        let backward = started.elapsed().as_secs_f64() - forward;
        let skipped_update = !(values[0].is_finite() && grad_norm.is_finite());
        let update = Instant::now();
        if !skipped_update {
            if let Some(clip) = self.clip.filter(|&c| grad_norm > c) {
                grads.scale(clip / (grad_norm + 1e-6));
            }
            let lr_model = self.optim.update(self.model.clone(), &grads, lr);
            self.model = clamp_temperature(lr_model);
        }
        Ok(StepReport {
            loss: values[0],
            terms: std::array::from_fn(|i| present[i].then_some(values[1 + i])),
            itm_constant,
            grad_norm,
            skipped_update,
            sampler_fallbacks: values[4] as usize,
            stop: values[5] > 0.0,
            bytes_reduced,
            phases: [forward, backward, update.elapsed().as_secs_f64()],
        })
    }

    /// The model for evaluation (no autodiff).
    pub fn valid(&self) -> QFormer<B::InnerBackend> {
        self.model.valid()
    }
}
