//! ITM: image-text matching on positive pairs and mined hard negatives, through one bidirectional
//! pass whose image keys/values are gathered from the batch's (never re-projected).

use burn::tensor::Tensor;

use super::masks::AttentionMask;
use super::pass;
use crate::data::text::TextBatch;
use crate::kernels::{cross_entropy, DropoutKeys, Kernels};
use crate::model::{KeyValue, Pass, QFormer};
use crate::util::seed::mix;

/// The pairs scored by ITM, LAVIS's order: `B` positives, then (negative image, text b) for every
/// text with a negative, then (image b, negative text) for every image with one.
#[derive(Clone, Debug, PartialEq)]
pub struct ItmPairs {
    pub images: Vec<usize>,
    pub texts: Vec<usize>,
    /// 1 for a matching pair, 0 otherwise.
    pub labels: Vec<i64>,
    /// Dropout key of each pair: its anchor sample's key and its kind (positive, negative image
    /// for a text, negative text for an image), wherever the negative came from.
    pub keys: Vec<u64>,
}

impl ItmPairs {
    /// `neg_image[b]`: the negative image for text `b`; `neg_text[b]`: the negative text for
    /// image `b`; `sample_keys[b]`: sample `b`'s key.
    pub fn new(neg_image: &[Option<usize>], neg_text: &[Option<usize>], sample_keys: &[u64]) -> Self {
        let b = neg_image.len();
        let mut images: Vec<usize> = (0..b).collect();
        let mut texts: Vec<usize> = (0..b).collect();
        let mut labels = vec![1; b];
        let mut keys: Vec<u64> = sample_keys.iter().map(|&k| mix(k, pass::ITM_POSITIVE)).collect();
        for (t, img) in neg_image.iter().enumerate() {
            if let Some(img) = img {
                images.push(*img);
                texts.push(t);
                labels.push(0);
                keys.push(mix(sample_keys[t], pass::ITM_NEGATIVE_IMAGE));
            }
        }
        for (img, t) in neg_text.iter().enumerate() {
            if let Some(t) = t {
                images.push(img);
                texts.push(*t);
                labels.push(0);
                keys.push(mix(sample_keys[img], pass::ITM_NEGATIVE_TEXT));
            }
        }
        Self { images, texts, labels, keys }
    }
}

pub struct ItmOutput<B: Kernels> {
    pub loss: Tensor<B, 1>,
    /// `[pairs, 2]`.
    pub logits: Tensor<B, 2>,
}

/// Runs the bidirectional pass over the pairs and returns plain (unsmoothed) cross-entropy.
pub fn itm_loss<B: Kernels>(
    model: &QFormer<B>,
    image_kv: &[Option<KeyValue<B>>],
    text: &TextBatch,
    pairs: &ItmPairs,
    train: bool,
) -> ItmOutput<B> {
    let device = model.query_tokens.device();
    let n = pairs.labels.len();
    let q = model.num_query;
    let pair_kv: Vec<Option<KeyValue<B>>> = image_kv.iter().map(|kv| kv.as_ref().map(|kv| kv.select(&pairs.images))).collect();
    let pair_text = text.select(&pairs.texts);
    let mask = AttentionMask::bidirectional(q, &pair_text.mask).to_additive::<B>(&device);
    let keys = train.then(|| DropoutKeys::new(pairs.keys.clone()));
    let embeds = model.embed(Some(model.queries(n)), Some(pair_text.ids_tensor(&device)), keys.as_ref());
    let hidden = model.encode(Pass::with_image(embeds, q, &pair_kv).masked(Some(mask)).reading(q).dropout(keys.as_ref())).hidden;
    let [_, _, d] = hidden.dims();
    let logits = model.itm_logits(hidden.slice([0..n, 0..q, 0..d]));
    let labels: Vec<usize> = pairs.labels.iter().map(|&l| l as usize).collect();
    let loss = cross_entropy(logits.clone(), &labels, 0.0);
    ItmOutput { loss, logits }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_order_matches_lavis() {
        let p = ItmPairs::new(&[Some(2), Some(0), Some(1)], &[Some(1), Some(2), Some(0)], &[0, 1, 2]);
        assert_eq!(p.images, vec![0, 1, 2, 2, 0, 1, 0, 1, 2]);
        assert_eq!(p.texts, vec![0, 1, 2, 0, 1, 2, 1, 2, 0]);
        assert_eq!(p.labels, vec![1, 1, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn rows_without_negative_are_left_out() {
        let p = ItmPairs::new(&[None], &[None], &[7]);
        assert_eq!((p.images, p.texts, p.labels), (vec![0], vec![0], vec![1]));
    }
}
