//! Batches for training and evaluation. Everything random is a pure function of the seed and the
//! sample's position in the stream (epoch order, caption choice, augmentation), so a run resumed
//! at a position sees exactly the batches it would have seen. A step's global batch is a fixed
//! window of stream positions; each peer decodes its contiguous slice of it, and a sample that
//! cannot be used is dropped from its step (the batch shrinks by one) rather than replaced, so the
//! window, and every sample's position, stay the same whatever the number of peers. Images are
//! decoded and transformed in parallel (rayon) on a background thread that stays `prefetch`
//! batches ahead of the step.

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::annotations::{ImageSource, Record, Skip};
pub use super::dataset::Dataset;
use super::feature_cache::FeatureCache;
use super::images::{decode, eval_transform, train_transform, AugmentConfig};
use super::text::TextBatch;
use super::text::TextEncoder;
use crate::util::error::{Error, Result};
use crate::util::seed::mix;

/// How samples become encoder inputs: pixels, or cached features.
#[derive(Clone, Debug)]
pub struct Transform {
    pub image_size: u32,
    pub max_pixels: u64,
    /// Training augmentation; `None` for the eval transform.
    pub augment: Option<AugmentConfig>,
    /// Read frozen features from here instead of decoding images.
    pub cache: Option<Arc<FeatureCache>>,
}

/// A batch on the host.
pub struct HostBatch {
    /// `[n, 3, size, size]` normalised pixels, or `[n, tokens, width]` cached features.
    pub inputs: Vec<f32>,
    pub text: TextBatch,
    pub image_ids: Vec<i64>,
    /// Stream position of each row: the sample's name for its random draws.
    pub positions: Vec<u64>,
    /// Records of this slice skipped while building it.
    pub skipped: Vec<Skip>,
    /// Stream positions of this slice (kept and skipped).
    pub seen: u64,
    /// Stream position after the whole window: where a resumed run continues.
    pub end: u64,
}

/// Shuffled order of one epoch, from (seed, epoch).
struct Order {
    seed: u64,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    fn new(seed: u64, n: usize) -> Self {
        let mut o = Self { seed, epoch: u64::MAX, perm: (0..n).collect() };
        o.set_epoch(0);
        o
    }
    fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.perm = (0..self.perm.len()).collect();
            self.perm.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.seed, epoch)));
            self.epoch = epoch;
        }
    }
    fn index(&mut self, position: u64) -> usize {
        let n = self.perm.len() as u64;
        self.set_epoch(position / n);
        self.perm[(position % n) as usize]
    }
}

/// Decodes and transforms one record; picks its caption.
pub(super) fn prepare_sample(
    record: &Record,
    transform: &Transform,
    seed: u64,
    position: u64,
) -> std::result::Result<(Vec<f32>, String), Skip> {
    // The annotation line, and in the reason the image file it names (a tar member's origin
    // names it already).
    let skip = |reason: String| {
        let reason = match &record.image {
            ImageSource::File(path) if !reason.contains(&*path.to_string_lossy()) => format!("image {}: {reason}", path.display()),
            _ => reason,
        };
        Skip { origin: record.origin.clone(), reason }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, position));
    let caption = record.captions[rng.random_range(0..record.captions.len())].clone();
    if let Some(cache) = &transform.cache {
        let view = cache.pick_view(&mut rng);
        return cache.features(&record.image, view).map(|f| (f, caption)).map_err(skip);
    }
    let bytes = record.image.read().map_err(|e| skip(format!("cannot read image: {e}")))?;
    let img = decode(&bytes, transform.max_pixels).map_err(skip)?;
    let pixels = match &transform.augment {
        Some(aug) => train_transform(&img, transform.image_size, aug, &mut rng),
        None => eval_transform(&img, transform.image_size),
    };
    Ok((pixels, caption))
}

/// Builds this peer's slice (`slice`, positions relative to `start`) of the window of `window`
/// positions that starts at `start`.
fn build_batch(
    data: &Dataset,
    text: &TextEncoder,
    transform: &Transform,
    seed: u64,
    order: &mut Order,
    (start, window): (u64, u64),
    slice: &Range<u64>,
) -> Result<HostBatch> {
    let positions: Vec<(u64, usize)> = (start + slice.start..start + slice.end).map(|p| (p, order.index(p))).collect();
    let results: Vec<_> = positions
        .par_iter()
        .map(|&(p, i)| {
            prepare_sample(&data.records[i], transform, seed, p).and_then(|(px, cap)| {
                // A caption that cleans to nothing is as unusable as a missing one.
                if super::text::clean_caption(&cap, text.max_words).is_empty() {
                    Err(Skip { origin: data.records[i].origin.clone(), reason: "empty caption after cleaning".into() })
                } else {
                    Ok((px, cap, i, p))
                }
            })
        })
        .collect();
    let (mut inputs, mut captions, mut image_ids, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok((px, cap, i, p)) => {
                inputs.extend(px);
                captions.push(cap);
                image_ids.push(data.image_ids[i]);
                kept.push(p);
            }
            Err(s) => skipped.push(s),
        }
    }
    if captions.is_empty() {
        return Err(Error::input(
            "data",
            format!(
                "no usable sample at stream positions {}..{}; last skip: {}",
                start + slice.start,
                start + slice.end,
                skipped.last().map_or(String::new(), |s: &Skip| s.to_string())
            ),
        ));
    }
    let (ids, mask) = text.encode(&captions)?;
    Ok(HostBatch {
        inputs,
        text: TextBatch::new(ids, mask, text.vocab_size)?,
        image_ids,
        positions: kept,
        skipped,
        seen: slice.end - slice.start,
        end: start + window,
    })
}

/// Produces consecutive batches from a start position on a background thread.
pub struct Prefetcher {
    rx: Receiver<Result<HostBatch>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Windows of `batch_size` positions from `start`; this peer's rows are `slice` of each
    /// (`0..batch_size` on one device).
    pub fn start(
        data: Arc<Dataset>,
        text: Arc<TextEncoder>,
        transform: Transform,
        seed: u64,
        start: u64,
        (batch_size, slice): (usize, Range<usize>),
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch);
        let slice = slice.start as u64..slice.end as u64;
        let handle = std::thread::spawn(move || {
            let mut order = Order::new(seed, data.records.len());
            let mut position = start;
            loop {
                let batch = build_batch(&data, &text, &transform, seed, &mut order, (position, batch_size as u64), &slice);
                let stop = batch.is_err();
                if let Ok(b) = &batch {
                    position = b.end;
                }
                if tx.send(batch).is_err() || stop {
                    return;
                }
            }
        });
        Self { rx, handle: Some(handle) }
    }

    pub fn next_batch(&mut self) -> Result<HostBatch> {
        self.rx.recv().map_err(|_| Error::input("data", "the data thread stopped"))?
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, ending its loop.
        let (_, dead) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
