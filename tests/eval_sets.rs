//! A held-out set reads as the same images and captions whatever its annotation format: records
//! sharing an `image_id` (or, without ids, the same image file) are one image with several
//! captions, so a caption's hit on another caption's image of the same picture is a hit.

mod common;

use std::path::Path;

use burn::backend::Flex;
use image::{Rgb, RgbImage};
use qformer::data::loader::{Dataset, EvalSet, Transform};
use qformer::data::text::TextEncoder;
use qformer::eval::retrieval::itc_recall;
use qformer::model::frozen::Frozen;
use qformer::model::vit::{Vit, VitConfig};
use qformer::model::{QFormer, QFormerConfig};

const IMAGES: usize = 6;

fn caption(i: usize, c: usize) -> String {
    format!("picture {i} caption {c}")
}

fn write_images(d: &Path) {
    for i in 0..IMAGES {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(i * 40) as u8, (x * 16) as u8, (y * 16) as u8]));
        img.save(d.join(format!("{i}.png"))).unwrap();
    }
}

fn load(path: &Path, max_images: usize) -> EvalSet {
    let text = TextEncoder::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt"), 12, 50).unwrap();
    let transform = Transform { image_size: 16, max_pixels: 1 << 20, augment: None, cache: None };
    EvalSet::load(&Dataset::load(path, None).unwrap(), &text, &transform, max_images).unwrap()
}

#[test]
fn json_jsonl_and_csv_give_the_same_images_captions_and_recalls() {
    let d = common::workdir("eval-sets");
    write_images(&d);
    let list: Vec<String> = (0..IMAGES)
        .map(|i| format!("{{\"image\": \"{i}.png\", \"caption\": [\"{}\", \"{}\"], \"image_id\": {i}}}", caption(i, 0), caption(i, 1)))
        .collect();
    std::fs::write(d.join("list.json"), format!("[{}]", list.join(",\n"))).unwrap();
    let per_line = |with_id: bool| -> String {
        (0..2)
            .flat_map(|c| (0..IMAGES).map(move |i| (i, c)))
            .map(|(i, c)| {
                let id = if with_id { format!(", \"image_id\": \"x{i}\"") } else { String::new() };
                format!("{{\"image\": \"{i}.png\", \"caption\": \"{}\"{id}}}\n", caption(i, c))
            })
            .collect()
    };
    std::fs::write(d.join("lines.jsonl"), per_line(true)).unwrap();
    std::fs::write(d.join("no_ids.jsonl"), per_line(false)).unwrap();
    let csv: String = std::iter::once("image,caption,image_id\n".to_string())
        .chain((0..2).flat_map(|c| (0..IMAGES).map(move |i| format!("{i}.png,{},{i}\n", caption(i, c)))))
        .collect();
    std::fs::write(d.join("lines.csv"), csv).unwrap();

    let device = Default::default();
    let cfg = QFormerConfig { vocab_size: 30523, bos_token_id: 30522, ..common::small() };
    let model = QFormer::<Flex>::new(&cfg, &device);
    let vit_cfg =
        VitConfig { image_size: 16, patch_size: 8, width: 48, depth: 1, heads: 2, mlp_ratio: 2.0, ..VitConfig::preset("tiny").unwrap() };
    let frozen = Frozen::Encoder { vit: Vit::random(&vit_cfg, &device), image_size: 16 };

    let reference = load(&d.join("list.json"), 0);
    assert_eq!((reference.images, reference.captions.batch_size()), (IMAGES, 2 * IMAGES));
    let recall = itc_recall(&model, &frozen, &reference, 4);
    for name in ["lines.jsonl", "no_ids.jsonl", "lines.csv"] {
        let set = load(&d.join(name), 0);
        assert_eq!((set.images, set.captions.batch_size()), (IMAGES, 2 * IMAGES), "{name}");
        assert_eq!(set.inputs, reference.inputs, "{name}: the same images in the same order");
        // Captions are grouped by image: the same pairs, in the order of the lines.
        let pairs = |s: &EvalSet| {
            let mut p: Vec<(usize, Vec<i64>)> = s.caption_image.iter().copied().zip(s.captions.ids.iter().cloned()).collect();
            p.sort();
            p
        };
        assert_eq!(pairs(&set), pairs(&reference), "{name}");
        assert_eq!(itc_recall(&model, &frozen, &set, 4), recall, "{name}");
    }
    // `max_images` counts images, not lines.
    let three = load(&d.join("lines.jsonl"), 3);
    assert_eq!((three.images, three.captions.batch_size()), (3, 6));
}
