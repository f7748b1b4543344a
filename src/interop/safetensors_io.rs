//! Reading and atomically writing safetensors files of f32/i64 tensors.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::util::error::{Error, Result};
use crate::util::fs::write_atomic;

/// An owned tensor ready to be written.
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self { dtype: Dtype::F32, shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Self {
        Self { dtype: Dtype::I64, shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}

/// Writes `tensors` with `metadata` over `path` atomically (`util::fs`).
pub fn write_safetensors(path: &Path, tensors: Vec<(String, OwnedTensor)>, metadata: HashMap<String, String>) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::file(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::file(path, e.to_string()))?;
    write_atomic(path, &with_metadata(&bytes, metadata).map_err(|e| Error::file(path, e))?)
}

/// Adds `metadata` to a serialised file's header with its keys sorted: the crate writes a
/// `HashMap` in its random iteration order, so two runs would write different bytes for the same
/// content. The header is padded to a multiple of 8 bytes, as the format requires.
fn with_metadata(bytes: &[u8], metadata: HashMap<String, String>) -> std::result::Result<Vec<u8>, String> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).ok_or("no header")?;
    let header = bytes.get(8..8 + n).ok_or("header past the end")?;
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let sorted: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
    json.insert("__metadata__".into(), serde_json::to_value(sorted).map_err(|e| e.to_string())?);
    let mut header = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Where one tensor lies in the file.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// A whole safetensors file in memory, its header parsed and validated once at open.
pub struct SafetensorsFile {
    pub path: std::path::PathBuf,
    bytes: Vec<u8>,
    index: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let invalid = |e: safetensors::SafeTensorError| Error::file(path, format!("not a valid safetensors file: {e}"));
        // Full validation (offsets inside the buffer, no overlaps) before anything is indexed.
        SafeTensors::deserialize(&bytes).map_err(invalid)?;
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
        let data_start = 8 + header_len;
        let index = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (a, b) = info.data_offsets;
                (name, Entry { dtype: info.dtype, shape: info.shape.clone(), range: data_start + a..data_start + b })
            })
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), bytes, index, metadata })
    }

    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        Ok(self.metadata.clone())
    }

    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.index.keys().cloned().collect())
    }

    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.index.contains_key(name))
    }

    fn view(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let e = self.index.get(name).ok_or_else(|| Error::file(&self.path, format!("missing tensor `{name}`")))?;
        Ok((e.dtype, e.shape.clone(), &self.bytes[e.range.clone()]))
    }

    /// An f32 tensor (f64, f16 and bf16 are converted) with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, data) = self.view(name)?;
        let values = match dtype {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)).collect(),
            other => return Err(Error::file(&self.path, format!("tensor `{name}` is {other:?}, expected a float type"))),
        };
        Ok((shape, values))
    }

    /// An integer tensor (i64 or i32) with its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (dtype, shape, data) = self.view(name)?;
        let values = match dtype {
            Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => data.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes")))).collect(),
            other => return Err(Error::file(&self.path, format!("tensor `{name}` is {other:?}, expected i64"))),
        };
        Ok((shape, values))
    }
}

/// IEEE half to single precision.
fn half_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: renormalise.
            let shift = f.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_content_gives_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("qformer-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = || (0..8).map(|i| (format!("key{i}"), format!("value{i}"))).collect::<HashMap<_, _>>();
        let write = |name: &str| {
            let path = dir.join(name);
            let t =
                vec![("b".to_string(), OwnedTensor::f32(vec![3], &[1.0, 2.0, 3.0])), ("a".to_string(), OwnedTensor::f32(vec![1], &[4.0]))];
            write_safetensors(&path, t, meta()).unwrap();
            std::fs::read(&path).unwrap()
        };
        // Eight keys in two fresh `HashMap`s: their iteration orders differ almost surely.
        let (x, y) = (write("x.safetensors"), write("y.safetensors"));
        assert_eq!(x, y);
        let f = SafetensorsFile::open(&dir.join("x.safetensors")).unwrap();
        assert_eq!(f.metadata().unwrap(), meta());
        assert_eq!(f.f32("b").unwrap(), (vec![3], vec![1.0, 2.0, 3.0]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_conversion() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert!(half_to_f32(0x7c00).is_infinite());
    }
}
