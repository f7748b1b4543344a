//! Image-text retrieval by ITC similarity (query-max cosine, no temperature): recall@K in both
//! directions. An image counts a hit when any of its captions is within the top K.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::loader::EvalSet;
use crate::model::frozen::Frozen;
use crate::model::QFormer;
use super::scoring::{image_embeds, itc_similarities, text_embeds};

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

/// `sims`: `images × texts`, row-major; `caption_image[t]`: the image caption `t` describes.
pub fn recall(sims: &[f32], images: usize, caption_image: &[usize]) -> Recall {
    let texts = caption_image.len();
    let rank_of = |scores: &[f32], hit: &dyn Fn(usize) -> bool| -> usize {
        // Rank of the best-scoring ground truth: how many candidates score strictly higher.
        let best = (0..scores.len()).filter(|&j| hit(j)).map(|j| scores[j]).fold(f32::NEG_INFINITY, f32::max);
        scores.iter().filter(|&&s| s > best).count()
    };
    let i2t: Vec<usize> = (0..images).map(|i| rank_of(&sims[i * texts..(i + 1) * texts], &|t| caption_image[t] == i)).collect();
    let t2i: Vec<usize> = (0..texts)
        .map(|t| {
            let column: Vec<f32> = (0..images).map(|i| sims[i * texts + t]).collect();
            rank_of(&column, &|i| i == caption_image[t])
        })
        .collect();
    let r = |ranks: &[usize], k: usize| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64;
    Recall { i2t_r1: r(&i2t, 1), i2t_r5: r(&i2t, 5), i2t_r10: r(&i2t, 10), t2i_r1: r(&t2i, 1), t2i_r5: r(&t2i, 5), t2i_r10: r(&t2i, 10) }
}

/// Embeds every held-out image and caption (eval mode) and ranks by ITC similarity.
pub fn itc_recall<B: Backend>(model: &QFormer<B>, frozen: &Frozen<B>, set: &EvalSet, chunk: usize) -> Recall {
    let device = model.query_tokens.device();
    let per = frozen.input_len();
    let mut images = Vec::new();
    for start in (0..set.images).step_by(chunk) {
        let n = chunk.min(set.images - start);
        let feats = frozen.features(set.inputs[start * per..(start + n) * per].to_vec(), &device);
        images.push(image_embeds(model, feats).0);
    }
    let texts = set.captions.batch_size();
    let text: Vec<_> = (0..texts)
        .step_by(chunk)
        .map(|start| text_embeds(model, &set.captions.select(&(start..(start + chunk).min(texts)).collect::<Vec<_>>())))
        .collect();
    let sims = itc_similarities(Tensor::cat(images, 0), Tensor::cat(text, 0));
    let sims = sims.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    recall(&sims, set.images, &set.caption_image)
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
}
