//! The embedded default data: rendered scenes of two coloured shapes with a spatial relation,
//! captioned compositionally ("a small red circle left of a large blue square") plus the converse
//! caption. Deterministic from a seed, so learning is measurable (retrieval far above chance) on a
//! fresh clone with no download. Written as COCO-Karpathy style JSON (`train.json`, `eval.json`)
//! with PNG images.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use serde::{Deserialize, Serialize};

use crate::util::error::{Error, Result};
use crate::util::fs::write_atomic;
use crate::util::report::Reporter;

/// `[data.synth]`: generate the shapes set when the annotations are missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub train: usize,
    pub eval: usize,
    pub seed: u64,
    /// Radius of a small object, as a fraction of the image side.
    #[serde(default = "default_small")]
    pub small_radius: f32,
    /// Radius of a large object, as a fraction of the image side.
    #[serde(default = "default_large")]
    pub large_radius: f32,
}

/// The object radii (small, large) of every set generated before they were configurable.
pub const LEGACY_RADII: (f32, f32) = (0.09, 0.16);

/// The object radii by default: large enough that a random encoder's 16-pixel patch tokens hold
/// the shape (a linear probe reads both shapes in 69 % of images against 47.5 % at the legacy
/// radii; docs/recipe.md, e30).
pub const DEFAULT_RADII: (f32, f32) = (0.14, 0.22);

fn default_small() -> f32 {
    DEFAULT_RADII.0
}

fn default_large() -> f32 {
    DEFAULT_RADII.1
}

/// Centres of the two objects are at least 0.44 of the side apart: larger radii would overlap.
const MAX_RADIUS: f32 = 0.22;

impl SynthConfig {
    pub fn new(train: usize, eval: usize, seed: u64) -> Self {
        Self { train, eval, seed, small_radius: default_small(), large_radius: default_large() }
    }

    /// Small below large, and two large objects side by side without overlapping.
    pub fn validate(&self, source: &str) -> Result<()> {
        let (s, l) = (self.small_radius, self.large_radius);
        if !(s > 0.0 && s < l && l <= MAX_RADIUS) {
            let msg = format!("need 0 < small_radius < large_radius <= {MAX_RADIUS} (got {s} and {l})");
            return Err(Error::config("data.synth.small_radius", msg, source));
        }
        Ok(())
    }
}

/// What a generated set was made from, kept beside it ([`MANIFEST_FILE`]) so that a config asking
/// for another set is told, not trained on the old one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    synth: SynthConfig,
    image_size: u32,
}

const MANIFEST_FILE: &str = "synth.json";

/// Where the default config keeps the generated shapes set (below the checkout, or the folder a
/// copied config names): the only place it is generated on demand, so that a mistyped path is an
/// error rather than a data set invented there.
pub const DEFAULT_TRAIN: &str = "data/shapes/train.json";

/// Generates the synthetic set when `train` is the built-in default location and does not exist
/// yet. Any other missing path is an error naming the key and the path, with nothing written.
pub fn ensure(train: &Path, synth: Option<&SynthConfig>, image_size: u32, reporter: &dyn Reporter) -> Result<()> {
    let plain: std::path::PathBuf = train.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    let out = train.parent().unwrap_or(Path::new("."));
    if train.exists() {
        if let Some(s) = synth.filter(|_| plain.ends_with(DEFAULT_TRAIN)) {
            matches_config(out, s, image_size)?;
            // A set generated before the vocabulary was part of it gets it.
            write_vocabulary(out)?;
        }
        return Ok(());
    }
    let hint = format!("the shapes set is generated on demand only at {DEFAULT_TRAIN}; make one elsewhere with `qformer synth --out DIR`");
    let s = match synth {
        Some(s) if plain.ends_with(DEFAULT_TRAIN) => s,
        Some(_) => return Err(Error::config("data.train", format!("{} does not exist ({hint})", train.display()), "config")),
        None => {
            return Err(Error::config(
                "data.train",
                format!("{} does not exist (set [data.synth] to generate the shapes set)", train.display()),
                "config",
            ))
        }
    };
    reporter.note(&format!("generating {} + {} synthetic scenes in {}", s.train, s.eval, out.display()));
    generate(out, s, image_size)?;
    Ok(())
}

/// Refuses a generated set made with other parameters than `[data.synth]` asks for. A set from
/// before the manifest was written holds the legacy radii, and nothing else is known of it.
fn matches_config(out: &Path, synth: &SynthConfig, image_size: u32) -> Result<()> {
    let path = out.join(MANIFEST_FILE);
    let regenerate = format!("remove {} to have it generated again, or point data.train elsewhere", out.display());
    let wanted = Manifest { synth: synth.clone(), image_size };
    let found = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|e| Error::file(&path, format!("not a synth manifest: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if (synth.small_radius, synth.large_radius) == LEGACY_RADII {
                return Ok(());
            }
            let msg = format!(
                "{} was generated before object sizes were recorded (radii {} and {}); the config asks for {} and {}: {regenerate}",
                out.display(),
                LEGACY_RADII.0,
                LEGACY_RADII.1,
                synth.small_radius,
                synth.large_radius
            );
            return Err(Error::config("data.synth", msg, "config"));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if found != wanted {
        let json = |m: &Manifest| serde_json::to_string(m).expect("json");
        let msg =
            format!("{} holds a set generated from {}; the config asks for {}: {regenerate}", out.display(), json(&found), json(&wanted));
        return Err(Error::config("data.synth", msg, "config"));
    }
    Ok(())
}

const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 190, 60]),
    ("blue", [50, 80, 230]),
    ("yellow", [235, 220, 50]),
    ("purple", [160, 60, 200]),
    ("white", [240, 240, 240]),
];
const SIZES: [&str; 2] = ["small", "large"];
/// (relation, converse, dx, dy) of the first object relative to the second.
const RELATIONS: [(&str, &str, i32, i32); 4] =
    [("left of", "right of", -1, 0), ("right of", "left of", 1, 0), ("above", "below", 0, -1), ("below", "above", 0, 1)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Object {
    shape: usize,
    color: usize,
    size: usize,
}

impl Object {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        Self { shape: rng.random_range(0..SHAPES.len()), color: rng.random_range(0..COLORS.len()), size: rng.random_range(0..SIZES.len()) }
    }
    fn words(&self) -> String {
        format!("{} {} {}", SIZES[self.size], COLORS[self.color].0, SHAPES[self.shape])
    }
}

fn draw(img: &mut RgbImage, o: &Object, cx: f32, cy: f32, r: f32) {
    let color = Rgb(COLORS[o.color].1);
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match o.shape {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                // Upward triangle: apex at the top, base at the bottom.
                _ => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
            };
            if inside {
                img.put_pixel(x, y, color);
            }
        }
    }
}

/// One scene and its two captions.
fn scene(size: u32, radii: (f32, f32), rng: &mut ChaCha8Rng) -> (RgbImage, [String; 2]) {
    let (a, b) = (Object::random(rng), Object::random(rng));
    let (rel, converse, dx, dy) = RELATIONS[rng.random_range(0..RELATIONS.len())];
    let s = size as f32;
    let bg = rng.random_range(20..70u8);
    let mut img = RgbImage::from_fn(size, size, |_, _| {
        let n = rng.random_range(0..12u8);
        Rgb([bg + n, bg + n, bg + n])
    });
    let radius = |o: &Object| s * if o.size == 0 { radii.0 } else { radii.1 };
    // Object a sits on the `rel` side of b, with some jitter along both axes.
    let offset = s * rng.random_range(0.22..0.3);
    let (mx, my) = (s * 0.5 + rng.random_range(-0.05..0.05) * s, s * 0.5 + rng.random_range(-0.05..0.05) * s);
    let (ax, ay) = (mx + dx as f32 * offset, my + dy as f32 * offset);
    let (bx, by) = (mx - dx as f32 * offset, my - dy as f32 * offset);
    draw(&mut img, &a, ax, ay, radius(&a));
    draw(&mut img, &b, bx, by, radius(&b));
    let first = format!("a {} {rel} a {}", a.words(), b.words());
    let second = format!("a {} {converse} a {}", b.words(), a.words());
    (img, [first, second])
}

/// The files of a generated set.
const SET_FILES: [&str; 5] = ["train.json", "eval.json", "images", VOCAB_FILE, MANIFEST_FILE];

/// The set's own WordPiece vocabulary (`text.tokenizer`): BERT's special tokens and the grammar's
/// words, 22 entries, so `[DEC]` is id 22 (`model.vocab_size = 23`, `model.bos_token_id = 22`).
/// The LM head over it is 1,300 times smaller than over BERT's 30,523 tokens.
pub const VOCAB_FILE: &str = "vocab.txt";

/// The vocabulary's entries, one per id: `[PAD]` 0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, then
/// every word the captions use.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"];
    words.extend(SIZES);
    words.extend(COLORS.iter().map(|c| c.0));
    words.extend(SHAPES);
    for (relation, _, _, _) in RELATIONS {
        words.extend(relation.split(' ').filter(|w| !words.contains(w)).collect::<Vec<_>>());
    }
    words
}

/// Writes [`VOCAB_FILE`] into `out` unless it is there (it depends on the grammar alone).
pub fn write_vocabulary(out: &Path) -> Result<()> {
    let path = out.join(VOCAB_FILE);
    if path.exists() {
        return Ok(());
    }
    write_atomic(&path, (vocabulary().join("\n") + "\n").as_bytes())
}

/// What of a generated set `out` holds, named (empty when none).
pub fn set_files(out: &Path) -> Vec<&'static str> {
    SET_FILES.into_iter().filter(|f| out.join(f).exists()).collect()
}

/// Removes a generated set from `out` (annotations first, so a half-removed set reads as
/// incomplete); anything else in the folder is left alone.
pub fn remove_set(out: &Path) -> Result<()> {
    for f in SET_FILES {
        let path = out.join(f);
        let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `synth.train` + `synth.eval` scenes of `size` px under `out`: `images/`, `eval.json`,
/// the manifest, then `train.json`, each atomically: `train.json` existing means the set is
/// complete, so a run killed while generating regenerates it.
pub fn generate(out: &Path, synth: &SynthConfig, size: u32) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    synth.validate("config")?;
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(synth.seed);
    let radii = (synth.small_radius, synth.large_radius);
    let write_split = |name: &str, scenes: Vec<(RgbImage, [String; 2])>, offset: usize| -> Result<std::path::PathBuf> {
        let mut entries = Vec::with_capacity(scenes.len());
        for (i, (img, captions)) in scenes.into_iter().enumerate() {
            let id = offset + i;
            let file = format!("images/{id:06}.png");
            let path = out.join(&file);
            img.save(&path).map_err(|e| Error::file(&path, e.to_string()))?;
            entries.push(json!({ "image": file, "caption": captions, "image_id": format!("synth_{id}") }));
        }
        let path = out.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&entries).expect("json");
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    };
    // Scenes are drawn train first, as always; the files are written eval first.
    let train_scenes: Vec<_> = (0..synth.train).map(|_| scene(size, radii, &mut rng)).collect();
    let eval_scenes: Vec<_> = (0..synth.eval).map(|_| scene(size, radii, &mut rng)).collect();
    let eval = write_split("eval", eval_scenes, synth.train)?;
    write_vocabulary(out)?;
    let manifest = Manifest { synth: synth.clone(), image_size: size };
    write_atomic(&out.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest).expect("json").as_bytes())?;
    let train = write_split("train", train_scenes, 0)?;
    Ok((train, eval))
}

/// The objects a caption of this grammar names, in order, as (colour, shape): a colour word
/// directly followed by a shape word (sizes and relations are not part of the check).
pub fn named_objects(caption: &str) -> Vec<(&'static str, &'static str)> {
    let words: Vec<&str> = caption.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let colour = COLORS.iter().find(|c| c.0 == w[0])?.0;
            let shape = SHAPES.iter().find(|s| **s == w[1])?;
            Some((colour, *shape))
        })
        .collect()
}

/// A scene as its caption states it: two objects, the first left of (or above) the second; a
/// "right of" or "below" caption is read the other way round, so a caption and its converse give
/// the same scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scene {
    objects: [Object; 2],
    vertical: bool,
}

/// The attributes in which two scenes can differ, in the order they are named.
pub const ATTRIBUTES: [&str; 4] = ["colour", "shape", "size", "relation"];

impl Scene {
    /// Parses a caption of this grammar ("a small red circle left of a large blue square");
    /// `None` for anything else.
    pub fn parse(caption: &str) -> Option<Self> {
        let words: Vec<&str> = caption.split_whitespace().collect();
        let object = |w: &[&str]| -> Option<Object> {
            Some(Object {
                size: SIZES.iter().position(|s| *s == w[0])?,
                color: COLORS.iter().position(|c| c.0 == w[1])?,
                shape: SHAPES.iter().position(|s| *s == w[2])?,
            })
        };
        // "a" object relation "a" object, exactly.
        if words.len() < 9 || words[0] != "a" {
            return None;
        }
        let first = object(&words[1..4])?;
        let (rel, rest) = words[4..].split_at(words.len() - 8);
        if rest[0] != "a" {
            return None;
        }
        let second = object(&rest[1..4])?;
        let rel = rel.join(" ");
        let (_, _, dx, dy) = RELATIONS.iter().find(|r| r.0 == rel)?;
        let objects = if *dx > 0 || *dy > 0 { [second, first] } else { [first, second] };
        Some(Self { objects, vertical: *dy != 0 })
    }

    /// The attributes ([`ATTRIBUTES`]) in which `other` states this scene wrongly, under the
    /// pairing of objects that explains the most: the same two objects the other way round
    /// differ in their relation only.
    pub fn differences(&self, other: &Scene) -> Vec<&'static str> {
        let attributes = |a: &Object, b: &Object| [a.color != b.color, a.shape != b.shape, a.size != b.size];
        let read = |swapped: bool| {
            let (p, q) = if swapped { (1, 0) } else { (0, 1) };
            let (x, y) = (attributes(&self.objects[0], &other.objects[p]), attributes(&self.objects[1], &other.objects[q]));
            let relation = swapped || self.vertical != other.vertical;
            let slots = x.iter().chain(&y).filter(|d| **d).count() + usize::from(relation);
            (slots, [x[0] || y[0], x[1] || y[1], x[2] || y[2], relation])
        };
        let (straight, swapped) = (read(false), read(true));
        let best = if swapped.0 < straight.0 { swapped.1 } else { straight.1 };
        ATTRIBUTES.iter().zip(best).filter(|(_, d)| *d).map(|(a, _)| *a).collect()
    }
}

/// Whether `generated` names the colour and shape of both objects of the scene that `reference`
/// (a caption this generator wrote) describes, in either order and nothing more; `None` when
/// `reference` is not such a caption, so that other data sets are not scored.
pub fn names_both_objects(generated: &str, reference: &str) -> Option<bool> {
    let mut truth = named_objects(reference);
    if truth.len() != 2 {
        return None;
    }
    let mut said = named_objects(generated);
    truth.sort_unstable();
    said.sort_unstable();
    Some(said == truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_scored_on_both_objects() {
        let truth = "a small red circle left of a large blue square";
        assert_eq!(named_objects(truth), vec![("red", "circle"), ("blue", "square")]);
        // Either order, any size or relation: both objects named right.
        assert_eq!(names_both_objects("a large blue square right of a large red circle", truth), Some(true));
        // A wrong colour, a wrong shape, one object missing or a third one: wrong.
        assert_eq!(names_both_objects("a small green circle left of a large blue square", truth), Some(false));
        assert_eq!(names_both_objects("a small red triangle left of a large blue square", truth), Some(false));
        assert_eq!(names_both_objects("a small red circle", truth), Some(false));
        assert_eq!(names_both_objects("a red circle left of a blue square above a red circle", truth), Some(false));
        // Captions of other data are not scored.
        assert_eq!(names_both_objects("a red circle", "a dog on a sofa"), None);
        // Every generated scene's captions parse to its two objects.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let (_, [first, second]) = scene(32, LEGACY_RADII, &mut rng);
            assert_eq!(names_both_objects(&second, &first), Some(true), "{first} / {second}");
        }
    }

    #[test]
    fn a_caption_and_its_converse_state_one_scene() {
        let scene_of = |c: &str| Scene::parse(c).unwrap_or_else(|| panic!("{c}"));
        let truth = scene_of("a small red circle left of a large blue square");
        assert_eq!(truth, scene_of("a large blue square right of a small red circle"));
        let diff = |c: &str| truth.differences(&scene_of(c));
        assert!(diff("a large blue square right of a small red circle").is_empty());
        assert_eq!(diff("a small red triangle left of a large blue square"), ["shape"]);
        assert_eq!(diff("a small green circle left of a large blue circle"), ["colour", "shape"]);
        assert_eq!(diff("a large red circle left of a large blue square"), ["size"]);
        // The same objects swapped, or above instead of left of: the relation.
        assert_eq!(diff("a large blue square left of a small red circle"), ["relation"]);
        assert_eq!(diff("a small red circle above a large blue square"), ["relation"]);
        assert_eq!(diff("a small red circle below a large blue triangle"), ["shape", "relation"]);
        for other in ["a red circle", "a small red circle near a large blue square", "a dog on a sofa", ""] {
            assert_eq!(Scene::parse(other), None, "{other}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let (_, [first, second]) = scene(32, LEGACY_RADII, &mut rng);
            assert_eq!(Scene::parse(&first), Scene::parse(&second), "{first} / {second}");
        }
    }

    #[test]
    fn the_default_set_is_generated_where_any_config_puts_data_shapes_with_its_vocabulary() {
        let root = std::env::temp_dir().join(format!("qformer-synth-ensure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let synth = SynthConfig::new(3, 2, 1);
        let reporter = crate::util::report::Silent;
        // An absolute path ending in the default location: generated, vocabulary included.
        let train = root.join(DEFAULT_TRAIN);
        ensure(&train, Some(&synth), 16, &reporter).unwrap();
        let vocab = std::fs::read_to_string(train.with_file_name(VOCAB_FILE)).unwrap();
        assert_eq!(vocab.lines().count(), 22);
        assert_eq!(vocab.lines().take(6).collect::<Vec<_>>(), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]);
        // Every caption word is in it.
        let captions = std::fs::read_to_string(&train).unwrap();
        let words: std::collections::HashSet<&str> = vocab.lines().collect();
        let annotations: Vec<serde_json::Value> = serde_json::from_str(&captions).unwrap();
        for a in &annotations {
            for c in a["caption"].as_array().unwrap() {
                assert!(c.as_str().unwrap().split(' ').all(|w| words.contains(w)), "{c}");
            }
        }
        // A set from before the vocabulary gets it; anywhere else nothing is invented.
        std::fs::remove_file(train.with_file_name(VOCAB_FILE)).unwrap();
        ensure(&train, Some(&synth), 16, &reporter).unwrap();
        assert!(train.with_file_name(VOCAB_FILE).exists());
        let e = ensure(&root.join("data/shapez/train.json"), Some(&synth), 16, &reporter).unwrap_err().to_string();
        assert!(e.contains("data.train") && e.contains("shapez"), "{e}");
        assert!(!root.join("data/shapez").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_set_made_with_other_parameters_is_refused_not_trained_on() {
        let root = std::env::temp_dir().join(format!("qformer-synth-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let reporter = crate::util::report::Silent;
        let train = root.join(DEFAULT_TRAIN);
        let synth = SynthConfig { small_radius: 0.12, large_radius: 0.2, ..SynthConfig::new(3, 2, 1) };
        ensure(&train, Some(&synth), 16, &reporter).unwrap();
        ensure(&train, Some(&synth), 16, &reporter).unwrap();
        for other in [SynthConfig::new(3, 2, 1), SynthConfig { seed: 2, ..synth.clone() }] {
            let e = ensure(&train, Some(&other), 16, &reporter).unwrap_err().to_string();
            assert!(e.contains("data.synth") && e.contains("remove"), "{e}");
        }
        assert!(ensure(&train, Some(&synth), 32, &reporter).unwrap_err().to_string().contains("image_size"));
        // A set from before the manifest: the legacy radii pass, others are refused.
        std::fs::remove_file(train.with_file_name(MANIFEST_FILE)).unwrap();
        let legacy = SynthConfig { small_radius: LEGACY_RADII.0, large_radius: LEGACY_RADII.1, ..SynthConfig::new(3, 2, 1) };
        ensure(&train, Some(&legacy), 16, &reporter).unwrap();
        for other in [SynthConfig::new(3, 2, 1), synth] {
            let e = ensure(&train, Some(&other), 16, &reporter).unwrap_err().to_string();
            assert!(e.contains("before object sizes were recorded"), "{e}");
        }
        std::fs::remove_dir_all(&root).unwrap();
        // Radii that overlap or invert are refused by key.
        for (s, l) in [(0.0, 0.1), (0.2, 0.1), (0.1, 0.3)] {
            let bad = SynthConfig { small_radius: s, large_radius: l, ..SynthConfig::new(3, 2, 1) };
            assert!(bad.validate("t").unwrap_err().to_string().contains("data.synth.small_radius"));
        }
    }

    #[test]
    fn scenes_are_deterministic_and_captioned() {
        let a = scene(32, LEGACY_RADII, &mut ChaCha8Rng::seed_from_u64(9));
        let b = scene(32, LEGACY_RADII, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        let words: Vec<&str> = a.1[0].split(' ').collect();
        assert_eq!(words[0], "a");
        assert!(a.1[0].contains(" of a ") || a.1[0].contains(" above a ") || a.1[0].contains(" below a "), "{}", a.1[0]);
        // Both objects are visible: at least two colours besides the background.
        let distinct: std::collections::HashSet<[u8; 3]> = a.0.pixels().map(|p| p.0).filter(|p| COLORS.iter().any(|c| c.1 == *p)).collect();
        assert!(!distinct.is_empty());
    }
}
