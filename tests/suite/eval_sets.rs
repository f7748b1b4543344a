//! A held-out set reads as the same images and captions whatever its annotation format: records
//! sharing an `image_id` (or, without ids, the same image file) are one image with several
//! captions, so a caption's hit on another caption's image of the same picture is a hit.

use crate::common;

use std::path::Path;

use burn::backend::Flex;
use image::{Rgb, RgbImage};
use qformer::data::eval_set::{EvalInputs, EvalSet};
use qformer::data::loader::{Dataset, Transform};
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
    let _rng = common::serial();
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
    let recall = itc_recall(&model, &frozen, &reference, 4).unwrap();
    let every: Vec<usize> = (0..IMAGES).collect();
    let inputs = |s: &EvalSet| s.inputs_of(&every, frozen.input_len()).unwrap();
    for name in ["lines.jsonl", "no_ids.jsonl", "lines.csv"] {
        let set = load(&d.join(name), 0);
        assert_eq!((set.images, set.captions.batch_size()), (IMAGES, 2 * IMAGES), "{name}");
        assert_eq!(inputs(&set), inputs(&reference), "{name}: the same images in the same order");
        // Captions are grouped by image: the same pairs, in the order of the lines.
        let pairs = |s: &EvalSet| {
            let mut p: Vec<(usize, Vec<i64>)> = s.caption_image.iter().copied().zip(s.captions.ids.iter().cloned()).collect();
            p.sort();
            p
        };
        assert_eq!(pairs(&set), pairs(&reference), "{name}");
        assert_eq!(itc_recall(&model, &frozen, &set, 4).unwrap(), recall, "{name}");
    }
    // `max_images` counts images, not lines.
    let three = load(&d.join("lines.jsonl"), 3);
    assert_eq!((three.images, three.captions.batch_size()), (3, 6));
}

/// The ITG grounding gap (captions scored with another image minus with their own): exactly 0 when
/// every image gives the decoder the same thing (it cannot be grounded), away from 0 when the
/// images differ, and the same whatever the chunk size (the shuffle is a fixed derangement).
#[test]
fn grounding_gap_is_zero_for_an_image_blind_decoder() {
    use burn::tensor::{Distribution, Tensor};
    use qformer::eval::evaluate::{evaluate, EvalOptions};
    use qformer::util::host::to_f32;

    let device = Default::default();
    let cfg = common::small();
    let _guard = common::serial();
    <Flex as burn::tensor::backend::Backend>::seed(&device, 4);
    let model = QFormer::<Flex>::new(&cfg, &device);
    let (images, tokens, width) = (IMAGES, 10, cfg.encoder_hidden_size);
    let text = common::batch(2 * images, None, 1).text;
    let distinct = to_f32(Tensor::<Flex, 3>::random([images, tokens, width], Distribution::Normal(0.0, 1.0), &device));
    let gap = |inputs: Vec<f32>, chunk: usize| {
        let set = EvalSet {
            inputs: EvalInputs::Resident(inputs),
            images,
            captions: text.clone(),
            caption_image: (0..2 * images).map(|t| t / 2).collect(),
            skipped: vec![],
        };
        let opts = EvalOptions { k_test: 2, chunk, seed: 0, captions: None };
        evaluate(&model, &Frozen::Cache { tokens, width }, &set, &opts).unwrap().itg_grounding_gap
    };
    let blind = distinct[..tokens * width].repeat(images);
    assert_eq!(gap(blind.clone(), 4), 0.0, "the same features for every image");
    // An untrained model barely reads the image (its cross-attention starts at 0.02-scale
    // weights: measured 2e-6 nats per token), but it does read it.
    let seen = gap(distinct.clone(), 4);
    assert!(seen.abs() > 1e-7, "distinct images move ITG's loss: gap {seen}");
    assert!((gap(distinct, 5) - seen).abs() < 1e-6, "chunks change nothing");
}

/// Held-out inputs are read chunk by chunk, not kept: `qformer eval`'s peak memory barely moves
/// when the held-out set grows 4x at a wide input (192 px: 442 kB of pixels per image, so 96 more
/// images kept resident would add 42 MB). That the chunk size changes no recall is tested on a
/// trained run (`training::evaluation_during_training_keeps_the_best_checkpoint_and_reports`).
#[test]
fn evaluation_memory_does_not_grow_with_the_held_out_set() {
    let dir = common::workdir("eval-memory");
    let model = common::mini_model(33).replace("image_size = 16\npatch_size = 8", "image_size = 192\npatch_size = 32");
    let cfg = common::RunConfig { model, image_size: 192, synth: (12, 4), ..common::RunConfig::miniature(1) }.write(&dir, "run");
    common::qformer("train").config(&cfg).succeed();
    let peak = |n: usize| {
        let held = dir.join(format!("held{n}"));
        let size = ["--n", "1", "--n-eval", &n.to_string(), "--size", "192"];
        common::qformer("synth").arg("--out").arg(&held).args(size).succeed();
        let run = dir.join("checkpoints/run");
        common::qformer("eval").arg("--checkpoint").arg(&run).arg("--data").arg(held.join("eval.json")).args(["--chunk", "8"]).peak_rss_kb()
    };
    let (one, four) = (peak(32), peak(128));
    assert!(four < one + 15_000, "peak RSS {one} kB with 32 held-out images, {four} kB with 128");
}
