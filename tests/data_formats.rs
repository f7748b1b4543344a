//! Every annotation format reads into the same records; bad records become counted skips that name
//! their file and line (or tar member); the loader keeps going past undecodable images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use qformer::data::annotations::{load, ImageSource};
use qformer::data::images::AugmentConfig;
use qformer::data::loader::{Dataset, Prefetcher, Transform};
use qformer::data::text::TextEncoder;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qformer-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let mut loader = Prefetcher::start(data, text, transform, 0, 0, 4, 1);
    let b = loader.next().unwrap();
    assert_eq!(b.text.batch_size(), 4);
    assert_eq!(b.inputs.len(), 4 * 3 * 8 * 8);
    assert_eq!(b.skipped.len() as u64, b.seen - 4);
    let mut skipped = b.skipped;
    skipped.extend(loader.next().unwrap().skipped);
    let reasons: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert!(reasons.iter().any(|r| r.contains("ann.json:4") && r.contains("decode")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("ann.json:6") && r.contains("cannot read image")), "{reasons:?}");
}
