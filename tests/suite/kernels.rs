//! The fused kernels against burn's own composed ops, forward and gradient, on `flex` (its
//! hand-written loops), `ndarray` (the composed fallback inside the fused autodiff op) and, built
//! with `--features wgpu`, burn's wgpu backend (the same fallback on cubecl, CUDA's code path).
//! Tolerance: 2e-6 of the largest magnitude compared, i.e. f32 rounding, except where a Vulkan
//! driver's `exp` is involved (see `VULKAN_EXP_TOL`).

use burn::backend::{Autodiff, Flex, NdArray};
use burn::nn::LayerNormConfig;
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use qformer::kernels::{self, DropoutKeys, Kernels, TrainBackend};
use qformer::model::norm::LayerNorm;

const TOL: f32 = 2e-6;

/// Ops built on `exp` (softmax, GELU, cross-entropy) on wgpu. Vulkan only requires `exp(x)` within
/// 3 + 2·|x| ULP, and the cross-entropy logits here reach |x − max| ≈ 30: up to 63 ULP, 7.5e-6
/// relative. Measured on lavapipe: the cross-entropy gradient off by 2.7e-6 of a 0.45 scale (6.0e-6
/// relative) on the CI machine's CPU, within 2e-6 on another; llvmpipe's `exp` differs by CPU.
#[cfg(feature = "wgpu")]
const VULKAN_EXP_TOL: f32 = 1e-5;

fn close<B: Backend, const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>, what: &str) {
    close_within(got, want, TOL, what);
}

fn close_within<B: Backend, const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>, tol: f32, what: &str) {
    let got = got.into_data().to_vec::<f32>().unwrap();
    let want = want.into_data().to_vec::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol * scale, "{what}: max error {worst:e} of scale {scale:e}");
}

/// The same random values on a fresh leaf each time (one per side of a comparison).
fn leaf<B: Backend, const D: usize>(values: &Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_data(values.to_data(), &values.device()).require_grad()
}

fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<B, D> {
    B::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, scale), &Default::default())
}

fn layer_norm_matches<B: TrainBackend>()
where
    B::Device: Default,
{
    let device = Default::default();
    // Rows of 37 (not a multiple of the 8 lanes), an offset so the mean matters.
    let x = random::<B, 3>([3, 5, 37], 1, 2.0).add_scalar(0.5);
    let g = random::<B, 3>([3, 5, 37], 2, 1.0);
    let gamma = random::<B, 1>([37], 3, 1.0).add_scalar(1.0);
    let beta = random::<B, 1>([37], 4, 1.0);

    let mut ours = LayerNorm::<B>::new(37, 1e-5, &device);
    ours.gamma = burn::module::Param::from_tensor(gamma.clone());
    ours.beta = Some(burn::module::Param::from_tensor(beta.clone()));
    let mut theirs = LayerNormConfig::new(37).with_epsilon(1e-5).init::<B>(&device);
    theirs.gamma = burn::module::Param::from_tensor(gamma);
    theirs.beta = Some(burn::module::Param::from_tensor(beta));

    let (xa, xb) = (leaf(&x), leaf(&x));
    let (ya, yb) = (ours.forward(xa.clone()), theirs.forward(xb.clone()));
    close(ya.clone(), yb.clone(), "layer norm forward");
    let ga = (ya * g.clone()).sum().backward();
    let gb = (yb * g).sum().backward();
    close(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap(), "layer norm dx");
    close(ours.gamma.grad(&ga).unwrap(), theirs.gamma.grad(&gb).unwrap(), "layer norm dgamma");
    let (ba, bb) = (ours.beta.as_ref().unwrap(), theirs.beta.as_ref().unwrap());
    close(ba.grad(&ga).unwrap(), bb.grad(&gb).unwrap(), "layer norm dbeta");
}

fn softmax_and_gelu_match<B: TrainBackend>(exp_tol: f32)
where
    B::Device: Default,
{
    let x = random::<B, 4>([2, 3, 7, 19], 5, 3.0);
    let g = random::<B, 4>([2, 3, 7, 19], 6, 1.0);
    let (xa, xb) = (leaf(&x), leaf(&x));
    // Scaled and masked as attention: a mask per (batch, query row), broadcast over heads.
    let mask = random::<B, 4>([2, 1, 7, 19], 8, 2.0);
    let mask_values = mask.clone();
    let (ya, yb) = (kernels::attention_softmax(xa.clone(), Some(mask.clone()), 0.5), softmax(xb.clone().mul_scalar(0.5) + mask, 3));
    close_within(ya.clone(), yb, exp_tol, "softmax forward");
    let ga = (ya * g.clone()).sum().backward();
    // Gradient in f64 on the host: 0.5·y·(g − Σ g·y) per row of 19 (y from the same inputs).
    let xs = (x.clone().mul_scalar(0.5) + mask_values).to_data().to_vec::<f32>().unwrap();
    let gs = g.to_data().to_vec::<f32>().unwrap();
    let mut want = Vec::with_capacity(xs.len());
    for (row, grow) in xs.chunks(19).zip(gs.chunks(19)) {
        let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let total: f64 = e.iter().sum();
        let y: Vec<f64> = e.iter().map(|v| v / total).collect();
        let dot: f64 = y.iter().zip(grow).map(|(y, &g)| y * g as f64).sum();
        want.extend(y.iter().zip(grow).map(|(y, &g)| (0.5 * y * (g as f64 - dot)) as f32));
    }
    let want = Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(want, [2, 3, 7, 19]), &Default::default());
    close_within(xa.grad(&ga).unwrap(), want, exp_tol, "softmax gradient");

    let (xa, xb) = (leaf(&x), leaf(&x));
    let (ya, yb) = (kernels::gelu(xa.clone()), gelu(xb.clone()));
    close_within(ya.clone(), yb.clone(), exp_tol, "gelu forward");
    let (ga, gb) = ((ya * g.clone()).sum().backward(), (yb * g).sum().backward());
    close_within(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap(), exp_tol, "gelu gradient");
}

fn cross_entropy_matches<B: TrainBackend>(exp_tol: f32)
where
    B::Device: Default,
{
    let device = Default::default();
    let (n, c) = (6, 1003);
    let x = random::<B, 2>([n, c], 7, 4.0);
    let labels = vec![0usize, 5, 1002, 17, 17, 400];
    for eps in [0.0, 0.1] {
        let (xa, xb) = (leaf(&x), leaf(&x));
        let ours = kernels::cross_entropy(xa.clone(), &labels, eps);
        // The textbook form: (1 − eps)·NLL + eps·mean over classes of −log p.
        let logp = log_softmax(xb.clone(), 1);
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n, 1]), &device);
        let nll = logp.clone().gather(1, idx).mean().neg();
        let theirs = nll.mul_scalar(1.0 - eps) + logp.mean().neg().mul_scalar(eps);
        close_within(ours.clone(), theirs.clone(), exp_tol, "cross-entropy");
        let (ga, gb) = (ours.mul_scalar(3.0).backward(), theirs.mul_scalar(3.0).backward());
        close_within(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap(), exp_tol, "cross-entropy gradient");
    }
}

#[test]
fn flex_kernels_match_burn() {
    let _turn = crate::common::serial();
    layer_norm_matches::<Autodiff<Flex>>();
    softmax_and_gelu_match::<Autodiff<Flex>>(TOL);
    cross_entropy_matches::<Autodiff<Flex>>(TOL);
}

#[test]
fn composed_fallback_matches_burn() {
    let _turn = crate::common::serial();
    layer_norm_matches::<Autodiff<NdArray>>();
    softmax_and_gelu_match::<Autodiff<NdArray>>(TOL);
    cross_entropy_matches::<Autodiff<NdArray>>(TOL);
}

#[test]
fn dropout_masks_are_keyed_and_the_same_on_every_backend() {
    let device = Default::default();
    let keys = DropoutKeys::new((0..256).map(|r| r * 7 + 3).collect());
    let site = keys.site().at(2).at(1);
    let x = Tensor::<Flex, 2>::ones([256, 512], &device);
    let y = kernels::dropout(x.clone(), 0.1, Some(site)).into_data().to_vec::<f32>().unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.9).abs() < 0.003, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    // The composed path (host mask, uploaded) draws the very same mask.
    let z = kernels::dropout(Tensor::<NdArray, 2>::ones([256, 512], &Default::default()), 0.1, Some(site));
    assert_eq!(y, z.into_data().to_vec::<f32>().unwrap());
    // A function of its keys alone: repeated, equal; another site, another mask; none, identity.
    assert_eq!(y, kernels::dropout(x.clone(), 0.1, Some(site)).into_data().to_vec::<f32>().unwrap());
    let other = kernels::dropout(x.clone(), 0.1, Some(keys.site().at(2).at(0))).into_data().to_vec::<f32>().unwrap();
    assert_ne!(y, other);
    assert_eq!(kernels::dropout(x.clone(), 0.1, None).into_data(), x.into_data());
}

#[test]
fn adamw_step_matches_the_composed_update() {
    let _turn = crate::common::serial();
    let prim = |t: Tensor<Flex, 1>| t.into_primitive().tensor();
    let n = 40_000; // several parallel chunks and a ragged tail
    let (w, g) = (random::<Flex, 1>([n], 21, 1.0), random::<Flex, 1>([n], 22, 0.1));
    let m = random::<Flex, 1>([n], 23, 0.01);
    let v = random::<Flex, 1>([n], 24, 0.01).abs();
    for decay in [1.0, 1.0 - 1e-4 * 0.05] {
        let step = qformer::kernels::AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, step_size: 1e-4 / 0.1, bc2_sqrt: 0.0316, decay };
        let ours = Flex::adamw_step(prim(w.clone()), prim(g.clone()), prim(m.clone()), prim(v.clone()), &step);
        let theirs =
            qformer::kernels::reference::adamw_step::<Flex>(prim(w.clone()), prim(g.clone()), prim(m.clone()), prim(v.clone()), &step);
        for (what, (a, b)) in ["w", "m", "v"].iter().zip(ours.into_iter().zip(theirs)) {
            let t = |p| Tensor::<Flex, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(p));
            close(t(a), t(b), what);
        }
    }
}

fn lm_cross_entropy_matches<B: TrainBackend>(exp_tol: f32)
where
    B::Device: Default,
{
    let (n, d, v) = (5, 16, 301);
    let h = random::<B, 2>([n, d], 31, 1.0);
    let w = random::<B, 2>([v, d], 32, 0.5);
    let b = random::<B, 1>([v], 33, 0.5);
    let labels = vec![3usize, 300, 0, 3, 150];
    let (ha, wa, ba) = (leaf(&h), leaf(&w), leaf(&b));
    let (hb, wb, bb) = (leaf(&h), leaf(&w), leaf(&b));
    let ours = kernels::lm_cross_entropy(ha.clone(), wa.clone(), ba.clone(), &labels, 0.1);
    let logits = hb.clone().matmul(wb.clone().transpose()) + bb.clone().unsqueeze();
    let theirs = kernels::cross_entropy(logits, &labels, 0.1);
    close_within(ours.clone(), theirs.clone(), exp_tol, "LM cross-entropy");
    let (ga, gb) = (ours.backward(), theirs.backward());
    close_within(ha.grad(&ga).unwrap(), hb.grad(&gb).unwrap(), exp_tol, "LM rows gradient");
    close_within(wa.grad(&ga).unwrap(), wb.grad(&gb).unwrap(), exp_tol, "LM weight gradient");
    close_within(ba.grad(&ga).unwrap(), bb.grad(&gb).unwrap(), exp_tol, "LM bias gradient");
}

#[test]
fn lm_cross_entropy_matches_the_composed_head() {
    let _turn = crate::common::serial();
    lm_cross_entropy_matches::<Autodiff<Flex>>(TOL);
    lm_cross_entropy_matches::<Autodiff<NdArray>>(TOL);
}

#[test]
fn gathered_rows_scatter_their_gradient_back() {
    let _turn = crate::common::serial();
    fn check<B: TrainBackend>()
    where
        B::Device: Default,
    {
        let x = random::<B, 4>([4, 2, 3, 5], 41, 1.0);
        let g = random::<B, 4>([7, 2, 3, 5], 42, 1.0);
        let rows = [2usize, 0, 2, 3, 3, 3, 1];
        let (xa, xb) = (leaf(&x), leaf(&x));
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [7]), &Default::default());
        let (ya, yb) = (kernels::gather_rows(xa.clone(), &rows), xb.clone().select(0, index));
        close(ya.clone(), yb.clone(), "gathered rows");
        let (ga, gb) = ((ya * g.clone()).sum().backward(), (yb * g).sum().backward());
        close(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap(), "scattered gradient");
    }
    check::<Autodiff<Flex>>();
    check::<Autodiff<NdArray>>();
    #[cfg(feature = "wgpu")]
    check::<Autodiff<burn::backend::Wgpu>>();
}

/// The composed fallback on a cubecl backend: every kernel (dropout masks: `tests/suite/dropout.rs`).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fallback_matches_burn() {
    type G = Autodiff<burn::backend::Wgpu>;
    let _turn = crate::common::serial();
    layer_norm_matches::<G>();
    softmax_and_gelu_match::<G>(VULKAN_EXP_TOL);
    cross_entropy_matches::<G>(VULKAN_EXP_TOL);
    lm_cross_entropy_matches::<G>(VULKAN_EXP_TOL);
}

/// Device memory comes from the cubecl allocator (what `bench` and the progress line show on a
/// GPU); the CPU backends have none of their own to report.
#[test]
fn device_memory_is_reported_by_cubecl_backends_only() {
    assert_eq!(<Flex as Kernels>::device_memory(&Default::default()), None);
    assert_eq!(<Autodiff<NdArray> as Kernels>::device_memory(&Default::default()), None);
    #[cfg(feature = "wgpu")]
    {
        type G = burn::backend::Wgpu;
        let device = Default::default();
        let t = Tensor::<G, 2>::ones([512, 512], &device);
        let _ = (t.clone() * 2.0).sum().into_data();
        let held = <G as Kernels>::device_memory(&device).expect("wgpu reports its allocator");
        assert!(held >= 512 * 512 * 4, "{held} bytes held for a 1 MB tensor");
        assert!(<Autodiff<G> as Kernels>::device_memory(&device).is_some());
        drop(t);
    }
}

/// The composed AdamW update on wgpu against flex, at the sizes a model holds: the temperature is
/// one element, biases are short and ragged. Three chained steps, each handing its moments to the
/// next as the optimizer does.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_adamw_update_matches_flex_at_every_size() {
    use burn::backend::Wgpu;
    let _turn = crate::common::serial();
    let step = qformer::kernels::AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, step_size: 1e-4 / 0.1, bc2_sqrt: 0.0316, decay: 1.0 };
    for n in [1usize, 2, 3, 5, 64, 1001] {
        let host = |seed: u64, scale: f64| random::<Flex, 1>([n], seed, scale).into_data();
        let (w, g, m, v) = (host(51, 1.0), host(52, 0.1), host(53, 0.01), random::<Flex, 1>([n], 54, 0.01).abs().into_data());
        fn run<B: Backend + Kernels>(
            w: &TensorData,
            g: &TensorData,
            m: &TensorData,
            v: &TensorData,
            step: &qformer::kernels::AdamWStep,
        ) -> Vec<Vec<f32>>
        where
            B::Device: Default,
        {
            let t = |d: &TensorData| Tensor::<B, 1>::from_data(d.clone(), &Default::default()).into_primitive().tensor();
            let (mut w, g, mut m, mut v) = (t(w), t(g), t(m), t(v));
            for _ in 0..3 {
                [w, m, v] = qformer::kernels::reference::adamw_step::<B>(w, g.clone(), m, v, step);
            }
            [w, m, v]
                .into_iter()
                .map(|p| Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(p)).into_data().to_vec::<f32>().unwrap())
                .collect()
        }
        let (gpu, cpu) = (run::<Wgpu>(&w, &g, &m, &v, &step), run::<Flex>(&w, &g, &m, &v, &step));
        for (what, (a, b)) in ["w", "m", "v"].iter().zip(gpu.iter().zip(&cpu)) {
            let scale = b.iter().fold(1e-6f32, |s, x| s.max(x.abs()));
            let worst = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
            assert!(worst <= TOL * scale, "{what}, {n} elements: wgpu {:?} vs flex {:?}", &a[..n.min(3)], &b[..n.min(3)]);
        }
    }
}
