//! A loaded annotation file: its usable records, interned image ids (records sharing an
//! `image_id` are captions of one image) and what was refused while reading it.

use std::collections::HashMap;
use std::path::Path;

use super::annotations::{self, Record, Skip};
use crate::util::error::{Error, Result};

pub struct Dataset {
    pub records: Vec<Record>,
    /// Interned image ids: records of one image share an id; a record without one gets its own.
    pub image_ids: Vec<i64>,
    /// Records refused while reading the annotations.
    pub skipped: Vec<Skip>,
}

impl Dataset {
    pub fn load(path: &Path, image_root: Option<&Path>) -> Result<Self> {
        let a = annotations::load(path, image_root)?;
        if a.records.is_empty() {
            return Err(Error::file(path, format!("no usable records ({} skipped)", a.skipped.len())));
        }
        let mut ids: HashMap<String, i64> = HashMap::new();
        let image_ids = a
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = r.image_id.clone().unwrap_or_else(|| format!("\u{0}record{i}"));
                let next = ids.len() as i64;
                *ids.entry(key).or_insert(next)
            })
            .collect();
        Ok(Self { records: a.records, image_ids, skipped: a.skipped })
    }
}
