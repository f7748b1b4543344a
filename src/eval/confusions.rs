//! What the model confuses, on held-out data from the shapes generator: every ITC retrieval miss
//! at rank 1 and every hard negative that ITM calls a match, attributed to the attributes in which
//! the wrong item's scene differs from the right one (colour, shape, size, relation). Tells which
//! attribute limits retrieval, where the recall figures only say that it is limited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::synth::Scene;

/// Counts of mistakes by what the wrong item gets wrong: keys such as `shape`, `colour+size` or
/// `same scene` (a different image or caption stating the same scene: not a mistake the model
/// could avoid).
pub type Counts = BTreeMap<String, usize>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Confusions {
    /// Images whose top ITC caption belongs to another image.
    pub itc_i2t: Counts,
    /// Captions whose top ITC image is another one.
    pub itc_t2i: Counts,
    /// Hard negatives (each query's most similar wrong item by ITC) that ITM scores as a match.
    pub itm_negatives: Counts,
}

/// The scenes of a held-out set: one per caption, and each image's (its first caption's).
pub struct Scenes {
    pub captions: Vec<Scene>,
    pub images: Vec<Scene>,
}

impl Scenes {
    /// `captions_of[i]`: image i's caption rows. `None` unless every caption is of the shapes
    /// grammar and every image has one.
    pub fn parse(captions: &[String], captions_of: &[Vec<usize>]) -> Option<Self> {
        let captions: Vec<Scene> = captions.iter().map(|c| Scene::parse(c)).collect::<Option<_>>()?;
        let images = captions_of.iter().map(|rows| rows.first().map(|&t| captions[t])).collect::<Option<_>>()?;
        Some(Self { captions, images })
    }

    /// What `(image, caption)` gets wrong about the image's scene, as one key.
    fn label(&self, image: usize, caption: usize) -> String {
        let d = self.images[image].differences(&self.captions[caption]);
        if d.is_empty() {
            "same scene".into()
        } else {
            d.join("+")
        }
    }
}

/// Attributes the mistakes: `i2t_top[i]` is image i's top caption by ITC, `t2i_top[t]` caption
/// t's top image; `itm_false_matches` the (image, caption) hard negatives ITM called a match.
pub fn confusions(
    scenes: &Scenes,
    caption_image: &[usize],
    i2t_top: &[usize],
    t2i_top: &[usize],
    itm_false_matches: &[(usize, usize)],
) -> Confusions {
    let mut out = Confusions::default();
    let count = |counts: &mut Counts, label: String| *counts.entry(label).or_default() += 1;
    for (i, &t) in i2t_top.iter().enumerate() {
        if caption_image[t] != i {
            count(&mut out.itc_i2t, scenes.label(i, t));
        }
    }
    for (t, &i) in t2i_top.iter().enumerate() {
        if caption_image[t] != i {
            count(&mut out.itc_t2i, scenes.label(i, t));
        }
    }
    for &(i, t) in itm_false_matches {
        count(&mut out.itm_negatives, scenes.label(i, t));
    }
    out
}

/// One line per kind of mistake: its total and the attributes, most frequent first.
pub fn table(c: &Confusions) -> String {
    let line = |name: &str, counts: &Counts| {
        let total: usize = counts.values().sum();
        let mut by: Vec<(&String, &usize)> = counts.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{name}: {total} ({})\n", if parts.is_empty() { "none".into() } else { parts.join(", ") })
    };
    let mut s = String::from("mistakes by what the wrong item gets wrong (generated scenes):\n");
    s += &line("  ITC i2t misses at R@1", &c.itc_i2t);
    s += &line("  ITC t2i misses at R@1", &c.itc_t2i);
    s += &line("  hard negatives ITM calls a match", &c.itm_negatives);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_attributed_to_what_differs() {
        let captions: Vec<String> = [
            "a small red circle left of a large blue square",
            "a large blue square right of a small red circle",
            "a small red triangle left of a large blue square",
            "a small red triangle above a large blue square",
            "a small red circle left of a large blue square",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let caption_image = [0, 0, 1, 2, 3];
        let captions_of = [vec![0, 1], vec![2], vec![3], vec![4]];
        let scenes = Scenes::parse(&captions, &captions_of).unwrap();
        // Image 0 retrieves image 1's caption (shape); image 1 its own; image 2 image 1's
        // (relation); image 3 image 0's (the same scene).
        let c = confusions(&scenes, &caption_image, &[2, 2, 2, 0], &[0, 0, 1, 2, 0], &[(1, 3)]);
        assert_eq!(c.itc_i2t, Counts::from([("shape".into(), 1), ("relation".into(), 1), ("same scene".into(), 1)]));
        // Caption 2 → image 1 right; caption 3 → image 2 right; caption 4 → image 0 (same scene).
        assert_eq!(c.itc_t2i, Counts::from([("same scene".into(), 1)]));
        assert_eq!(c.itm_negatives, Counts::from([("relation".into(), 1)]));
        let t = table(&c);
        assert!(t.contains("ITC i2t misses at R@1: 3 (relation 1, same scene 1, shape 1)"), "{t}");
        assert!(Scenes::parse(&["a dog".to_string()], &[vec![0]]).is_none());
        let with_empty: Vec<Vec<usize>> = captions_of.iter().cloned().chain([vec![]]).collect();
        assert!(Scenes::parse(&captions, &with_empty).is_none(), "an image without a caption");
    }
}
