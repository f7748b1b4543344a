//! A stage-one batch stored as safetensors (what `check-loss` reads): `image_feats` f32
//! `[B, Nv, Dv]`, `input_ids` and `attention_mask` i64 `[B, T]`, and optionally `neg_image_idx` /
//! `neg_text_idx` i64 `[B]` (explicit negatives) and `image_ids` i64 `[B]`.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use super::safetensors_io::SafetensorsFile;
use crate::data::text::TextBatch;
use crate::kernels::Kernels;
use crate::model::QFormerConfig;
use crate::objectives::Stage1Batch;
use crate::util::error::{Error, Result};

pub struct BatchFile<B: Kernels> {
    pub batch: Stage1Batch<B>,
    /// `(neg_image_idx, neg_text_idx)` when the file holds both.
    pub negatives: Option<(Vec<usize>, Vec<usize>)>,
}

fn rows(shape: &[usize], values: Vec<i64>, name: &str, path: &Path) -> Result<Vec<Vec<i64>>> {
    if shape.len() != 2 || shape[1] == 0 {
        return Err(Error::file(path, format!("`{name}` must be [B, T], got {shape:?}")));
    }
    Ok(values.chunks(shape[1]).map(<[i64]>::to_vec).collect())
}

fn vector(file: &SafetensorsFile, name: &str, b: usize) -> Result<Option<Vec<i64>>> {
    if !file.contains(name)? {
        return Ok(None);
    }
    let (shape, values) = file.i64(name)?;
    if shape != [b] {
        return Err(Error::file(&file.path, format!("`{name}` must be [{b}], got {shape:?}")));
    }
    Ok(Some(values))
}

fn indices(values: Vec<i64>, name: &str, b: usize, path: &Path) -> Result<Vec<usize>> {
    values
        .into_iter()
        .map(|v| usize::try_from(v).ok().filter(|&i| i < b).ok_or_else(|| Error::file(path, format!("`{name}` holds {v}, outside 0..{b}"))))
        .collect()
}

pub fn read_batch<B: Kernels>(path: &Path, cfg: &QFormerConfig, device: &B::Device) -> Result<BatchFile<B>> {
    let file = SafetensorsFile::open(path)?;
    let (shape, feats) = file.f32("image_feats")?;
    if shape.len() != 3 || shape[2] != cfg.encoder_hidden_size || shape[0] == 0 || shape[1] == 0 {
        return Err(Error::file(path, format!("`image_feats` must be [B, Nv, {}], got {shape:?}", cfg.encoder_hidden_size)));
    }
    let b = shape[0];
    let (id_shape, ids) = file.i64("input_ids")?;
    let (mask_shape, mask) = file.i64("attention_mask")?;
    if id_shape != mask_shape || id_shape.first() != Some(&b) {
        return Err(Error::file(path, format!("`input_ids` {id_shape:?} and `attention_mask` {mask_shape:?} must both be [{b}, T]")));
    }
    if id_shape[1] > cfg.max_position_embeddings {
        return Err(Error::file(
            path,
            format!("captions of {} tokens exceed max_position_embeddings {}", id_shape[1], cfg.max_position_embeddings),
        ));
    }
    let text = TextBatch::new(rows(&id_shape, ids, "input_ids", path)?, rows(&mask_shape, mask, "attention_mask", path)?, cfg.vocab_size)
        .map_err(|e| Error::file(path, e.to_string()))?;
    let image_feats = Tensor::from_data(TensorData::new(feats, [shape[0], shape[1], shape[2]]), device);
    let image_ids = vector(&file, "image_ids", b)?;
    let negatives = match (vector(&file, "neg_image_idx", b)?, vector(&file, "neg_text_idx", b)?) {
        (Some(i), Some(t)) => Some((indices(i, "neg_image_idx", b, path)?, indices(t, "neg_text_idx", b, path)?)),
        (None, None) => None,
        _ => return Err(Error::file(path, "give both `neg_image_idx` and `neg_text_idx`, or neither")),
    };
    Ok(BatchFile { batch: Stage1Batch::new(image_feats, text, image_ids)?, negatives })
}
