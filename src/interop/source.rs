//! Read-only access to foreign weight files by tensor name: safetensors, or PyTorch pickles
//! (`.pth`/`.pt`/`.bin`) through burn-store's reader, which parses the pickle opcodes itself and
//! never executes code from the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use super::safetensors_io::SafetensorsFile;
use crate::util::error::{Error, Result};

/// One tensor on the host, as f32, in the file's layout.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

enum Inner {
    Safetensors(SafetensorsFile),
    Pytorch(HashMap<String, TensorSnapshot>),
}

/// A weights file opened for reading by name.
pub struct TensorSource {
    pub path: PathBuf,
    inner: Inner,
}

impl From<SafetensorsFile> for TensorSource {
    fn from(file: SafetensorsFile) -> Self {
        Self { path: file.path.clone(), inner: Inner::Safetensors(file) }
    }
}

impl TensorSource {
    /// Opens by extension: `.safetensors`, or a PyTorch checkpoint. A PyTorch file whose top level
    /// is a dict with a `model` (LAVIS) or `state_dict` entry is read from that entry.
    pub fn open(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let inner = match ext {
            "safetensors" => Inner::Safetensors(SafetensorsFile::open(path)?),
            "pth" | "pt" | "bin" | "ckpt" => {
                if !path.exists() {
                    return Err(Error::file(path, "file not found"));
                }
                let read = |key: Option<&str>| match key {
                    Some(k) => PytorchReader::with_top_level_key(path, k),
                    None => PytorchReader::new(path),
                };
                let reader = read(Some("model"))
                    .or_else(|_| read(Some("state_dict")))
                    .or_else(|_| read(None))
                    .map_err(|e| Error::file(path, format!("not a readable PyTorch checkpoint: {e}")))?;
                Inner::Pytorch(reader.into_tensors())
            }
            _ => return Err(Error::file(path, "unknown weights format: expected .safetensors, .pth, .pt or .bin")),
        };
        Ok(Self { path: path.to_path_buf(), inner })
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.inner {
            Inner::Safetensors(f) => f.names().unwrap_or_default(),
            Inner::Pytorch(t) => t.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.inner {
            Inner::Safetensors(f) => f.contains(name).unwrap_or(false),
            Inner::Pytorch(t) => t.contains_key(name),
        }
    }

    /// A float tensor converted to f32; an error names the tensor when it is missing.
    pub fn get(&self, name: &str) -> Result<HostTensor> {
        match &self.inner {
            Inner::Safetensors(f) => f.f32(name).map(|(shape, values)| HostTensor { shape, values }),
            Inner::Pytorch(t) => {
                let snap = t.get(name).ok_or_else(|| Error::file(&self.path, format!("missing tensor `{name}`")))?;
                let data = snap.to_data().map_err(|e| Error::file(&self.path, format!("tensor `{name}`: {e:?}")))?;
                let shape = data.shape.to_vec();
                let values = data
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| Error::file(&self.path, format!("tensor `{name}` is not a float tensor: {e:?}")))?;
                Ok(HostTensor { shape, values })
            }
        }
    }

    /// [`get`](Self::get) with a shape check.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::file(&self.path, format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t)
    }
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
