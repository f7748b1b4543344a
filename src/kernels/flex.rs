//! The kernels on `flex`'s host memory: one pass per op, rows or chunks spread over rayon's pool,
//! inner loops vectorised (lane-wise accumulators, so no reduction waits on the previous add).
//! LayerNorm forward is flex's own (already fused and parallel). Tensors that are not
//! f32 take the composed path.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::math::{self, tree_reduce, vectorized, CHUNK};
use super::{reference, AdamWStep, DropoutSite, Kernels};

const LANES: usize = 8;

use math::{lane_sum as sum, lane_sum2 as sum2};

#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for x in chunks {
        for k in 0..LANES {
            acc[k] = if x[k] > acc[k] { x[k] } else { acc[k] };
        }
    }
    rest.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

fn is_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// Contiguous f32 values of `t` (a view when already contiguous).
fn values(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn last_dim(t: &FlexTensor) -> usize {
    let shape = t.layout().shape();
    shape[shape.num_dims() - 1]
}

/// Rows per parallel task for rows of width `d`.
fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

impl Kernels for Flex {
    const ADAMW_IN_PLACE: bool = true;

    fn fused_layer_norm_backward(x: FlexTensor, gamma: FlexTensor, eps: f64, grad: FlexTensor) -> [FlexTensor; 3] {
        if !is_f32(&[&x, &gamma, &grad]) {
            return reference::layer_norm_backward::<Self>(x, gamma, eps, grad);
        }
        let shape = x.layout().shape().clone();
        let d = last_dim(&x);
        let (x, grad, gamma) = (values(&x), values(&grad), values(&gamma));
        let (xs, gs, gamma) = (slice(&x), slice(&grad), slice(&gamma));
        let eps = eps as f32;
        let inv_d = 1.0 / d as f32;
        let step = rows_per_task(d) * d;
        let mut dx = vec![0.0f32; xs.len()];
        // One (dγ, dβ) partial per fixed block of rows, combined in a fixed tree.
        let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(step)
            .zip(xs.par_chunks(step).zip(gs.par_chunks(step)))
            .map(|(dx, (x, g))| {
                vectorized(|| {
                    let mut dgamma = vec![0.0f32; d];
                    let mut dbeta = vec![0.0f32; d];
                    for ((dx, x), g) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)) {
                        let mean = sum(x, |v| v) * inv_d;
                        let rstd = 1.0 / (sum(x, |v| (v - mean) * (v - mean)) * inv_d + eps).sqrt();
                        let gg = sum2(g, gamma, |g, w| g * w) * inv_d;
                        let ggx = (0..d).map(|j| g[j] * gamma[j] * (x[j] - mean)).sum::<f32>() * rstd * inv_d;
                        for j in 0..d {
                            let xhat = (x[j] - mean) * rstd;
                            dx[j] = rstd * (g[j] * gamma[j] - gg - xhat * ggx);
                            dgamma[j] += g[j] * xhat;
                            dbeta[j] += g[j];
                        }
                    }
                    (dgamma, dbeta)
                })
            })
            .collect();
        let (dgamma, dbeta) = tree_reduce(parts, |(mut ga, mut ba), (gb, bb)| {
            ga.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
            ba.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
            (ga, ba)
        })
        .unwrap_or_else(|| (vec![0.0; d], vec![0.0; d]));
        [from_vec(dx, shape), from_vec(dgamma, Shape::new([d])), from_vec(dbeta, Shape::new([d]))]
    }

    /// Scale, mask and softmax in one pass per row; the mask row is found by index (broadcast
    /// over heads, and over batch or query rows when it has one of them).
    fn attention_softmax(scores: FlexTensor, mask: Option<FlexTensor>, scale: f64) -> FlexTensor {
        let dims = scores.layout().shape().clone();
        let (b, h, sq, sk) = (dims[0], dims[1], dims[2], dims[3]);
        let mask_dims = mask.as_ref().map(|m| m.layout().shape().clone());
        let fits = mask_dims.as_ref().is_none_or(|m| m[1] == 1 && m[3] == sk && (m[0] == 1 || m[0] == b) && (m[2] == 1 || m[2] == sq));
        let all_f32 = is_f32(&[&scores]) && mask.as_ref().is_none_or(|m| is_f32(&[m]));
        if !fits || !all_f32 {
            return reference::attention_softmax::<Self>(scores, mask, scale);
        }
        let x = values(&scores);
        let xs = slice(&x);
        let mask = mask.map(|m| values(&m));
        let ms = mask.as_ref().map(slice);
        let (mb, mq) = mask_dims.map_or((1, 1), |m| (m[0], m[2]));
        let scale = scale as f32;
        let rows = rows_per_task(sk);
        let mut out = vec![0.0f32; xs.len()];
        out.par_chunks_mut(rows * sk).zip(xs.par_chunks(rows * sk)).enumerate().for_each(|(task, (o, x))| {
            vectorized(|| {
                for (k, (o, x)) in o.chunks_exact_mut(sk).zip(x.chunks_exact(sk)).enumerate() {
                    let r = task * rows + k;
                    let (bi, i) = (r / (h * sq), r % sq);
                    let at = ((if mb == 1 { 0 } else { bi }) * mq + if mq == 1 { 0 } else { i }) * sk;
                    match ms {
                        Some(m) => o.iter_mut().zip(x).zip(&m[at..at + sk]).for_each(|((o, &x), &m)| *o = x * scale + m),
                        None => o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * scale),
                    }
                    let top = max(o);
                    o.iter_mut().for_each(|v| *v = math::exp(*v - top));
                    let inv = 1.0 / sum(o, |v| v);
                    o.iter_mut().for_each(|v| *v *= inv);
                }
            })
        });
        from_vec(out, dims)
    }

    fn attention_softmax_backward(y: FlexTensor, grad: FlexTensor, scale: f64) -> FlexTensor {
        if !is_f32(&[&y, &grad]) {
            return reference::softmax_backward::<Self>(y, grad, scale);
        }
        let scale = scale as f32;
        let shape = y.layout().shape().clone();
        let d = last_dim(&y);
        let (y, grad) = (values(&y), values(&grad));
        let (ys, gs) = (slice(&y), slice(&grad));
        let step = rows_per_task(d) * d;
        let mut dx = vec![0.0f32; ys.len()];
        dx.par_chunks_mut(step).zip(ys.par_chunks(step).zip(gs.par_chunks(step))).for_each(|(dx, (y, g))| {
            vectorized(|| {
                for ((dx, y), g) in dx.chunks_exact_mut(d).zip(y.chunks_exact(d)).zip(g.chunks_exact(d)) {
                    let dot = sum2(g, y, |g, y| g * y);
                    for j in 0..d {
                        dx[j] = scale * y[j] * (g[j] - dot);
                    }
                }
            })
        });
        from_vec(dx, shape)
    }

    fn swap_heads(x: FlexTensor) -> FlexTensor {
        if !is_f32(&[&x]) {
            return Self::float_swap_dims(x, 1, 2);
        }
        let dims = x.layout().shape().clone();
        let (b, a, c, d) = (dims[0], dims[1], dims[2], dims[3]);
        let x = values(&x);
        let xs = slice(&x);
        let mut out = vec![0.0f32; xs.len()];
        // Output block (batch i, c-index j) gathers input rows (i, 0..a, j).
        out.par_chunks_mut(a * d).enumerate().for_each(|(block, o)| {
            let (i, j) = (block / c, block % c);
            for (k, row) in o.chunks_exact_mut(d).enumerate() {
                let start = ((i * a + k) * c + j) * d;
                row.copy_from_slice(&xs[start..start + d]);
            }
        });
        from_vec(out, Shape::new([b, c, a, d]))
    }

    fn gather_rows(x: FlexTensor, rows: &[usize]) -> FlexTensor {
        if !is_f32(&[&x]) {
            return reference::gather_rows::<Self>(x, rows);
        }
        let mut shape = x.layout().shape().clone();
        let width = shape.num_elements() / shape[0].max(1);
        let x = values(&x);
        let xs = slice(&x);
        let mut out = vec![0.0f32; rows.len() * width];
        out.par_chunks_mut(width.max(1)).zip(rows.par_iter()).for_each(|(o, &r)| o.copy_from_slice(&xs[r * width..(r + 1) * width]));
        shape[0] = rows.len();
        from_vec(out, shape)
    }

    /// Each output row sums its own sources, so rows are written in parallel without atomics.
    fn scatter_rows(grad: FlexTensor, rows: &[usize], n: usize) -> FlexTensor {
        if !is_f32(&[&grad]) {
            return reference::scatter_rows::<Self>(grad, rows, n);
        }
        let mut shape = grad.layout().shape().clone();
        let width = shape.num_elements() / shape[0].max(1);
        let mut sources = vec![Vec::new(); n];
        for (i, &r) in rows.iter().enumerate() {
            sources[r].push(i);
        }
        let g = values(&grad);
        let gs = slice(&g);
        let mut out = vec![0.0f32; n * width];
        out.par_chunks_mut(width.max(1)).zip(sources.par_iter()).for_each(|(o, from)| {
            vectorized(|| {
                for &i in from {
                    o.iter_mut().zip(&gs[i * width..(i + 1) * width]).for_each(|(o, g)| *o += g);
                }
            })
        });
        shape[0] = n;
        from_vec(out, shape)
    }

    fn sum_squares(x: FlexTensor) -> FlexTensor {
        if !is_f32(&[&x]) {
            return reference::sum_squares::<Self>(x);
        }
        let x = values(&x);
        from_vec(vec![math::fixed_sum(slice(&x), |v| v * v)], Shape::new([1]))
    }

    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        if !is_f32(&[&x]) {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x);
        }
        let shape = x.layout().shape().clone();
        let x = values(&x);
        from_vec(math::map(slice(&x), math::gelu), shape)
    }

    fn fused_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !is_f32(&[&x, &grad]) {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu_backward(x, grad);
        }
        let shape = x.layout().shape().clone();
        let (x, grad) = (values(&x), values(&grad));
        from_vec(math::zip_map(slice(&x), slice(&grad), math::gelu_grad), shape)
    }

    /// The host mask is already a flex buffer: no upload.
    fn dropout_mask(
        shape: Shape,
        keep: f64,
        site: &DropoutSite<'_>,
        _: &<Self as burn::tensor::backend::BackendTypes>::Device,
    ) -> FlexTensor {
        from_vec(site.mask(&shape, keep), shape)
    }

    /// One pass over the four arrays, in the composed version's f32 arithmetic and order. The
    /// moments are updated in place when the caller hands over the only reference to them.
    fn adamw_step(w: FlexTensor, g: FlexTensor, m: FlexTensor, v: FlexTensor, s: &AdamWStep) -> [FlexTensor; 3] {
        if !is_f32(&[&w, &g, &m, &v]) {
            return reference::adamw_step::<Self>(w, g, m, v, s);
        }
        let shape = w.layout().shape().clone();
        let (w, g) = (values(&w), values(&g));
        let (ws, gs) = (slice(&w), slice(&g));
        let n = ws.len();
        // A buffer of exactly this tensor, written in place (copied first only if shared).
        let owned = |t: FlexTensor| {
            let exact = t.is_contiguous() && t.layout().start_offset() == 0 && t.bytes().len() == n * 4;
            if exact {
                t
            } else {
                from_vec(slice(&values(&t)).to_vec(), shape.clone())
            }
        };
        let (mut m, mut v) = (owned(m), owned(v));
        let (b1, c1, b2, c2) = (s.beta1 as f32, (1.0 - s.beta1) as f32, s.beta2 as f32, (1.0 - s.beta2) as f32);
        let (eps, step, bc2, decay) = (s.eps as f32, s.step_size as f32, s.bc2_sqrt as f32, s.decay as f32);
        let mut w_out = vec![0.0f32; n];
        w_out
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK).zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK)))
            .enumerate()
            .for_each(|(c, (wo, (m, v)))| {
                let r = c * CHUNK..(c * CHUNK + wo.len());
                let (w, g) = (&ws[r.clone()], &gs[r]);
                vectorized(|| {
                    for i in 0..wo.len() {
                        m[i] = m[i] * b1 + g[i] * c1;
                        v[i] = v[i] * b2 + g[i] * g[i] * c2;
                        let wi = if decay == 1.0 { w[i] } else { w[i] * decay };
                        wo[i] = wi - m[i] / (v[i].sqrt() / bc2 + eps) * step;
                    }
                })
            });
        [from_vec(w_out, shape), m, v]
    }

    fn cross_entropy_forward(logits: FlexTensor, labels: &[usize], eps: f64) -> (FlexTensor, FlexTensor) {
        if !is_f32(&[&logits]) {
            return reference::cross_entropy_forward::<Self>(logits, labels, eps);
        }
        let c = last_dim(&logits);
        let x = values(&logits);
        let xs = slice(&x);
        let (hit, uniform) = ((1.0 - eps) as f32, eps as f32 / c as f32);
        let per_row: Vec<(f32, f32)> = xs
            .par_chunks(c)
            .zip(labels.par_iter())
            .map(|(row, &label)| {
                vectorized(|| {
                    let m = max(row);
                    let lse = m + sum(row, |v| math::exp(v - m)).ln();
                    let total = sum(row, |v| v);
                    (lse, lse - hit * row[label] - uniform * total)
                })
            })
            .collect();
        let n = per_row.len();
        let loss = per_row.iter().map(|&(_, l)| f64::from(l)).sum::<f64>() / n.max(1) as f64;
        let lse = per_row.into_iter().map(|(lse, _)| lse).collect();
        (from_vec(vec![loss as f32], Shape::new([1])), from_vec(lse, Shape::new([n])))
    }

    fn cross_entropy_backward(logits: FlexTensor, lse: FlexTensor, labels: &[usize], eps: f64, grad: FlexTensor) -> FlexTensor {
        if !is_f32(&[&logits, &lse, &grad]) {
            return reference::cross_entropy_backward::<Self>(logits, lse, labels, eps, grad);
        }
        let shape = logits.layout().shape().clone();
        let c = last_dim(&logits);
        let (x, lse, grad) = (values(&logits), values(&lse), values(&grad));
        let (xs, lse) = (slice(&x), slice(&lse));
        let scale = slice(&grad)[0] / labels.len().max(1) as f32;
        let (hit, uniform) = ((1.0 - eps) as f32 * scale, eps as f32 / c as f32);
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(c).zip(xs.par_chunks(c)).zip(lse.par_iter().zip(labels.par_iter())).for_each(|((dx, row), (&lse, &label))| {
            vectorized(|| {
                for (d, &v) in dx.iter_mut().zip(row) {
                    *d = scale * (math::exp(v - lse) - uniform);
                }
            });
            dx[label] -= hit;
        });
        from_vec(dx, shape)
    }
}
