//! Annotation formats, all read into one list of records: a COCO-Karpathy style JSON list, JSONL,
//! CSV/TSV with a header, and webdataset tar shards. A bad record is skipped and reported with its
//! file and line (or tar member); nothing is dropped silently.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::util::error::{Error, Result};

/// Where a record's image bytes live.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    File(PathBuf),
    /// A member of a tar shard, read on demand.
    TarMember {
        shard: Arc<PathBuf>,
        offset: u64,
        len: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub image: ImageSource,
    /// One or more captions (CapFilt and retrieval sets carry several).
    pub captions: Vec<String>,
    /// Records with equal ids show the same image.
    pub image_id: Option<String>,
    /// `file:line` or `shard:member`, for messages.
    pub origin: String,
}

/// A record that could not be used, with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub origin: String,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.reason)
    }
}

#[derive(Debug, Default)]
pub struct Annotations {
    pub records: Vec<Record>,
    pub skipped: Vec<Skip>,
}

/// Reads annotations, choosing the format from the extension; a folder means every `.tar` in it.
/// `image_root` defaults to the annotation file's folder.
pub fn load(path: &Path, image_root: Option<&Path>) -> Result<Annotations> {
    let root = image_root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    if path.is_dir() {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(Error::file(path, "folder holds no .tar shards"));
        }
        let mut all = Annotations::default();
        for shard in shards {
            let a = read_tar(&shard)?;
            all.records.extend(a.records);
            all.skipped.extend(a.skipped);
        }
        return Ok(all);
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "tar" => read_tar(path),
        "json" | "jsonl" | "csv" | "tsv" => {
            // Text is checked for UTF-8 where it is read: a bad line (or row) is a skip naming it;
            // a JSON list, one document, is refused whole.
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            match ext.as_str() {
                "json" => {
                    let text = std::str::from_utf8(&bytes)
                        .map_err(|e| Error::file(path, format!("not valid UTF-8 (byte {})", e.valid_up_to())))?;
                    parse_json(text, path, &root)
                }
                "jsonl" => Ok(parse_jsonl(&bytes, path, &root)),
                "csv" => parse_delimited(&bytes, b',', path, &root),
                _ => parse_delimited(&bytes, b'\t', path, &root),
            }
        }
        _ => Err(Error::file(path, "unknown annotation format: use .json, .jsonl, .csv, .tsv or .tar")),
    }
}

fn captions_of(v: &Value) -> std::result::Result<Vec<String>, String> {
    let captions: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|c| c.as_str().map(str::to_string).ok_or("caption list holds a non-string"))
            .collect::<std::result::Result<_, _>>()?,
        Value::Null => return Err("missing `caption`".into()),
        _ => return Err("`caption` must be a string or a list of strings".into()),
    };
    let captions: Vec<String> = captions.into_iter().filter(|c| !c.trim().is_empty()).collect();
    if captions.is_empty() {
        return Err("empty caption".into());
    }
    Ok(captions)
}

fn image_id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One JSON object (`image`, `caption`, optional `image_id`) to a record.
fn record_from_object(obj: &Value, root: &Path, origin: String) -> std::result::Result<Record, Skip> {
    let skip = |reason: String| Skip { origin: origin.clone(), reason };
    let obj = obj.as_object().ok_or_else(|| skip("not a JSON object".into()))?;
    let image = obj.get("image").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| skip("missing `image`".into()))?;
    let captions = captions_of(obj.get("caption").unwrap_or(&Value::Null)).map_err(skip)?;
    Ok(Record { image: ImageSource::File(root.join(image)), captions, image_id: image_id_of(obj.get("image_id")), origin })
}

fn collect(results: impl Iterator<Item = std::result::Result<Record, Skip>>) -> Annotations {
    let mut a = Annotations::default();
    for r in results {
        match r {
            Ok(rec) => a.records.push(rec),
            Err(s) => a.skipped.push(s),
        }
    }
    a
}

/// Line (1-based) of each top-level array element, for messages.
fn element_lines(text: &str, count: usize) -> Vec<usize> {
    let (mut depth, mut line, mut in_str, mut esc) = (0i32, 1usize, false, false);
    let mut lines = Vec::with_capacity(count);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => {
                if depth == 1 {
                    lines.push(line);
                }
                depth += 1;
            }
            '}' | ']' => depth -= 1,
            c if depth == 1 && !c.is_whitespace() && c != ',' => lines.push(line),
            _ => {}
        }
    }
    lines
}

fn parse_json(text: &str, path: &Path, root: &Path) -> Result<Annotations> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::file(path, format!("invalid JSON at line {}: {e}", e.line())))?;
    let items = value.as_array().ok_or_else(|| Error::file(path, "expected a JSON list of {image, caption} objects"))?;
    let lines = element_lines(text, items.len());
    let name = path.display();
    Ok(collect(items.iter().enumerate().map(|(i, item)| {
        let line = lines.get(i).copied().unwrap_or(0);
        record_from_object(item, root, format!("{name}:{line}"))
    })))
}

fn parse_jsonl(bytes: &[u8], path: &Path, root: &Path) -> Annotations {
    let name = path.display();
    collect(bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty()).map(|(i, line)| {
        let origin = format!("{name}:{}", i + 1);
        let line = std::str::from_utf8(line)
            .map_err(|e| Skip { origin: origin.clone(), reason: format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to()) })?;
        match serde_json::from_str::<Value>(line) {
            Ok(v) => record_from_object(&v, root, origin),
            Err(e) => Err(Skip { origin, reason: format!("invalid JSON: {e}") }),
        }
    }))
}

fn parse_delimited(bytes: &[u8], delimiter: u8, path: &Path, root: &Path) -> Result<Annotations> {
    let name = path.display();
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).from_reader(bytes);
    let headers = reader.headers().map_err(|e| Error::file(path, format!("unreadable header: {e}")))?.clone();
    let col = |n: &str| headers.iter().position(|h| h.trim() == n);
    let (image_col, caption_col) = match (col("image"), col("caption")) {
        (Some(i), Some(c)) => (i, c),
        _ => return Err(Error::file(path, "header must name the columns `image` and `caption`")),
    };
    let id_col = col("image_id");
    Ok(collect(reader.records().map(|row| {
        let row = row.map_err(|e| Skip {
            origin: format!("{name}:{}", e.position().map_or(0, |p| p.line())),
            reason: format!("malformed row: {e}"),
        })?;
        let origin = format!("{name}:{}", row.position().map_or(0, |p| p.line()));
        let field = |i: usize| row.get(i).map(str::trim).filter(|s| !s.is_empty());
        let image = field(image_col).ok_or_else(|| Skip { origin: origin.clone(), reason: "missing `image`".into() })?;
        let caption = field(caption_col).ok_or_else(|| Skip { origin: origin.clone(), reason: "empty caption".into() })?;
        Ok(Record {
            image: ImageSource::File(root.join(image)),
            captions: vec![caption.to_string()],
            image_id: id_col.and_then(field).map(str::to_string),
            origin,
        })
    })))
}

const IMAGE_EXTS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// A webdataset shard: members grouped by key (the name up to the first dot of the basename); an
/// image member (`jpg`, `png`, `webp`) plus `txt` or `json` (a `caption` field, string or list).
fn read_tar(path: &Path) -> Result<Annotations> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let shard = Arc::new(path.to_path_buf());
    let name = path.display().to_string();
    #[derive(Default)]
    struct Sample {
        image: Option<(u64, u64)>,
        caption: Option<std::result::Result<Vec<String>, String>>,
        image_id: Option<String>,
    }
    let mut samples: BTreeMap<String, Sample> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().map_err(|e| Error::file(path, format!("unreadable tar: {e}")))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                skipped.push(Skip {
                    origin: name.clone(),
                    reason: format!("tar shard cut short or corrupt after {} samples: {e}", samples.len()),
                });
                break;
            }
        };
        let member = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let base = member.rsplit('/').next().unwrap_or(&member).to_string();
        let Some((key, ext)) = base.split_once('.') else { continue };
        let key = format!("{}{}", member.strip_suffix(&base).unwrap_or(""), key);
        let ext = ext.to_ascii_lowercase();
        let sample = samples.entry(key).or_default();
        if IMAGE_EXTS.contains(&ext.as_str()) {
            sample.image = Some((entry.raw_file_position(), entry.size()));
        } else if ext == "txt" || ext == "json" {
            let mut buf = Vec::new();
            if let Err(e) = entry.read_to_end(&mut buf) {
                skipped.push(Skip { origin: format!("{name}:{member}"), reason: format!("unreadable member: {e}") });
                break;
            }
            let text = String::from_utf8_lossy(&buf);
            sample.caption = Some(if ext == "txt" {
                captions_of(&Value::String(text.into_owned()))
            } else {
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => {
                        sample.image_id = image_id_of(v.get("image_id"));
                        captions_of(v.get("caption").unwrap_or(&Value::Null))
                    }
                    Err(e) => Err(format!("invalid JSON: {e}")),
                }
            });
        }
    }
    let mut records = Vec::new();
    for (key, s) in samples {
        let origin = format!("{name}:{key}");
        match (s.image, s.caption) {
            (Some((offset, len)), Some(Ok(captions))) => records.push(Record {
                image: ImageSource::TarMember { shard: shard.clone(), offset, len },
                captions,
                image_id: s.image_id,
                origin,
            }),
            (None, _) => skipped.push(Skip { origin, reason: "no image member".into() }),
            (_, None) => skipped.push(Skip { origin, reason: "no txt or json caption".into() }),
            (_, Some(Err(reason))) => skipped.push(Skip { origin, reason }),
        }
    }
    Ok(Annotations { records, skipped })
}

impl ImageSource {
    /// The encoded image bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            ImageSource::File(p) => std::fs::read(p),
            ImageSource::TarMember { shard, offset, len } => {
                use std::io::{Seek, SeekFrom};
                let mut f = std::fs::File::open(shard.as_path())?;
                f.seek(SeekFrom::Start(*offset))?;
                let mut buf = vec![0; *len as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    }
}
