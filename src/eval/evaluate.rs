//! Held-out evaluation of a stage-one model, as LAVIS evaluates retrieval: rank by ITC similarity
//! (query-max cosine, no temperature), then re-rank each query's top `k_test` candidates by
//! ITM (score = ITC cosine + the positive-class ITM logit, averaged over queries); everything
//! else keeps −100. Also ITM accuracy on positives and on the hardest ITC negatives, and ITG
//! token perplexity of the captions given their images and given other images (the grounding
//! gap). The device holds one chunk of images' keys and values at a time.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::caption::greedy_batch;
use super::confusions::{confusions, Confusions, Scenes};
use super::retrieval::{frozen_features, itc_scores, recall, recall_in_tiers, Recall};
use super::scoring::{image_side, itm_logits, ImageSide};
use crate::data::eval_set::EvalSet;
use crate::data::synth::names_both_objects;
use crate::data::text::TextEncoder;
use crate::kernels::Kernels;
use crate::model::frozen::Frozen;
use crate::model::QFormer;
use crate::objectives::itg::{itg_loss, targets};
use crate::util::error::Result;
use crate::util::host::{scalar, to_f32};
use crate::util::seed::mix;

#[derive(Clone, Copy)]
pub struct EvalOptions<'a> {
    /// Candidates re-ranked by ITM per query (LAVIS: 128 on COCO, 256 on Flickr).
    pub k_test: usize,
    /// Images or captions per forward.
    pub chunk: usize,
    /// Seeds the derangement that pairs captions with other images for the grounding gap.
    pub seed: u64,
    /// With the tokenizer, each image's greedy caption is scored against the scene its held-out
    /// caption describes, when those captions are of the generated shapes grammar.
    pub captions: Option<&'a TextEncoder>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalTiming {
    /// The second pass's frozen encoder and query pass (image keys/values, ITG prefix).
    pub features_ms: f64,
    /// The first pass: frozen encoder, ITC embeddings and similarities.
    pub itc_ms: f64,
    pub rerank_ms: f64,
    pub itg_ms: f64,
    #[serde(default)]
    pub caption_ms: f64,
    /// Image-text pairs scored by ITM (re-ranking and accuracy pairs, each pair once).
    pub itm_pairs: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub texts: usize,
    pub k_test: usize,
    /// Ranked by ITC similarity.
    pub itc: Recall,
    /// Top `k_test` re-ranked by ITM.
    pub itm: Recall,
    /// ITM accuracy (percent) on every (image, own caption) pair.
    pub itm_acc_positive: f64,
    /// ITM accuracy (percent) on each image's hardest ITC negative caption and each caption's
    /// hardest ITC negative image.
    pub itm_acc_negative: f64,
    /// exp(mean token negative log-likelihood) of the captions under ITG.
    pub itg_perplexity: f64,
    /// Mean token NLL of the captions given another image (a fixed derangement of the set's
    /// images, [`derangement`]) minus given their own, nats per token: near 0 when ITG ignores
    /// the image.
    #[serde(default)]
    pub itg_grounding_gap: f64,
    /// Percent of images whose greedy caption names the colour and shape of both objects
    /// (generated shapes set only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_accuracy: Option<f64>,
    /// The mistakes by the attributes the wrong item gets wrong (generated shapes set only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusions: Option<Confusions>,
    pub timing: EvalTiming,
}

impl EvalReport {
    /// Re-ranked R@1 minus ITC R@1, (image → text, text → image): positive when ITM helps.
    pub fn rerank_gain(&self) -> (f64, f64) {
        (self.itm.i2t_r1 - self.itc.i2t_r1, self.itm.t2i_r1 - self.itc.t2i_r1)
    }
}

/// Each query's top-k candidates as a set.
fn top_sets(tops: &[Vec<usize>]) -> Vec<std::collections::HashSet<usize>> {
    tops.iter().map(|t| t.iter().copied().collect()).collect()
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The best-scoring candidate that `exclude` does not rule out.
fn hardest(scores: &[f32], exclude: impl Fn(usize) -> bool) -> Option<usize> {
    (0..scores.len()).filter(|&j| !exclude(j)).max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
}

/// Re-ranked score matrices (`i2t`: images × texts, `t2i`: texts × images): each query's ITC
/// top-k candidates get `itm(image, text) + sim` (LAVIS's score), everything else keeps its ITC
/// similarity. Ranked with the top k as a first tier ([`recall_in_tiers`]), re-ranking changes
/// only the order inside each top k. (LAVIS puts −100 everywhere else, so candidates outside the
/// top k tie, and with ties counted in the query's favour a caption outside them can count as a
/// hit at R@5 or R@10 when k is small.)
pub fn rerank_scores(
    sims: &[f32],
    n_img: usize,
    n_txt: usize,
    i2t_top: &[Vec<usize>],
    t2i_top: &[Vec<usize>],
    itm: impl Fn(usize, usize) -> f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut i2t = sims.to_vec();
    for (i, tops) in i2t_top.iter().enumerate() {
        for &t in tops {
            i2t[i * n_txt + t] = itm(i, t) + sims[i * n_txt + t];
        }
    }
    let mut t2i: Vec<f32> = (0..n_txt).flat_map(|t| (0..n_img).map(move |i| sims[i * n_txt + t])).collect();
    for (t, tops) in t2i_top.iter().enumerate() {
        for &i in tops {
            t2i[t * n_img + i] = itm(i, t) + sims[i * n_txt + t];
        }
    }
    (i2t, t2i)
}

pub fn evaluate<B: Kernels>(model: &QFormer<B>, frozen: &Frozen<B>, set: &EvalSet, opts: &EvalOptions) -> Result<EvalReport> {
    let device = model.query_tokens.device();
    let (n_img, n_txt) = (set.images, set.captions.batch_size());
    let chunk = opts.chunk.max(1);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut timing = EvalTiming::default();

    let started = Instant::now();
    let sims = itc_scores(model, frozen, set, chunk)?;
    // Text → image rows, transposed once.
    let columns: Vec<Vec<f32>> = (0..n_txt).map(|t| (0..n_img).map(|i| sims[i * n_txt + t]).collect()).collect();
    let itc = recall(&sims, n_img, &set.caption_image);
    timing.itc_ms = ms(started);

    // Every pair ITM must score, each once: (image, text) → (positive-class logit, predicted 1?).
    let k = opts.k_test.max(1);
    let mut pairs: BTreeMap<(usize, usize), (f32, bool)> = BTreeMap::new();
    let i2t_top: Vec<Vec<usize>> = (0..n_img).map(|i| top_k(&sims[i * n_txt..(i + 1) * n_txt], k)).collect();
    let t2i_top: Vec<Vec<usize>> = columns.iter().map(|c| top_k(c, k)).collect();
    let positives: Vec<(usize, usize)> = (0..n_txt).map(|t| (set.caption_image[t], t)).collect();
    let mut negatives: Vec<(usize, usize)> =
        (0..n_img).filter_map(|i| hardest(&sims[i * n_txt..(i + 1) * n_txt], |t| set.caption_image[t] == i).map(|t| (i, t))).collect();
    negatives.extend(columns.iter().enumerate().filter_map(|(t, c)| hardest(c, |i| i == set.caption_image[t]).map(|i| (i, t))));
    for (i, tops) in i2t_top.iter().enumerate() {
        pairs.extend(tops.iter().map(|&t| ((i, t), (0.0, false))));
    }
    for (t, tops) in t2i_top.iter().enumerate() {
        pairs.extend(tops.iter().map(|&i| ((i, t), (0.0, false))));
    }
    pairs.extend(positives.iter().chain(&negatives).map(|&p| (p, (0.0, false))));
    // Ordered by image: each image chunk's pairs are one run of `keys`.
    let keys: Vec<(usize, usize)> = pairs.keys().copied().collect();
    let mut captions_of = vec![Vec::new(); n_img];
    for (t, &i) in set.caption_image.iter().enumerate() {
        captions_of[i].push(t);
    }
    // The held-out captions as text, once, for the caption score and the miss attribution.
    let decoded = match opts.captions {
        Some(text) => Some((text, set.captions.ids.iter().map(|ids| text.decode(ids)).collect::<Result<Vec<_>>>()?)),
        None => None,
    };
    let truth = decoded.as_ref().and_then(|(text, captions)| CaptionTruth::new(text, captions, &captions_of));
    let mut named = 0;
    let shuffled = derangement(n_img, opts.seed);

    // Second pass, image chunk by image chunk: ITM for the chunk's pairs, ITG for its captions
    // with their own images and with their images under the derangement.
    let mut next = 0;
    let (mut own, mut other) = (Nll::default(), Nll::default());
    for start in (0..n_img).step_by(chunk) {
        let end = (start + chunk).min(n_img);
        let started = Instant::now();
        let side = image_side(model, frozen_features(frozen, set, start..end, &device)?);
        timing.features_ms += ms(started);

        let started = Instant::now();
        let upto = next + keys[next..].partition_point(|p| p.0 < end);
        for batch in keys[next..upto].chunks(chunk) {
            let images: Vec<usize> = batch.iter().map(|p| p.0 - start).collect();
            let texts: Vec<usize> = batch.iter().map(|p| p.1).collect();
            let host = to_f32(itm_logits(model, &side.select(&images).image_kv, &set.captions.select(&texts)));
            for (j, key) in batch.iter().enumerate() {
                pairs.insert(*key, (host[2 * j + 1], host[2 * j + 1] > host[2 * j]));
            }
        }
        next = upto;
        timing.rerank_ms += ms(started);

        let started = Instant::now();
        // Row r of the shuffled side is image `shuffled[start + r]`: another image for each.
        let shuffled_side = match n_img > 1 {
            true => Some(image_side(model, frozen_features(frozen, set, shuffled[start..end].iter().copied(), &device)?)),
            false => None,
        };
        let rows: Vec<usize> = (start..end).flat_map(|i| captions_of[i].iter().copied()).collect();
        for part in rows.chunks(chunk) {
            let captions = set.captions.select(part);
            let tokens = targets(&captions).0.len();
            if tokens == 0 {
                continue;
            }
            let image_rows: Vec<usize> = part.iter().map(|&t| set.caption_image[t] - start).collect();
            let itg =
                |side: &ImageSide<B>| scalar(itg_loss(model, &side.select(&image_rows).query_kv, &captions, model.bos_token_id, 0.0, None));
            own.add(itg(&side), tokens);
            if let Some(side) = &shuffled_side {
                other.add(itg(side), tokens);
            }
        }
        timing.itg_ms += ms(started);

        if let Some(truth) = &truth {
            let started = Instant::now();
            let ids = greedy_batch(model, &side.query_kv, truth.eos, truth.text.max_len);
            for (i, ids) in (start..end).zip(&ids) {
                named += usize::from(names_both_objects(&truth.text.decode(ids)?, &truth.references[i]) == Some(true));
            }
            timing.caption_ms += ms(started);
        }
    }
    timing.itm_pairs = keys.len();

    let (i2t, t2i) = rerank_scores(&sims, n_img, n_txt, &i2t_top, &t2i_top, |i, t| pairs[&(i, t)].0);
    let (i2t_in, t2i_in) = (top_sets(&i2t_top), top_sets(&t2i_top));
    let itm = recall_in_tiers(&i2t, &|i, t| i2t_in[i].contains(&t), &t2i, &|t, i| t2i_in[t].contains(&i), n_img, &set.caption_image);
    let accuracy =
        |list: &[(usize, usize)], want: bool| 100.0 * list.iter().filter(|p| pairs[p].1 == want).count() as f64 / list.len().max(1) as f64;
    let (itm_acc_positive, itm_acc_negative) = (accuracy(&positives, true), accuracy(&negatives, false));
    let confusions = decoded.as_ref().and_then(|(_, captions)| Scenes::parse(captions, &captions_of)).map(|scenes| {
        let firsts = |tops: &[Vec<usize>]| tops.iter().map(|t| t[0]).collect::<Vec<_>>();
        let false_matches: Vec<(usize, usize)> = negatives.iter().copied().filter(|p| pairs[p].1).collect();
        confusions(&scenes, &set.caption_image, &firsts(&i2t_top), &firsts(&t2i_top), &false_matches)
    });

    Ok(EvalReport {
        images: n_img,
        texts: n_txt,
        k_test: k,
        itc,
        itm,
        itm_acc_positive,
        itm_acc_negative,
        itg_perplexity: own.mean().exp(),
        itg_grounding_gap: if other.tokens > 0 { other.mean() - own.mean() } else { 0.0 },
        caption_accuracy: truth.map(|_| 100.0 * named as f64 / n_img.max(1) as f64),
        confusions,
        timing,
    })
}

/// A random cyclic permutation of `0..n` (Sattolo's algorithm), a function of `(n, seed)`: every
/// image goes to another (a derangement, for n > 1), and the same set gets the same pairing on
/// every run, whatever the evaluation's chunk size.
pub fn derangement(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, n as u64));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.random_range(0..i));
    }
    p
}

/// Each image's first held-out caption as text, when every one is of the shapes grammar.
struct CaptionTruth<'a> {
    text: &'a TextEncoder,
    eos: i64,
    references: Vec<String>,
}

impl<'a> CaptionTruth<'a> {
    /// `captions`: the set's captions as text; `captions_of`: each image's caption rows.
    fn new(text: &'a TextEncoder, captions: &[String], captions_of: &[Vec<usize>]) -> Option<Self> {
        let eos = text.token_id("[SEP]")?;
        let mut references = Vec::with_capacity(captions_of.len());
        for rows in captions_of {
            let caption = &captions[*rows.first()?];
            names_both_objects(caption, caption)?;
            references.push(caption.clone());
        }
        Some(Self { text, eos, references })
    }
}

/// A token-weighted mean of per-chunk mean NLLs.
#[derive(Default)]
struct Nll {
    sum: f64,
    tokens: usize,
}

impl Nll {
    fn add(&mut self, mean: f64, tokens: usize) {
        self.sum += mean * tokens as f64;
        self.tokens += tokens;
    }

    fn mean(&self) -> f64 {
        self.sum / self.tokens.max(1) as f64
    }
}

/// The report as a terminal table.
pub fn table(r: &EvalReport) -> String {
    let row = |name: &str, x: &Recall| {
        format!(
            "{name:<14} {:>6.1} {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>6.1} {:>7.1} | {:>6.1}\n",
            x.i2t_r1,
            x.i2t_r5,
            x.i2t_r10,
            x.i2t_mean(),
            x.t2i_r1,
            x.t2i_r5,
            x.t2i_r10,
            x.t2i_mean(),
            x.mean()
        )
    };
    let mut s = format!("{} images, {} captions; ITM re-ranks the top {} of each query\n", r.images, r.texts, r.k_test);
    s += &format!(
        "{:<14} {:>6} {:>6} {:>6} {:>7} | {:>6} {:>6} {:>6} {:>7} | {:>6}\n",
        "ranking", "i2t@1", "@5", "@10", "mean", "t2i@1", "@5", "@10", "mean", "mean"
    );
    s += &row("ITC", &r.itc);
    s += &row("ITC + ITM", &r.itm);
    let (gain_i2t, gain_t2i) = r.rerank_gain();
    s += &format!("re-ranking gain (R@1, ITC + ITM minus ITC): i2t {gain_i2t:+.1}, t2i {gain_t2i:+.1}\n");
    s += &format!("ITM accuracy: positives {:.1}%, hard negatives {:.1}%\n", r.itm_acc_positive, r.itm_acc_negative);
    s += &format!(
        "ITG perplexity: {:.3}; grounding gap {:.3} nats/token (other images minus own; near 0: ITG ignores the image)\n",
        r.itg_perplexity, r.itg_grounding_gap
    );
    if let Some(acc) = r.caption_accuracy {
        s += &format!("greedy captions naming both objects' colour and shape: {acc:.1}%\n");
    }
    if let Some(c) = &r.confusions {
        s += &super::confusions::table(c);
    }
    let t = &r.timing;
    s += &format!(
        "time: features {:.0} ms, ITC {:.0} ms, ITM re-ranking {:.0} ms ({} pairs), ITG {:.0} ms, captions {:.0} ms",
        t.features_ms, t.itc_ms, t.rerank_ms, t.itm_pairs, t.itg_ms, t.caption_ms
    );
    s
}

#[cfg(test)]
mod tests {
    use super::{derangement, hardest, rerank_scores, top_k, top_sets};
    use crate::eval::retrieval::recall_in_tiers;

    #[test]
    fn the_grounding_shuffle_is_a_fixed_derangement() {
        for n in [2, 3, 7, 200] {
            let p = derangement(n, 5);
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation of {n}");
            assert!(p.iter().enumerate().all(|(i, &j)| i != j), "no image keeps its own captions: {p:?}");
            assert_eq!(derangement(n, 5), p, "the same on every call");
        }
        assert_ne!(derangement(200, 5), derangement(200, 6), "another seed, another pairing");
        assert_eq!(derangement(1, 5), vec![0]);
        assert!(derangement(0, 5).is_empty());
    }

    #[test]
    fn itm_reranking_changes_only_the_top_k() {
        // 3 images × 4 captions; caption t describes image t (caption 3: image 0).
        let caption_image = [0, 1, 2, 0];
        #[rustfmt::skip]
        let sims = [
            0.50, 0.60, 0.10, 0.40,
            0.30, 0.20, 0.55, 0.10,
            0.20, 0.25, 0.30, 0.05,
        ];
        let (n_img, n_txt, k) = (3, 4, 2);
        let i2t_top: Vec<Vec<usize>> = (0..n_img).map(|i| top_k(&sims[i * n_txt..(i + 1) * n_txt], k)).collect();
        let t2i_top: Vec<Vec<usize>> = (0..n_txt).map(|t| top_k(&(0..n_img).map(|i| sims[i * n_txt + t]).collect::<Vec<_>>(), k)).collect();
        // An ITM that is sure about the true pairs and dislikes every other.
        let itm = |i: usize, t: usize| if caption_image[t] == i { 5.0 } else { -5.0 };
        let (i2t, t2i) = rerank_scores(&sims, n_img, n_txt, &i2t_top, &t2i_top, itm);
        for i in 0..n_img {
            for t in 0..n_txt {
                let inside = i2t_top[i].contains(&t);
                let want = if inside { itm(i, t) + sims[i * n_txt + t] } else { sims[i * n_txt + t] };
                assert!((i2t[i * n_txt + t] - want).abs() < 1e-6, "i2t ({i},{t})");
                let want = if t2i_top[t].contains(&i) { itm(i, t) + sims[i * n_txt + t] } else { sims[i * n_txt + t] };
                assert!((t2i[t * n_img + i] - want).abs() < 1e-6, "t2i ({t},{i})");
            }
        }
        // ITC ranks a wrong caption first for images 0 and 1. ITM fixes image 0, whose own caption
        // is in its top 2, but not image 1, whose caption ITC left out of the top 2.
        let itc = crate::eval::retrieval::recall(&sims, n_img, &caption_image);
        let (i2t_in, t2i_in) = (top_sets(&i2t_top), top_sets(&t2i_top));
        let both = recall_in_tiers(&i2t, &|i, t| i2t_in[i].contains(&t), &t2i, &|t, i| t2i_in[t].contains(&i), n_img, &caption_image);
        assert!((itc.i2t_r1 - 100.0 / 3.0).abs() < 1e-9, "{itc:?}");
        assert!((both.i2t_r1 - 200.0 / 3.0).abs() < 1e-9, "{both:?}");
        // Caption 2's top-2 images by ITC are 1 and 2: re-ranking puts image 2 first.
        assert!(t2i[2 * n_img + 2] > t2i[2 * n_img + 1]);
    }

    #[test]
    fn with_a_top_1_reranking_every_recall_equals_itc() {
        // 6 images × 6 captions of pseudo-random similarities; an ITM that prefers wrong pairs.
        let (n, k) = (6, 1);
        let caption_image: Vec<usize> = (0..n).collect();
        let sims: Vec<f32> = (0..n * n).map(|j| ((j * 37 % 101) as f32 / 101.0) - 0.5).collect();
        let i2t_top: Vec<Vec<usize>> = (0..n).map(|i| top_k(&sims[i * n..(i + 1) * n], k)).collect();
        let t2i_top: Vec<Vec<usize>> = (0..n).map(|t| top_k(&(0..n).map(|i| sims[i * n + t]).collect::<Vec<_>>(), k)).collect();
        let (i2t, t2i) = rerank_scores(&sims, n, n, &i2t_top, &t2i_top, |i, t| if i == t { -9.0 } else { 9.0 });
        let (i2t_in, t2i_in) = (top_sets(&i2t_top), top_sets(&t2i_top));
        let reranked = recall_in_tiers(&i2t, &|i, t| i2t_in[i].contains(&t), &t2i, &|t, i| t2i_in[t].contains(&i), n, &caption_image);
        let itc = crate::eval::retrieval::recall(&sims, n, &caption_image);
        assert_eq!(reranked, itc);
        assert!(itc.i2t_r5 < 100.0, "the case must have positives outside the top 5: {itc:?}");
    }

    #[test]
    fn top_k_and_hardest_negative() {
        let s = [0.1, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(top_k(&s, 3), vec![1, 3, 2]);
        assert_eq!(top_k(&s, 9).len(), 5);
        assert_eq!(hardest(&s, |j| j == 1), Some(3));
        assert_eq!(hardest(&s, |_| true), None);
    }
}
