//! A held-out set for retrieval: one entry per distinct image with all its captions. Its inputs
//! are read chunk by chunk when they are needed, so host memory holds the chunk being evaluated,
//! not the set: a 5,000-image COCO test split at the `blip2` shape would otherwise hold gigabytes
//! of pixels or features for the whole evaluation.

use rayon::prelude::*;

use super::annotations::{Record, Skip};
use super::dataset::Dataset;
use super::loader::{prepare_sample, Transform};
use super::text::{TextBatch, TextEncoder};
use crate::util::error::{Error, Result};

/// Where an eval set's encoder inputs come from.
pub enum EvalInputs {
    /// Every image's inputs in memory, `[images, …]` flattened (built in code, e.g. tests).
    Resident(Vec<f32>),
    /// Read per request from each image's record (its file, tar member or feature-cache entry)
    /// through the eval transform, which is deterministic: the same inputs every time.
    Streamed { records: Vec<Record>, transform: Transform },
}

/// Every image of an eval set in file order, eval transform, all captions: for retrieval.
pub struct EvalSet {
    pub inputs: EvalInputs,
    pub images: usize,
    pub captions: TextBatch,
    /// Image index of each caption.
    pub caption_image: Vec<usize>,
    pub skipped: Vec<Skip>,
}

impl EvalSet {
    /// `transform` should be the eval transform (no augmentation) or an eval-split cache.
    /// Records that share an `image_id` (or, without one, the same image file) are one image with
    /// all their captions, whatever the annotation format (a JSON list with caption lists, or one
    /// caption per JSONL/CSV line). `max_images` counts distinct images (all when 0). Every image
    /// is read once here, to skip the unreadable ones, and not kept.
    pub fn load(data: &Dataset, text: &TextEncoder, transform: &Transform, max_images: usize) -> Result<Self> {
        let mut groups: Vec<Vec<&Record>> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for r in &data.records {
            let key = match &r.image_id {
                Some(id) => format!("id:{id}"),
                None => format!("image:{:?}", r.image),
            };
            let next = groups.len();
            let g = *index.entry(key).or_insert(next);
            if g == next {
                if max_images > 0 && groups.len() == max_images {
                    continue;
                }
                groups.push(Vec::new());
            }
            groups[g].push(r);
        }
        let checked: Vec<Option<Skip>> = groups.par_iter().map(|g| prepare_sample(g[0], transform, 0, 0).err()).collect();
        let (mut records, mut captions, mut caption_image, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (group, skip) in groups.iter().zip(checked) {
            if let Some(s) = skip {
                skipped.push(s);
                continue;
            }
            for c in group.iter().flat_map(|r| &r.captions) {
                captions.push(c.clone());
                caption_image.push(records.len());
            }
            records.push(group[0].clone());
        }
        if records.is_empty() {
            return Err(Error::input("data.eval", "no usable held-out image"));
        }
        let (ids, mask) = text.encode(&captions)?;
        Ok(Self {
            images: records.len(),
            inputs: EvalInputs::Streamed { records, transform: transform.clone() },
            captions: TextBatch::new(ids, mask, text.vocab_size)?,
            caption_image,
            skipped,
        })
    }

    /// The encoder inputs of `images`, in that order, `per` values each; an image that can no
    /// longer be read (changed since loading) is an error naming it.
    pub fn inputs_of(&self, images: &[usize], per: usize) -> Result<Vec<f32>> {
        match &self.inputs {
            EvalInputs::Resident(all) => Ok(images.iter().flat_map(|&i| all[i * per..(i + 1) * per].iter().copied()).collect()),
            EvalInputs::Streamed { records, transform } => {
                let parts = images
                    .par_iter()
                    .map(|&i| prepare_sample(&records[i], transform, 0, 0).map(|(x, _)| x))
                    .collect::<std::result::Result<Vec<_>, Skip>>()
                    .map_err(|s| Error::input("data.eval", format!("{s} (it was readable when the evaluation started)")))?;
                Ok(parts.concat())
            }
        }
    }
}
