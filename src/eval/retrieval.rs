//! Image-text retrieval by ITC similarity (query-max cosine, no temperature): recall@K in both
//! directions. An image counts a hit when any of its captions is within the top K.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::scoring::{image_side, itc_similarities, text_embeds};
use crate::data::eval_set::EvalSet;
use crate::kernels::Kernels;
use crate::model::frozen::Frozen;
use crate::model::QFormer;
use crate::util::error::Result;
use crate::util::host::to_f32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Image → text, percent.
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
    /// Text → image, percent.
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
}

impl Recall {
    /// Mean of image → text R@1/5/10 (LAVIS's `txt_r_mean`).
    pub fn i2t_mean(&self) -> f64 {
        (self.i2t_r1 + self.i2t_r5 + self.i2t_r10) / 3.0
    }

    /// Mean of text → image R@1/5/10 (LAVIS's `img_r_mean`).
    pub fn t2i_mean(&self) -> f64 {
        (self.t2i_r1 + self.t2i_r5 + self.t2i_r10) / 3.0
    }

    /// Mean of both (LAVIS's `r_mean`).
    pub fn mean(&self) -> f64 {
        (self.i2t_mean() + self.t2i_mean()) / 2.0
    }

    /// A named figure: `i2t_r1` ... `t2i_r10`, `i2t_mean`, `t2i_mean`, `mean`.
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "i2t_r1" => self.i2t_r1,
            "i2t_r5" => self.i2t_r5,
            "i2t_r10" => self.i2t_r10,
            "t2i_r1" => self.t2i_r1,
            "t2i_r5" => self.t2i_r5,
            "t2i_r10" => self.t2i_r10,
            "i2t_mean" => self.i2t_mean(),
            "t2i_mean" => self.t2i_mean(),
            "mean" => self.mean(),
            _ => return None,
        })
    }
}

/// Rank of the best-placed ground truth: how many candidates are placed strictly before it.
/// Candidates in the first tier (`first`) come before all others; within a tier, by score.
fn rank_of(scores: &[f32], first: impl Fn(usize) -> bool, hit: impl Fn(usize) -> bool) -> usize {
    let key = |j: usize| (first(j), scores[j]);
    let before = |a: (bool, f32), b: (bool, f32)| a.0 & !b.0 || (a.0 == b.0 && a.1 > b.1);
    let best = (0..scores.len()).filter(|&j| hit(j)).map(key).reduce(|a, b| if before(b, a) { b } else { a });
    best.map_or(scores.len(), |best| (0..scores.len()).filter(|&j| before(key(j), best)).count())
}

/// Recall from one score matrix per direction: `i2t` is `images × texts`, `t2i` is
/// `texts × images`, row-major; `caption_image[t]` is the image caption `t` describes.
pub fn recall_from_scores(i2t: &[f32], t2i: &[f32], images: usize, caption_image: &[usize]) -> Recall {
    recall_in_tiers(i2t, &|_, _| true, t2i, &|_, _| true, images, caption_image)
}

/// Recall where each query's candidates in its first tier (`i2t_first(image, text)`,
/// `t2i_first(text, image)`: a re-ranked top k) come before the rest, each part ordered by its
/// scores.
pub fn recall_in_tiers(
    i2t: &[f32],
    i2t_first: &dyn Fn(usize, usize) -> bool,
    t2i: &[f32],
    t2i_first: &dyn Fn(usize, usize) -> bool,
    images: usize,
    caption_image: &[usize],
) -> Recall {
    let texts = caption_image.len();
    let i2t: Vec<usize> =
        (0..images).map(|i| rank_of(&i2t[i * texts..(i + 1) * texts], |t| i2t_first(i, t), |t| caption_image[t] == i)).collect();
    let t2i: Vec<usize> =
        (0..texts).map(|t| rank_of(&t2i[t * images..(t + 1) * images], |i| t2i_first(t, i), |i| i == caption_image[t])).collect();
    let r = |ranks: &[usize], k: usize| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64;
    Recall { i2t_r1: r(&i2t, 1), i2t_r5: r(&i2t, 5), i2t_r10: r(&i2t, 10), t2i_r1: r(&t2i, 1), t2i_r5: r(&t2i, 5), t2i_r10: r(&t2i, 10) }
}

/// Recall from one similarity matrix `images × texts` used in both directions.
pub fn recall(sims: &[f32], images: usize, caption_image: &[usize]) -> Recall {
    let texts = caption_image.len();
    let t2i: Vec<f32> = (0..texts).flat_map(|t| (0..images).map(move |i| sims[i * texts + t])).collect();
    recall_from_scores(sims, &t2i, images, caption_image)
}

/// Frozen features `[n, P, W]` of the set's images `images`, in that order.
pub fn frozen_features<B: Kernels>(
    frozen: &Frozen<B>,
    set: &EvalSet,
    images: impl IntoIterator<Item = usize>,
    device: &B::Device,
) -> Result<Tensor<B, 3>> {
    let images: Vec<usize> = images.into_iter().collect();
    Ok(frozen.features(set.inputs_of(&images, frozen.input_len())?, device))
}

/// ITC similarities `[images × texts]` on the host. Image by chunk: the `[chunk · queries,
/// texts]` product and the chunk's keys/values are all that the device holds beside the text
/// embeddings, whatever the set's size (a 5k-image COCO test set at the `blip2` shape included).
pub fn itc_scores<B: Kernels>(model: &QFormer<B>, frozen: &Frozen<B>, set: &EvalSet, chunk: usize) -> Result<Vec<f32>> {
    let device = model.query_tokens.device();
    let texts = set.captions.batch_size();
    let text = Tensor::cat(
        (0..texts)
            .step_by(chunk)
            .map(|start| text_embeds(model, &set.captions.select(&(start..(start + chunk).min(texts)).collect::<Vec<_>>())))
            .collect(),
        0,
    );
    let mut sims = Vec::with_capacity(set.images * texts);
    for start in (0..set.images).step_by(chunk) {
        let feats = frozen_features(frozen, set, start..(start + chunk).min(set.images), &device)?;
        sims.extend(to_f32(itc_similarities(image_side(model, feats).embeds, text.clone())));
    }
    Ok(sims)
}

pub fn itc_recall<B: Kernels>(model: &QFormer<B>, frozen: &Frozen<B>, set: &EvalSet, chunk: usize) -> Result<Recall> {
    Ok(recall(&itc_scores(model, frozen, set, chunk)?, set.images, &set.caption_image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_on_a_hand_made_matrix() {
        // 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2.
        let caption_image = [0, 0, 1, 2];
        #[rustfmt::skip]
        let sims = [
            0.1, 0.9, 0.2, 0.3,   // image 0: its caption 1 ranks first
            0.8, 0.1, 0.5, 0.2,   // image 1: its caption 2 ranks second
            0.7, 0.6, 0.5, 0.4,   // image 2: its caption 3 ranks last
        ];
        let r = recall(&sims, 3, &caption_image);
        assert!((r.i2t_r1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((r.i2t_r5 - 100.0).abs() < 1e-9);
        // Caption 0: image 1 (0.8) and 2 (0.7) beat image 0 (0.1): rank 2. Caption 1: rank 0.
        // Caption 2: image 1 (0.5) ties image 2 (0.5): ties do not count against: rank 0.
        // Caption 3: image 0 (0.3) beats image 2 (0.4)? no: rank 0.
        assert!((r.t2i_r1 - 75.0).abs() < 1e-9);
        assert!((r.t2i_r5 - 100.0).abs() < 1e-9);
    }

    #[test]
    fn recall_from_separate_direction_scores_and_means() {
        // 2 images, 3 captions: captions 0 and 2 show image 0, caption 1 image 1.
        let caption_image = [0, 1, 0];
        let i2t = [0.1, 0.5, 0.9, 0.8, 0.2, 0.1]; // image 0: caption 2 first (hit); image 1: rank 1
        let t2i = [0.2, 0.9, 0.3, 0.1, 0.7, 0.6]; // caption 0: rank 1; caption 1: rank 1; caption 2: hit
        let r = recall_from_scores(&i2t, &t2i, 2, &caption_image);
        assert_eq!((r.i2t_r1, r.i2t_r5), (50.0, 100.0));
        assert!((r.t2i_r1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((r.i2t_mean() - (50.0 + 100.0 + 100.0) / 3.0).abs() < 1e-9);
        assert_eq!(r.get("mean"), Some(r.mean()));
        assert_eq!(r.get("nope"), None);
    }
}
