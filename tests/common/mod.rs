//! Helpers shared by the test binaries.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use kdna::gpu::Gpu;
use kdna::graph::{Plan, TensorId};
use kdna::ops::Mode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Standard normal samples (Box-Muller).
pub fn randn(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Rounds to f32 and back, so the reference sees exactly what the GPU sees.
pub fn f32_exact(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x as f32 as f64).collect()
}

/// Central finite differences of `f` at `x`.
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + h;
            let up = f(&probe);
            probe[i] = x[i] - h;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The golden tolerance: max|got - want| <= tol * max(1, max|want|).
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (worst, at) = got
        .iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| ((g - w).abs(), i))
        .fold((0.0, 0), |a, b| if b.0 > a.0 || b.0.is_nan() { b } else { a });
    assert!(
        worst <= tol * scale,
        "{what}: max error {worst:.3e} at {at} (got {}, want {}) exceeds {tol:.0e} x {scale:.3}",
        got[at],
        want[at]
    );
}

/// One device for the whole test binary: pipelines compile once (seconds each on lavapipe).
/// A missing adapter fails the test rather than skipping it.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| Arc::new(Gpu::new(None).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e:#}")))).clone()
}

/// Writes MNIST-format IDX files (train-* and t10k-*, both the same), gzipped or raw, holding
/// the first `n` images of the embedded Fashion-MNIST set: a real-format dataset small enough
/// for tests.
pub fn write_idx_dataset(dir: &std::path::Path, n: usize, gz: bool) {
    use std::io::Write;
    let ds = kdna::data::Dataset::open(None, None).unwrap();
    let kdna::data::Samples::Memory(a) = &ds.train.samples else { panic!("embedded set is in memory") };
    let mut images = vec![0, 0, 8, 3];
    for v in [n as u32, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    images.extend(&a.pixels[..n * 784]);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend(ds.train.labels[..n].iter().map(|&l| l as u8));
    for prefix in ["train", "t10k"] {
        for (name, bytes) in [("images-idx3-ubyte", &images), ("labels-idx1-ubyte", &labels)] {
            let path = dir.join(format!("{prefix}-{name}"));
            if gz {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(bytes).unwrap();
                std::fs::write(path.with_file_name(format!("{prefix}-{name}.gz")), enc.finish().unwrap()).unwrap();
            } else {
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
}

/// Backpropagate from `roots` without an optimizer (gradients to `Input` tensors too with
/// `input_grads`): what op and block tests read back.
pub fn gradient_plan(mode: Mode, roots: Vec<TensorId>, input_grads: bool) -> Plan {
    Plan { mode, backward_from: roots, input_grads, optimizer: None, frozen: Default::default(), fuse: true }
}
