//! Captions from the ITG decoder, as LAVIS's stage-one `generate`: the query pass over the image
//! gives the per-layer query keys/values; the text decoder starts from `[DEC]` and attends to all
//! of them and to its own earlier tokens (the multimodal causal mask). Greedy or beam search, with
//! minimum and maximum length; a caption ends at `[SEP]`.

use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

use crate::kernels::Kernels;
use crate::model::{KeyValue, Pass, QFormer};
use crate::objectives::AttentionMask;
use crate::util::host::int_tensor;
use crate::util::host::{to_f32, to_i64};

#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// 1 is greedy decoding.
    pub beams: usize,
    /// Tokens after `[DEC]`, `[SEP]` included (LAVIS: 30).
    pub max_len: usize,
    /// `[SEP]` is not allowed before this many tokens (LAVIS: 10 for beam search).
    pub min_len: usize,
    /// Finished beams are ranked by log-probability / length^penalty (HF's default 1.0).
    pub length_penalty: f64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { beams: 3, max_len: 30, min_len: 10, length_penalty: 1.0 }
    }
}

/// Next-token logits `[n, vocab]` after each prefix: `prefixes` rows of equal length, all
/// starting with `[DEC]`, row `i` against row `i` of the query keys/values `prefix`.
fn next_token_logits<B: Kernels>(model: &QFormer<B>, prefix: &[KeyValue<B>], prefixes: &[Vec<i64>]) -> Tensor<B, 2> {
    let device = model.query_tokens.device();
    let (n, t, q) = (prefixes.len(), prefixes[0].len(), model.num_query);
    let ids = int_tensor::<B>(prefixes, &device);
    let mask = AttentionMask::multimodal_causal(q, &vec![vec![1; t]; n]).select_rows(q, t).to_additive::<B>(&device);
    let hidden = model.encode(Pass::after_queries(model.embed(None, Some(ids), None), mask, prefix)).hidden;
    let d = hidden.dims()[2];
    model.lm_logits(hidden.slice([0..n, t - 1..t, 0..d]).reshape([n, d]))
}

/// Log-probabilities of the next token after each prefix, against one image's query keys/values.
fn next_token_logprobs<B: Kernels>(model: &QFormer<B>, query_kv: &[KeyValue<B>], prefixes: &[Vec<i64>]) -> Vec<Vec<f32>> {
    let prefix: Vec<KeyValue<B>> = query_kv.iter().map(|kv| kv.select(&vec![0; prefixes.len()])).collect();
    let logp = log_softmax(next_token_logits(model, &prefix, prefixes), 1);
    let vocab = logp.dims()[1];
    let flat = to_f32(logp);
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// Greedy captions (token ids without `[DEC]` and `[SEP]`) of a batch of images at once, one per
/// row of `query_kv`: every row takes its most likely token at each step, on the device (one
/// small read-back per step), until all have ended or `max_len` tokens.
pub fn greedy_batch<B: Kernels>(model: &QFormer<B>, query_kv: &[KeyValue<B>], eos: i64, max_len: usize) -> Vec<Vec<i64>> {
    let n = query_kv.first().map_or(0, |kv| kv.key.dims()[0]);
    let mut prefixes = vec![vec![model.bos_token_id as i64]; n];
    let mut done = vec![false; n];
    for _ in 0..max_len {
        if done.iter().all(|&d| d) {
            break;
        }
        let next = to_i64(next_token_logits(model, query_kv, &prefixes).argmax(1));
        for ((p, d), &tok) in prefixes.iter_mut().zip(&mut done).zip(&next) {
            *d |= tok == eos;
            p.push(if *d { eos } else { tok });
        }
    }
    prefixes.into_iter().map(|p| p.into_iter().skip(1).take_while(|&t| t != eos).collect()).collect()
}

/// Token ids of one caption (without `[DEC]` and `[SEP]`) for one image's query keys/values
/// (`[1, H, Q, head_dim]` per layer).
pub fn generate<B: Kernels>(model: &QFormer<B>, query_kv: &[KeyValue<B>], eos: i64, opts: &DecodeOptions) -> Vec<i64> {
    let bos = model.bos_token_id as i64;
    let beams = opts.beams.max(1);
    // (tokens after [DEC], summed log-probability)
    let mut alive: Vec<(Vec<i64>, f64)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<(Vec<i64>, f64)> = Vec::new();
    let score = |tokens: &[i64], logp: f64| logp / ((tokens.len() + 1) as f64).powf(opts.length_penalty);
    for step in 0..opts.max_len {
        let prefixes: Vec<Vec<i64>> = alive.iter().map(|(t, _)| [vec![bos], t.clone()].concat()).collect();
        let logprobs = next_token_logprobs(model, query_kv, &prefixes);
        // Each beam offers its 2×beams best tokens, so that beams ending here can be replaced.
        let width = 2 * beams;
        let mut candidates: Vec<(usize, i64, f64)> = Vec::new();
        for (b, lp) in logprobs.iter().enumerate() {
            let mut order: Vec<usize> =
                (0..lp.len()).filter(|&tok| (tok as i64 != eos || step + 1 >= opts.min_len) && tok as i64 != bos).collect();
            let keep = width.min(order.len());
            order.select_nth_unstable_by(keep - 1, |&x, &y| lp[y].total_cmp(&lp[x]));
            candidates.extend(order[..keep].iter().map(|&tok| (b, tok as i64, alive[b].1 + f64::from(lp[tok]))));
        }
        candidates.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut next = Vec::with_capacity(beams);
        for (rank, (b, tok, logp)) in candidates.into_iter().enumerate() {
            if next.len() == beams {
                break;
            }
            let tokens = alive[b].0.clone();
            if tok == eos {
                // An ending counts only when it ranks among the best `beams` continuations.
                if rank < beams {
                    finished.push((tokens, logp));
                }
            } else {
                next.push(([tokens, vec![tok]].concat(), logp));
            }
        }
        alive = next;
        if finished.len() >= beams {
            let mut kept: Vec<f64> = finished.iter().map(|(t, l)| score(t, *l)).collect();
            kept.sort_by(|a, b| b.total_cmp(a));
            let best_alive = alive.iter().map(|(t, l)| score(t, *l)).fold(f64::NEG_INFINITY, f64::max);
            if best_alive <= kept[beams - 1] {
                break;
            }
        }
        if alive.is_empty() {
            break;
        }
    }
    finished.extend(alive);
    finished.into_iter().max_by(|a, b| score(&a.0, a.1).total_cmp(&score(&b.0, b.1))).map(|(tokens, _)| tokens).unwrap_or_default()
}
