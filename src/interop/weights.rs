//! Q-Former weights as safetensors under Hugging Face `Blip2ForImageTextRetrieval` names (plus
//! `temp` and the LM head, which HF cannot hold). Linear weights are stored `[out, in]` as PyTorch
//! does; the tied decoder weight is stored once, as the word embeddings. The model's shapes travel
//! in the metadata key `config`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;

use crate::model::norm::LayerNorm;
use burn::tensor::{Tensor, TensorData};

use super::hf_config::{model_config_file, model_config_from_json};
use super::safetensors_io::{write_safetensors, OwnedTensor, SafetensorsFile};
use super::source::{transpose, TensorSource};
use crate::kernels::{Kernels, TrainBackend};
use crate::model::{QFormer, QFormerConfig};
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

/// How a parameter's burn layout maps to the file's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Same,
    /// burn `Linear` keeps `[in, out]`, PyTorch `[out, in]`.
    Transposed,
    /// burn `[1]`, file 0-D.
    Scalar,
}

/// Receives every trainable parameter with its file name.
pub trait ParamVisitor<B: Kernels> {
    fn visit<const D: usize>(&mut self, name: &str, param: &mut Param<Tensor<B, D>>, layout: Layout);
}

fn linear<B: Kernels, V: ParamVisitor<B>>(v: &mut V, prefix: &str, l: &mut Linear<B>) {
    v.visit(&format!("{prefix}.weight"), &mut l.weight, Layout::Transposed);
    if let Some(bias) = &mut l.bias {
        v.visit(&format!("{prefix}.bias"), bias, Layout::Same);
    }
}

fn layer_norm<B: Kernels, V: ParamVisitor<B>>(v: &mut V, prefix: &str, n: &mut LayerNorm<B>) {
    v.visit(&format!("{prefix}.weight"), &mut n.gamma, Layout::Same);
    if let Some(beta) = &mut n.beta {
        v.visit(&format!("{prefix}.bias"), beta, Layout::Same);
    }
}

/// Walks the model in file order. The one place where parameter names are defined.
pub fn visit_params<B: Kernels, V: ParamVisitor<B>>(m: &mut QFormer<B>, v: &mut V) {
    v.visit("query_tokens", &mut m.query_tokens, Layout::Same);
    v.visit("temp", &mut m.temp, Layout::Scalar);
    v.visit("embeddings.word_embeddings.weight", &mut m.embeddings.word.weight, Layout::Same);
    v.visit("embeddings.position_embeddings.weight", &mut m.embeddings.position.weight, Layout::Same);
    layer_norm(v, "qformer.layernorm", &mut m.embeddings.norm);
    for (i, layer) in m.layers.iter_mut().enumerate() {
        let p = format!("qformer.encoder.layer.{i}");
        let attention = |v: &mut V, name: &str, a: &mut crate::model::attention::Attention<B>| {
            linear(v, &format!("{p}.{name}.attention.query"), &mut a.query);
            linear(v, &format!("{p}.{name}.attention.key"), &mut a.key);
            linear(v, &format!("{p}.{name}.attention.value"), &mut a.value);
            linear(v, &format!("{p}.{name}.output.dense"), &mut a.dense);
            layer_norm(v, &format!("{p}.{name}.output.LayerNorm"), &mut a.norm);
        };
        attention(v, "attention", &mut layer.attention);
        if let Some(cross) = &mut layer.crossattention {
            attention(v, "crossattention", cross);
        }
        linear(v, &format!("{p}.intermediate.dense"), &mut layer.ffn_text.intermediate);
        linear(v, &format!("{p}.output.dense"), &mut layer.ffn_text.output);
        layer_norm(v, &format!("{p}.output.LayerNorm"), &mut layer.ffn_text.norm);
        linear(v, &format!("{p}.intermediate_query.dense"), &mut layer.ffn_query.intermediate);
        linear(v, &format!("{p}.output_query.dense"), &mut layer.ffn_query.output);
        layer_norm(v, &format!("{p}.output_query.LayerNorm"), &mut layer.ffn_query.norm);
    }
    layer_norm(v, "ln_vision", &mut m.ln_vision);
    linear(v, "vision_proj", &mut m.vision_proj);
    linear(v, "text_proj", &mut m.text_proj);
    linear(v, "itm_head", &mut m.itm_head);
    v.visit("lm_head.bias", &mut m.lm_head.bias, Layout::Same);
    linear(v, "lm_head.transform.dense", &mut m.lm_head.dense);
    layer_norm(v, "lm_head.transform.LayerNorm", &mut m.lm_head.norm);
}

fn to_file_layout<B: Kernels, const D: usize>(t: Tensor<B, D>, layout: Layout) -> OwnedTensor {
    let t = if layout == Layout::Transposed { t.swap_dims(0, 1) } else { t };
    let shape = if layout == Layout::Scalar { vec![] } else { t.dims().to_vec() };
    let values = to_f32(t);
    OwnedTensor::f32(shape, &values)
}

/// Parameter names in file order.
pub fn param_names<B: Kernels>(model: &QFormer<B>) -> Vec<String> {
    struct Names(Vec<String>);
    impl<B: Kernels> ParamVisitor<B> for Names {
        fn visit<const D: usize>(&mut self, name: &str, _: &mut Param<Tensor<B, D>>, _: Layout) {
            self.0.push(name.to_string());
        }
    }
    let mut names = Names(Vec::new());
    visit_params(&mut model.clone(), &mut names);
    names.0
}

fn metadata(cfg: &QFormerConfig) -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string()), ("config".to_string(), cfg.to_json())])
}

/// Every parameter in the file layout, under our names, in file order.
pub fn named_tensors<B: Kernels>(model: &QFormer<B>) -> Vec<(String, OwnedTensor)> {
    struct Collect(Vec<(String, OwnedTensor)>);
    impl<B: Kernels> ParamVisitor<B> for Collect {
        fn visit<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
            self.0.push((name.to_string(), to_file_layout(p.val(), layout)));
        }
    }
    let mut out = Collect(Vec::new());
    visit_params(&mut model.clone(), &mut out);
    out.0
}

/// Writes the model's weights (atomically) with its config in the metadata.
pub fn save_weights<B: Kernels>(model: &QFormer<B>, cfg: &QFormerConfig, path: &Path) -> Result<()> {
    write_safetensors(path, named_tensors(model), metadata(cfg))
}

/// Writes d(loss)/d(parameter) for every parameter under the weights' names. A parameter the loss
/// does not reach (a switched-off objective's head) gets zeros.
pub fn save_gradients<B: TrainBackend>(model: &QFormer<B>, cfg: &QFormerConfig, grads: &B::Gradients, path: &Path) -> Result<()> {
    struct Collect<'a, B: TrainBackend>(Vec<(String, OwnedTensor)>, &'a B::Gradients);
    impl<B: TrainBackend> ParamVisitor<B> for Collect<'_, B> {
        fn visit<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
            let value = p.val();
            let grad = value.grad(self.1).unwrap_or_else(|| value.inner().zeros_like());
            self.0.push((name.to_string(), to_file_layout(grad, layout)));
        }
    }
    let mut out = Collect::<B>(Vec::new(), grads);
    visit_params(&mut model.clone(), &mut out);
    write_safetensors(path, out.0, metadata(cfg))
}

/// Reads the model config from a weights file's `config` metadata or, for files written by
/// `transformers` (no such metadata), from the `config.json` beside them.
pub fn read_config(file: &SafetensorsFile) -> Result<QFormerConfig> {
    let meta = file.metadata()?;
    if let Some(json) = meta.get("config") {
        return model_config_from_json(json, &file.path.display().to_string());
    }
    let beside = file.path.with_file_name("config.json");
    if beside.exists() {
        return model_config_file(&beside);
    }
    Err(Error::file(&file.path, "no `config` in the metadata and no config.json beside it: pass the model shape with --config"))
}

/// Where one model parameter comes from in a foreign file.
pub struct Mapped {
    pub name: String,
    /// The file may hold fewer leading rows than the model (a vocabulary without `[DEC]`) or more
    /// (a longer position table); the model's own values fill any rows the file lacks.
    pub partial_rows: bool,
}

impl Mapped {
    pub fn exact(name: impl Into<String>) -> Self {
        Self { name: name.into(), partial_rows: false }
    }
}

/// What a mapped load did: parameters it left at their initial values, file tensors it ignored.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub kept: Vec<String>,
    pub unused: Vec<String>,
}

/// Replaces the parameters of `model` for which `map` names a tensor in `src` (layouts converted,
/// shapes checked, the tensor named on any mismatch). A mapped tensor missing from the file is an
/// error; parameters that `map` skips keep their values.
pub fn load_mapped<B: Kernels>(
    mut model: QFormer<B>,
    src: &TensorSource,
    map: impl Fn(&str) -> Option<Mapped>,
    device: &B::Device,
) -> Result<(QFormer<B>, LoadReport)> {
    struct Load<'a, B: Kernels, F> {
        src: &'a TensorSource,
        map: F,
        device: &'a B::Device,
        report: LoadReport,
        used: HashSet<String>,
        error: Option<Error>,
    }
    impl<B: Kernels, F: Fn(&str) -> Option<Mapped>> ParamVisitor<B> for Load<'_, B, F> {
        fn visit<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
            if self.error.is_some() {
                return;
            }
            let Some(m) = (self.map)(name) else {
                self.report.kept.push(name.to_string());
                return;
            };
            match read_param(self.src, &m, p.val(), layout, self.device) {
                Ok(t) => {
                    *p = Param::initialized(p.id, t.require_grad());
                    self.used.insert(m.name);
                    self.report.loaded += 1;
                }
                Err(e) => self.error = Some(e),
            }
        }
    }
    let mut loader = Load::<B, _> { src, map, device, report: LoadReport::default(), used: HashSet::new(), error: None };
    visit_params(&mut model, &mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    let mut report = loader.report;
    report.unused = src.names().into_iter().filter(|n| !loader.used.contains(n)).collect();
    Ok((model, report))
}

/// One parameter from the file, converted to burn's layout.
fn read_param<B: Kernels, const D: usize>(
    src: &TensorSource,
    m: &Mapped,
    current: Tensor<B, D>,
    layout: Layout,
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    let name = &m.name;
    let want = current.dims().to_vec();
    let file = src.get(name)?;
    let file_shape: Vec<usize> = match layout {
        Layout::Same => want.clone(),
        Layout::Transposed => vec![want[1], want[0]],
        Layout::Scalar => vec![],
    };
    let mismatch = || Error::file(&src.path, format!("tensor `{name}` has shape {:?}, the model needs {file_shape:?}", file.shape));
    // A [1] temperature is accepted as well as a 0-D one.
    if layout == Layout::Scalar && (file.shape.is_empty() || file.shape == [1]) {
        return Ok(Tensor::from_data(TensorData::new(file.values, want), device));
    }
    if file.shape == file_shape {
        // Transposed on the host so the parameter is contiguous, exactly like one that training
        // produced: a strided view takes other matmul kernels, whose rounding differs, and a
        // resumed run would drift from an uninterrupted one.
        let values = if layout == Layout::Transposed { transpose(&file.values, file_shape[0], file_shape[1]) } else { file.values };
        return Ok(Tensor::from_data(TensorData::new(values, want), device));
    }
    if !(m.partial_rows && layout == Layout::Same && file.shape.len() == want.len() && file.shape[1..] == want[1..]) {
        return Err(mismatch());
    }
    let row: usize = want[1..].iter().product();
    let rows = file.shape[0].min(want[0]);
    let mut values = to_f32(current);
    values[..rows * row].copy_from_slice(&file.values[..rows * row]);
    Ok(Tensor::from_data(TensorData::new(values, want), device))
}

/// Loads a model. Every parameter must be present with its exact shape, and the file must hold
/// nothing else: a partial or mismatched load is refused, naming the tensor.
pub fn load_weights<B: Kernels>(path: &Path, cfg: Option<&QFormerConfig>, device: &B::Device) -> Result<(QFormer<B>, QFormerConfig)> {
    let file = SafetensorsFile::open(path)?;
    let cfg = match cfg {
        Some(c) => c.clone(),
        None => read_config(&file)?,
    };
    let src = TensorSource::from(file);
    let (model, report) = load_mapped(QFormer::new(&cfg, device), &src, |n| Some(Mapped::exact(n)), device)?;
    if !report.unused.is_empty() {
        return Err(Error::file(path, format!("tensors the model does not have: {}", report.unused.join(", "))));
    }
    Ok((model, cfg))
}
