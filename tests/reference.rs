//! Finite-difference checks of every CPU reference backward pass (no GPU needed).

mod common;

use common::{assert_close, dot, numeric_grad, randn, rng};
use kdna::ops::activation::Activation;
use kdna::ops::batchnorm::BatchNorm;
use kdna::ops::conv2d::{Conv2dConfig, Conv2dShape, OutputActivation};
use kdna::ops::layernorm::LayerNorm;
use kdna::ops::linear::Linear;
use kdna::ops::modulate::Modulate;
use kdna::ops::pool::MaxPool2d;
use kdna::reference as r;

const TOL: f64 = 1e-6;

#[test]
fn conv2d_gradients() {
    let cfg = Conv2dConfig { stride: (2, 1), padding: (1, 2), groups: 2 };
    let s = Conv2dShape::new(&[3, 4, 5, 6], &[6, 2, 3, 2], cfg).unwrap();
    let mut g = rng(1);
    let x = randn(&mut g, 3 * 4 * 5 * 6);
    let w = randn(&mut g, 6 * 2 * 3 * 2);
    let b = randn(&mut g, 6);
    let dy = randn(&mut g, s.output().iter().product());
    let (dx, dw, db) = r::conv2d::backward(&s, &x, &w, &dy);
    assert_close("dx", &dx, &numeric_grad(&x, |x| dot(&r::conv2d::forward(&s, x, &w, Some(&b)), &dy)), TOL);
    assert_close("dw", &dw, &numeric_grad(&w, |w| dot(&r::conv2d::forward(&s, &x, w, Some(&b)), &dy)), TOL);
    assert_close("db", &db, &numeric_grad(&b, |b| dot(&r::conv2d::forward(&s, &x, &w, Some(b)), &dy)), TOL);
}

#[test]
fn modulate_gradients() {
    for has_spatial in [true, false] {
        // Children 1 and 2 of 3 attention rows: the node's rows only.
        let m = Modulate {
            first_child: 1,
            children: 2,
            rows: 3,
            c_out: 4,
            fan: 3 * 9,
            taps: 9,
            has_spatial,
            live_taps: None,
            packed_by_consumer: 0,
            dchild_strides: None,
            own_parent_gradient: false,
        };
        let mut g = rng(2);
        let parent = randn(&mut g, 4 * 27);
        let spatial = randn(&mut g, 3 * 9);
        let filter = randn(&mut g, 3 * 4);
        let dys: Vec<Vec<f64>> = (0..2).map(|_| randn(&mut g, 4 * 27)).collect();
        let sp = has_spatial.then_some(spatial.as_slice());
        let loss = |p: &[f64], s: Option<&[f64]>, f: &[f64]| -> f64 {
            r::modulate::forward(&m, p, s, f).iter().zip(&dys).map(|(c, d)| dot(c, d)).sum()
        };
        let (dp, ds, df) = r::modulate::backward(&m, &parent, sp, &filter, &dys);
        assert_close("dparent", &dp, &numeric_grad(&parent, |p| loss(p, sp, &filter)), TOL);
        assert_close("dfilter", &df, &numeric_grad(&filter, |f| loss(&parent, sp, f)), TOL);
        if has_spatial {
            assert_close("dspatial", &ds, &numeric_grad(&spatial, |s| loss(&parent, Some(s), &filter)), TOL);
        }
    }
}

#[test]
fn batchnorm_gradients_train_and_eval() {
    let b =
        BatchNorm { batch: 3, channels: 5, spatial: 7, eps: 1e-5, momentum: 0.1, activation: OutputActivation::None };
    let mut g = rng(3);
    let n = 3 * 5 * 7;
    let x = randn(&mut g, n);
    let w = randn(&mut g, 5);
    let bias = randn(&mut g, 5);
    let rm = randn(&mut g, 5);
    let rv: Vec<f64> = randn(&mut g, 5).iter().map(|v| 0.5 + v.abs()).collect();
    let dy = randn(&mut g, n);
    let train = |x: &[f64], w: &[f64], bb: &[f64]| dot(&r::batchnorm::forward_train(&b, x, w, bb, &rm, &rv).0, &dy);
    let (dx, dw, db) = r::batchnorm::backward(&b, &x, &w, &dy, None);
    assert_close("train dx", &dx, &numeric_grad(&x, |x| train(x, &w, &bias)), 1e-5);
    assert_close("train dw", &dw, &numeric_grad(&w, |w| train(&x, w, &bias)), TOL);
    assert_close("train db", &db, &numeric_grad(&bias, |bb| train(&x, &w, bb)), TOL);
    let eval = |x: &[f64], w: &[f64]| dot(&r::batchnorm::forward_eval(&b, x, w, &bias, &rm, &rv), &dy);
    let (dx, dw, _) = r::batchnorm::backward(&b, &x, &w, &dy, Some((&rm, &rv)));
    assert_close("eval dx", &dx, &numeric_grad(&x, |x| eval(x, &w)), TOL);
    assert_close("eval dw", &dw, &numeric_grad(&w, |w| eval(&x, w)), TOL);
}

#[test]
fn layernorm_gradients() {
    let l = LayerNorm { batch: 2, channels: 5, spatial: 3, eps: 1e-6 };
    let mut g = rng(31);
    let n = 2 * 5 * 3;
    let (x, w, bias, dy) = (randn(&mut g, n), randn(&mut g, 5), randn(&mut g, 5), randn(&mut g, n));
    let f = |x: &[f64], w: &[f64], b: &[f64]| dot(&r::layernorm::forward(&l, x, w, b), &dy);
    let (dx, dw, db) = r::layernorm::backward(&l, &x, &w, &dy);
    assert_close("dx", &dx, &numeric_grad(&x, |x| f(x, &w, &bias)), 1e-5);
    assert_close("dw", &dw, &numeric_grad(&w, |w| f(&x, w, &bias)), TOL);
    assert_close("db", &db, &numeric_grad(&bias, |b| f(&x, &w, b)), TOL);
    // Each (sample, position) comes out with mean 0 and variance 1 / (1 + eps / var) when the
    // affine part is the identity.
    let y = r::layernorm::forward(&l, &x, &[1.0; 5], &[0.0; 5]);
    for (n, s) in [(0, 0), (1, 2)] {
        let v: Vec<f64> = (0..5).map(|c| y[(n * 5 + c) * 3 + s]).collect();
        let mean = v.iter().sum::<f64>() / 5.0;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 5.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-4, "mean {mean}, var {var}");
    }
}

#[test]
fn batchnorm_running_statistics_use_unbiased_variance() {
    let b =
        BatchNorm { batch: 2, channels: 1, spatial: 2, eps: 1e-5, momentum: 0.1, activation: OutputActivation::None };
    let (_, mean, var) = r::batchnorm::forward_train(&b, &[1.0, 2.0, 3.0, 6.0], &[1.0], &[0.0], &[0.0], &[1.0]);
    // Batch mean 3, unbiased variance 14/3 (momentum is an f32 0.1, hence 1e-7).
    assert_close("running mean", &mean, &[0.3], 1e-7);
    assert_close("running var", &var, &[0.9 + 0.1 * 14.0 / 3.0], 1e-7);
}

#[test]
fn activation_gradients() {
    let mut g = rng(4);
    // Keep away from the kinks at 0 and 6, where finite differences straddle them.
    let x: Vec<f64> =
        randn(&mut g, 40).iter().map(|v| 4.0 * v).filter(|v| v.abs() > 0.01 && (v - 6.0).abs() > 0.01).collect();
    let dy = randn(&mut g, x.len());
    for kind in [Activation::Relu, Activation::Relu6, Activation::Sigmoid, Activation::Gelu] {
        let want = numeric_grad(&x, |x| dot(&r::elementwise::activation_forward(kind, x), &dy));
        assert_close(&format!("{kind:?}"), &r::elementwise::activation_backward(kind, &x, &dy), &want, TOL);
    }
}

#[test]
fn gelu_is_the_exact_erf_form() {
    // x * Phi(x) at points where Phi is known to double precision.
    let x = [1.0, -3.0, 0.5, 0.0, 8.0];
    let want = [0.8413447460685429, -3.0 * 0.0013498980316301, 0.5 * 0.6914624612740131, 0.0, 8.0];
    let got = r::elementwise::activation_forward(Activation::Gelu, &x);
    assert_close("gelu", &got, &want, 1e-13);
}

#[test]
fn channel_scale_gradients() {
    let mut g = rng(5);
    let (x, gate, dy) = (randn(&mut g, 6 * 5), randn(&mut g, 6), randn(&mut g, 30));
    let (dx, dgate) = r::elementwise::channel_scale_backward(&x, &gate, &dy, 5);
    let f = |x: &[f64], s: &[f64]| dot(&r::elementwise::channel_scale_forward(x, s, 5), &dy);
    assert_close("dx", &dx, &numeric_grad(&x, |x| f(x, &gate)), TOL);
    assert_close("dgate", &dgate, &numeric_grad(&gate, |s| f(&x, s)), TOL);
}

#[test]
fn layer_scale_gradients() {
    let mut g = rng(7);
    let (x, gamma, dy) = (randn(&mut g, 2 * 3 * 4), randn(&mut g, 3), randn(&mut g, 2 * 3 * 4));
    let (dx, dgamma) = r::elementwise::layer_scale_backward(&x, &gamma, &dy, 4);
    let f = |x: &[f64], s: &[f64]| dot(&r::elementwise::layer_scale_forward(x, s, 4), &dy);
    assert_close("dx", &dx, &numeric_grad(&x, |x| f(x, &gamma)), TOL);
    assert_close("dgamma", &dgamma, &numeric_grad(&gamma, |s| f(&x, s)), TOL);
}

#[test]
fn drop_path_gradients() {
    let mut g = rng(8);
    let (x, dy) = (randn(&mut g, 4 * 6), randn(&mut g, 4 * 6));
    let mask = [1.0, 0.0, 1.0, 1.0];
    for train in [true, false] {
        let dx = r::elementwise::drop_path(&dy, &mask, 0.25, train);
        let want = numeric_grad(&x, |x| dot(&r::elementwise::drop_path(x, &mask, 0.25, train), &dy));
        assert_close(&format!("train={train}"), &dx, &want, TOL);
    }
    // A dropped sample passes nothing; a kept one is scaled by 1 / (1 - p).
    let y = r::elementwise::drop_path(&x, &mask, 0.25, true);
    assert!(y[6..12].iter().all(|&v| v == 0.0));
    assert_close("kept", &y[..6], &x[..6].iter().map(|v| v / 0.75).collect::<Vec<_>>(), 1e-15);
}

#[test]
fn pooling_gradients() {
    let p = MaxPool2d { planes: 2, h: 7, w: 6, out_h: 4, out_w: 3, kernel: 3, stride: 2, pad: 1 };
    let mut g = rng(6);
    let x = randn(&mut g, 2 * 42);
    let dy = randn(&mut g, 2 * 12);
    let (_, argmax) = r::pool::maxpool_forward(&p, &x);
    let dx = r::pool::maxpool_backward(&p, &argmax, &dy);
    assert_close("maxpool dx", &dx, &numeric_grad(&x, |x| dot(&r::pool::maxpool_forward(&p, x).0, &dy)), TOL);
    let dy = randn(&mut g, 2);
    let want = numeric_grad(&x, |x| dot(&r::pool::global_avgpool_forward(x, 42), &dy));
    assert_close("avgpool dx", &r::pool::global_avgpool_backward(&dy, 42), &want, TOL);
}

#[test]
fn linear_gradients() {
    let l = Linear { batch: 3, in_features: 5, out_features: 4, has_bias: true, activation: OutputActivation::None };
    let mut g = rng(7);
    let (x, w, b, dy) = (randn(&mut g, 15), randn(&mut g, 20), randn(&mut g, 4), randn(&mut g, 12));
    let (dx, dw, db) = r::linear::backward(&l, &x, &w, &dy);
    assert_close("dx", &dx, &numeric_grad(&x, |x| dot(&r::linear::forward(&l, x, &w, Some(&b)), &dy)), TOL);
    assert_close("dw", &dw, &numeric_grad(&w, |w| dot(&r::linear::forward(&l, &x, w, Some(&b)), &dy)), TOL);
    assert_close("db", &db, &numeric_grad(&b, |b| dot(&r::linear::forward(&l, &x, &w, Some(b)), &dy)), TOL);
}

#[test]
fn cross_entropy_gradients() {
    let mut g = rng(8);
    let logits = randn(&mut g, 5 * 7);
    let labels = [0, 6, 3, 3, 1];
    for smoothing in [0.0, 0.1] {
        let want = numeric_grad(&logits, |l| r::loss::cross_entropy_forward(l, &labels, 7, smoothing).0);
        assert_close("dlogits", &r::loss::cross_entropy_backward(&logits, &labels, 7, smoothing), &want, TOL);
    }
}
