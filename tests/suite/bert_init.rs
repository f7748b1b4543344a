//! BERT initialisation. With the real pretrained all-MiniLM-L6-v2 (fetched by
//! `tools/fetch_minilm.py`, which `.ci/run` calls), a text-only pass of the initialised Q-Former
//! must reproduce `transformers.BertModel`'s last hidden states (`tools/make_bert_fixtures.py`):
//! exactly BERT's with `token_type = "fold"`, BERT's minus its token-type embedding with LAVIS's
//! `drop`. Tolerance: every value within 1e-5 of the largest |value| (outputs are LayerNormed, so
//! that is about 1e-5 absolute).

use crate::common;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use qformer::interop::bert::{init_from_bert, TokenType};
use qformer::interop::safetensors_io::SafetensorsFile;
use qformer::interop::source::TensorSource;
use qformer::interop::weights::param_names;
use qformer::model::{Pass, QFormer, QFormerConfig};
use qformer::objectives::AttentionMask;

type B = Flex;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> PathBuf {
    let path = root().join("target/assets/minilm/model.safetensors");
    assert!(path.exists(), "{} is missing: run tools/fetch_minilm.py (the README's test command does)", path.display());
    path
}

fn minilm_shape() -> QFormerConfig {
    QFormerConfig {
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        encoder_hidden_size: 64,
        num_query_tokens: 4,
        image_text_hidden_size: 32,
        vocab_size: 30523,
        bos_token_id: 30522,
        max_position_embeddings: 512,
        ..QFormerConfig::blip2()
    }
}

fn text_pass(model: &QFormer<B>, ids: &[i64], mask: &[i64], shape: &[usize]) -> Vec<f32> {
    let device = Default::default();
    let rows: Vec<Vec<i64>> = mask.chunks(shape[1]).map(<[i64]>::to_vec).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), shape.to_vec()), &device);
    let mask = AttentionMask::bidirectional(0, &rows).to_additive::<B>(&device);
    let embeds = model.embed(None, Some(ids), None);
    model.encode(Pass::text(embeds, mask)).hidden.into_data().to_vec::<f32>().unwrap()
}

/// The Q-Former shape of the tiny BERT fixtures (41 tokens, 2 layers), `hidden` wide.
fn tiny_bert(hidden: usize) -> QFormerConfig {
    QFormerConfig {
        hidden_size: hidden,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        encoder_hidden_size: 8,
        num_query_tokens: 2,
        image_text_hidden_size: 8,
        vocab_size: 41,
        bos_token_id: 40,
        max_position_embeddings: 12,
        ..QFormerConfig::blip2()
    }
}

#[test]
fn text_pass_of_minilm_initialised_qformer_equals_bert() {
    let _rng = common::serial();
    let device = Default::default();
    let cfg = minilm_shape();
    let src = TensorSource::open(&minilm()).unwrap();
    let expected = SafetensorsFile::open(&root().join("tests/fixtures/bert_init/minilm_expected.safetensors")).unwrap();
    let (shape, ids) = expected.i64("input_ids").unwrap();
    let (_, mask) = expected.i64("attention_mask").unwrap();
    for (mode, key) in [(TokenType::Drop, "hidden_drop"), (TokenType::Fold, "hidden_fold")] {
        let (model, report) = init_from_bert(QFormer::<B>::new(&cfg, &device), &cfg, &src, mode, &device).unwrap();
        let got = text_pass(&model, &ids, &mask, &shape);
        let (_, want) = expected.f32(key).unwrap();
        let err = common::max_rel_error(&got, &want);
        eprintln!("{key}: max error {err:.2e} of the largest value");
        assert!(err < 1e-5, "{key}: max error {err:e}");
        // Everything BERT has was used, except the token types (dropped or folded) and the pooler.
        assert!(
            report.unused.iter().all(|n| n.contains("token_type") || n.starts_with("pooler.") || n.ends_with("position_ids")),
            "{:?}",
            report.unused
        );
        assert!(report.kept.iter().any(|n| n.contains("crossattention")));
        assert!(report.kept.contains(&"lm_head.transform.dense.weight".to_string()), "no MLM head in this file");
    }
}

#[test]
fn prefixed_mlm_checkpoint_maps_every_part() {
    let _rng = common::serial();
    let device = Default::default();
    let cfg = tiny_bert(16);
    let path = root().join("tests/fixtures/bert_init/mlm_tiny.safetensors");
    let src = TensorSource::open(&path).unwrap();
    let fresh = QFormer::<B>::new(&cfg, &device);
    let before = fresh.embeddings.word.weight.val().into_data().to_vec::<f32>().unwrap();
    let (model, report) = init_from_bert(fresh, &cfg, &src, TokenType::Drop, &device).unwrap();
    let host2 = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
    let file = |n: &str| src.get(n).unwrap().values;

    // The vocabulary is BERT's plus a new [DEC] row that keeps its initial values.
    let word = host2(model.embeddings.word.weight.val());
    assert_eq!(word[..40 * 16], file("bert.embeddings.word_embeddings.weight")[..]);
    assert_eq!(word[40 * 16..], before[40 * 16..]);
    // The query FFN is a copy of the text FFN, and the two are separate parameters.
    let l0 = &model.layers[0];
    assert_eq!(host2(l0.ffn_query.intermediate.weight.val()), host2(l0.ffn_text.intermediate.weight.val()));
    assert_ne!(l0.ffn_query.intermediate.weight.id, l0.ffn_text.intermediate.weight.id);
    // Self-attention in burn's [in, out] layout.
    let q = host2(l0.attention.query.weight.val().transpose());
    assert_eq!(q, file("bert.encoder.layer.0.attention.self.query.weight"));
    // The MLM head: transform and bias (the [DEC] bias entry stays 0).
    assert_eq!(host2(model.lm_head.dense.weight.val().transpose()), file("cls.predictions.transform.dense.weight"));
    let bias = model.lm_head.bias.val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(bias[..40], file("cls.predictions.bias")[..]);
    assert_eq!(bias[40], 0.0);
    // Cross-attention, query tokens, projections and heads are not in BERT.
    for name in ["query_tokens", "qformer.encoder.layer.0.crossattention.attention.key.weight", "itm_head.weight", "ln_vision.weight"] {
        assert!(report.kept.contains(&name.to_string()), "{name}");
    }
    assert_eq!(report.loaded + report.kept.len(), param_names(&model).len());
}

#[test]
fn mismatched_bert_is_refused_by_name() {
    let _rng = common::serial();
    let device = Default::default();
    let path = root().join("tests/fixtures/bert_init/mlm_tiny.safetensors");
    let src = TensorSource::open(&path).unwrap();
    let cfg = tiny_bert(32);
    let err = init_from_bert(QFormer::<B>::new(&cfg, &device), &cfg, &src, TokenType::Drop, &device).err().unwrap().to_string();
    assert!(err.contains("mlm_tiny.safetensors") && err.contains("bert.embeddings") && err.contains("shape"), "{err}");
    let deep = QFormerConfig { hidden_size: 16, num_hidden_layers: 3, ..cfg };
    let err = init_from_bert(QFormer::<B>::new(&deep, &device), &deep, &src, TokenType::Drop, &device).err().unwrap().to_string();
    assert!(err.contains("has 2 layers"), "{err}");
}
