//! Every annotation format reads into the same records; bad records become counted skips that name
//! their file and line (or tar member); the loader keeps going past undecodable images.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use qformer::data::annotations::{load, ImageSource};
use qformer::data::images::AugmentConfig;
use qformer::data::loader::{Dataset, Prefetcher, Transform};
use qformer::data::text::TextEncoder;

fn dir(name: &str) -> PathBuf {
    common::workdir(&format!("data-{name}"))
}

fn png(color: [u8; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    RgbImage::from_pixel(20, 12, Rgb(color)).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn images(d: &Path) {
    std::fs::write(d.join("a.png"), png([255, 0, 0])).unwrap();
    std::fs::write(d.join("b.png"), png([0, 0, 255])).unwrap();
}

#[test]
fn json_list_with_string_and_list_captions() {
    let d = dir("json");
    images(&d);
    let path = d.join("ann.json");
    std::fs::write(
        &path,
        r#"[
  {"image": "a.png", "caption": "a red thing", "image_id": "coco_1"},
  {"image": "b.png", "caption": ["a blue thing", "something blue"], "image_id": 2},
  {"image": "b.png", "caption": ""},
  {"caption": "no image"}
]"#,
    )
    .unwrap();
    let a = load(&path, None).unwrap();
    assert_eq!(a.records.len(), 2);
    assert_eq!(a.records[0].image, ImageSource::File(d.join("a.png")));
    assert_eq!(a.records[1].captions, vec!["a blue thing", "something blue"]);
    assert_eq!(a.records[1].image_id.as_deref(), Some("2"));
    let skips: Vec<String> = a.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(skips.len(), 2);
    assert!(skips[0].ends_with("ann.json:4: empty caption"), "{skips:?}");
    assert!(skips[1].ends_with("ann.json:5: missing `image`"), "{skips:?}");
}

#[test]
fn jsonl_csv_and_tsv() {
    let d = dir("lines");
    images(&d);
    std::fs::write(d.join("ann.jsonl"), "{\"image\": \"a.png\", \"caption\": \"red\"}\n{not json\n\n{\"image\": \"b.png\", \"caption\": \"   \"}\n{\"image\": \"b.png\", \"caption\": \"blue\"}\n").unwrap();
    let a = load(&d.join("ann.jsonl"), None).unwrap();
    assert_eq!(a.records.len(), 2);
    let skips: Vec<String> = a.skipped.iter().map(ToString::to_string).collect();
    assert!(skips[0].contains("ann.jsonl:2: invalid JSON"), "{skips:?}");
    assert!(skips[1].contains("ann.jsonl:4: empty caption"), "{skips:?}");

    std::fs::write(d.join("ann.csv"), "image,caption,image_id\na.png,\"red, bright\",7\nb.png,,8\nb.png,blue\n").unwrap();
    let a = load(&d.join("ann.csv"), None).unwrap();
    assert_eq!(a.records.len(), 2);
    assert_eq!(a.records[0].captions, vec!["red, bright"]);
    assert_eq!(a.records[0].image_id.as_deref(), Some("7"));
    assert!(a.skipped[0].to_string().contains("ann.csv:3: empty caption"), "{:?}", a.skipped);

    std::fs::write(d.join("ann.tsv"), "caption\timage\nred\ta.png\n").unwrap();
    let a = load(&d.join("ann.tsv"), Some(Path::new("/elsewhere"))).unwrap();
    assert_eq!(a.records[0].image, ImageSource::File(PathBuf::from("/elsewhere/a.png")));

    std::fs::write(d.join("bad.csv"), "path,text\na.png,red\n").unwrap();
    assert!(load(&d.join("bad.csv"), None).unwrap_err().to_string().contains("`image` and `caption`"));
    assert!(load(&d.join("ann.txt"), None).is_err());
}

fn tar_shard(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn webdataset_shards() {
    let d = dir("tar");
    let shard = d.join("000000.tar");
    tar_shard(
        &shard,
        &[
            ("s1.jpg", png([255, 0, 0])),
            ("s1.txt", b"a red square".to_vec()),
            ("s2.png", png([0, 255, 0])),
            ("s2.json", br#"{"caption": ["top caption", "second caption"], "image_id": "x2"}"#.to_vec()),
            ("s3.webp", png([0, 0, 255])),
            ("s4.txt", b"caption without image".to_vec()),
        ],
    );
    let a = load(&shard, None).unwrap();
    assert_eq!(a.records.len(), 2);
    assert_eq!(a.records[1].captions.len(), 2);
    assert_eq!(a.records[1].image_id.as_deref(), Some("x2"));
    assert_eq!(a.records[0].image.read().unwrap(), png([255, 0, 0]));
    let skips: Vec<String> = a.skipped.iter().map(ToString::to_string).collect();
    assert!(skips.iter().any(|s| s.contains("000000.tar:s3: no txt or json caption")), "{skips:?}");
    assert!(skips.iter().any(|s| s.contains("000000.tar:s4: no image member")), "{skips:?}");

    // A folder of shards, one of them cut in the middle.
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(d.join("000001.tar"), &bytes[..bytes.len() / 2 + 100]).unwrap();
    let a = load(&d, None).unwrap();
    assert!(a.records.len() >= 2);
    assert!(a.skipped.iter().any(|s| s.origin.contains("000001.tar")), "{:?}", a.skipped);
}

#[test]
fn loader_skips_bad_images_and_counts_them() {
    let d = dir("loader");
    images(&d);
    std::fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let entries: Vec<String> = (0..6)
        .map(|i| match i {
            2 => r#"{"image": "broken.png", "caption": "broken"}"#.to_string(),
            4 => r#"{"image": "missing.png", "caption": "missing"}"#.to_string(),
            _ => format!(r#"{{"image": "{}.png", "caption": "shape {i}"}}"#, if i % 2 == 0 { "a" } else { "b" }),
        })
        .collect();
    std::fs::write(d.join("ann.json"), format!("[\n{}\n]", entries.join(",\n"))).unwrap();
    let data = Arc::new(Dataset::load(&d.join("ann.json"), None).unwrap());
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt");
    let text = Arc::new(TextEncoder::load(&vocab, 8, 50).unwrap());
    let transform = Transform { image_size: 8, max_pixels: 1 << 20, augment: Some(AugmentConfig::default()), cache: None };
    let mut loader = Prefetcher::start(data, text, transform, 0, 0, (4, 0..4), 1);
    // A window of 4 stream positions: a sample that cannot be used leaves its step's batch
    // smaller (it is not replaced), so every sample keeps its position.
    let b = loader.next_batch().unwrap();
    let rows = b.text.batch_size();
    assert_eq!((b.seen, b.end), (4, 4));
    assert_eq!(rows + b.skipped.len(), 4);
    assert_eq!(b.inputs.len(), rows * 3 * 8 * 8);
    assert_eq!(b.positions.len(), rows);
    assert!(b.positions.iter().all(|&p| p < 4));
    let mut skipped = b.skipped;
    skipped.extend(loader.next_batch().unwrap().skipped);
    let reasons: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert!(reasons.iter().any(|r| r.contains("ann.json:4") && r.contains("decode")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("ann.json:6") && r.contains("missing.png") && r.contains("cannot read image")),
        "{reasons:?}"
    );
}

/// A 24×16 scene in four colours (a GIF palette holds it exactly).
fn scene() -> RgbImage {
    RgbImage::from_fn(24, 16, |x, y| match (x < 12, y < 8) {
        (true, true) => Rgb([230, 30, 30]),
        (false, true) => Rgb([20, 40, 220]),
        (true, false) => Rgb([250, 250, 250]),
        (false, false) => Rgb([10, 160, 60]),
    })
}

#[test]
fn bmp_gif_and_tiff_train_like_a_png() {
    let _rng = common::serial();
    use qformer::data::images::decode;
    use qformer::train::config::TrainConfig;
    use qformer::train::run::TrainJob;
    let d = dir("formats");
    let formats = [
        ("png", image::ImageFormat::Png),
        ("bmp", image::ImageFormat::Bmp),
        ("gif", image::ImageFormat::Gif),
        ("tiff", image::ImageFormat::Tiff),
    ];
    let mut lines = String::new();
    for (i, (ext, format)) in formats.iter().enumerate() {
        let mut bytes = Vec::new();
        scene().write_to(&mut std::io::Cursor::new(&mut bytes), *format).unwrap();
        let decoded = decode(&bytes, 1 << 20).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(decoded == scene(), "{ext} decodes to other pixels than the PNG");
        std::fs::write(d.join(format!("scene.{ext}")), bytes).unwrap();
        for copy in 0..3 {
            lines += &format!(
                "{{\"image\": \"scene.{ext}\", \"caption\": \"a red square left of a blue square\", \"image_id\": \"{ext}{copy}{i}\"}}\n"
            );
        }
    }
    std::fs::write(d.join("train.jsonl"), lines).unwrap();
    let cfg = common::RunConfig::miniature_bert().write(&d, "formats");
    let ann = d.join("train.jsonl").display().to_string();
    let overrides = [format!("data.train=\"{ann}\""), format!("data.eval=\"{ann}\""), "train.steps=2".into()];
    let cfg = TrainConfig::load(&cfg, &overrides).unwrap();
    let outcome =
        qformer::kernels::backend::dispatch(qformer::kernels::backend::BackendKind::Flex, TrainJob::new(cfg, "formats", None)).unwrap();
    assert_eq!(outcome.steps, 2);
    assert_eq!(outcome.last.skipped_total, 0, "every format decodes in training");
    assert!(outcome.last.loss.is_finite());
}

/// `n` records over a few good images, every `bad_every`-th (from the 3rd on) naming an
/// undecodable file; trains the miniature model over them once with the default skip limit.
fn train_with_bad_records(name: &str, n: usize, bad_every: usize) -> qformer::Result<qformer::train::run::TrainOutcome> {
    use qformer::train::config::TrainConfig;
    use qformer::train::run::TrainJob;
    let d = dir(name);
    for (i, color) in [[255, 0, 0], [0, 0, 255], [0, 200, 0]].into_iter().enumerate() {
        std::fs::write(d.join(format!("{i}.png")), png(color)).unwrap();
    }
    std::fs::write(d.join("bad.png"), b"not an image").unwrap();
    let lines: String = (0..n)
        .map(|i| {
            let image = if i >= 2 && (i - 2) % bad_every == 0 { "bad.png".to_string() } else { format!("{}.png", i % 3) };
            format!("{{\"image\": \"{image}\", \"caption\": \"a thing number {i}\"}}\n")
        })
        .collect();
    std::fs::write(d.join("train.jsonl"), lines).unwrap();
    let cfg = common::RunConfig::miniature_bert().write(&d, name);
    let batch = 50;
    let ann = d.join("train.jsonl").display().to_string();
    let overrides = [
        format!("data.train=\"{ann}\""),
        format!("data.eval=\"{ann}\""),
        format!("train.batch_size={batch}"),
        format!("train.steps={}", n / batch),
        "eval.every=0".into(),
    ];
    let cfg = TrainConfig::load(&cfg, &overrides).unwrap();
    qformer::kernels::backend::dispatch(qformer::kernels::backend::BackendKind::Flex, TrainJob::new(cfg, name, None))
}

#[test]
fn one_early_bad_record_in_a_clean_set_does_not_stop_training() {
    let _rng = common::serial();
    // Record 3 of 1000 is bad (0.1%): one skip in the first batch, and the run completes.
    let outcome = train_with_bad_records("skip-clean", 1000, 10_000).unwrap();
    assert_eq!(outcome.steps, 20);
    // The last sample is the first of a new epoch, which may draw the bad record once more.
    assert!((1..=2).contains(&outcome.last.skipped_total), "{}", outcome.last.skipped_total);
}

#[test]
fn a_set_with_five_percent_bad_records_stops_naming_the_limit() {
    let _rng = common::serial();
    let e = train_with_bad_records("skip-bad", 400, 20).unwrap_err().to_string();
    assert!(e.contains("data.max_skip_fraction") && e.contains("1.0%"), "{e}");
}
