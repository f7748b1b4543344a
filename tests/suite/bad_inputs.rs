//! The committed bad-input corpus (`tools/make_bad_corpus.py`, tests/data/bad/): every broken
//! record is a counted skip naming its file and line (or tar member) and the reason; convertible
//! images (1×1, grayscale, 16-bit, CMYK) are accepted; nothing panics; the skip limit stops a run.

use std::path::{Path, PathBuf};

use qformer::data::annotations::Skip;
use qformer::data::eval_set::EvalSet;
use qformer::data::loader::{Dataset, Transform};
use qformer::data::text::TextEncoder;

fn bad(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad").join(name)
}

fn text() -> TextEncoder {
    TextEncoder::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt"), 16, 50).unwrap()
}

/// Loads annotations, then decodes every record as a run would (each record its own image, as
/// training visits them; a held-out set would join records of one file); returns usable images
/// and skips.
fn load(name: &str) -> (usize, Vec<Skip>) {
    let mut data = Dataset::load(&bad(name), None).unwrap();
    for (i, r) in data.records.iter_mut().enumerate() {
        r.image_id = Some(format!("record {i}"));
    }
    let transform = Transform { image_size: 16, max_pixels: 1 << 24, augment: None, cache: None };
    let set = EvalSet::load(&data, &text(), &transform, 0).unwrap();
    (set.images, data.skipped.into_iter().chain(set.skipped).collect())
}

fn reason_at<'a>(skips: &'a [Skip], origin_suffix: &str) -> &'a str {
    skips
        .iter()
        .find(|s| s.origin.ends_with(origin_suffix))
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("no skip at {origin_suffix}: {skips:#?}"))
}

#[test]
fn jsonl_corpus_is_skipped_record_by_record() {
    let (images, skips) = load("records.jsonl");
    for s in &skips {
        eprintln!("{s}");
        assert!(s.origin.contains("records.jsonl:"), "{s}");
    }
    // Lines 1, 7-10 (good, 1×1, gray 8 and 16 bit, CMYK) and 14 (10 000 words, cut to 50) are used.
    assert_eq!(images, 6, "{skips:#?}");
    assert!(reason_at(&skips, ":2").contains("decode"), "truncated JPEG");
    assert!(reason_at(&skips, ":3").contains("not a recognised image"), "zero bytes");
    assert!(reason_at(&skips, ":4").contains("CRC"), "corrupt chunk");
    assert!(reason_at(&skips, ":5").contains("not a recognised image"), "text named .jpg");
    assert!(reason_at(&skips, ":6").contains("exceeds the limit"), "the bomb is refused before allocation");
    assert!(reason_at(&skips, ":11").contains("read"));
    assert!(reason_at(&skips, ":12").contains("caption"));
    assert!(reason_at(&skips, ":13").contains("caption"));
    for line in [15, 16, 17, 18] {
        reason_at(&skips, &format!(":{line}"));
    }
    assert_eq!(skips.len(), 12);
}

#[test]
fn csv_corpus_is_skipped_line_by_line() {
    let (images, skips) = load("records.csv");
    for s in &skips {
        eprintln!("{s}");
        assert!(s.origin.contains("records.csv:"), "{s}");
    }
    // Line 2 is used; line 3 is not UTF-8; from line 4 an unterminated quote swallows the rest of
    // the file into one caption, which the CSV format allows: that record is used too.
    assert!(reason_at(&skips, ":3").contains("UTF-8"), "{skips:#?}");
    assert_eq!((images, skips.len()), (2, 1), "{skips:#?}");
}

#[test]
fn broken_json_list_and_cut_shard_are_clear_errors_or_skips() {
    let err = Dataset::load(&bad("broken_list.json"), None).err().unwrap().to_string();
    assert!(err.contains("broken_list.json"), "{err}");
    let (images, skips) = load("cut_shard.tar");
    for s in &skips {
        eprintln!("{s}");
        assert!(s.origin.contains("cut_shard.tar"), "{s}");
    }
    assert_eq!(images, 2, "the two members before the cut are usable: {skips:#?}");
    assert!(!skips.is_empty(), "the cut member is reported");
}
