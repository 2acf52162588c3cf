//! MobileNetV2 (torchvision, at width 1.0 or 0.5) and its KernelDNA clusters (the reference's
//! `MobileNetV2Cluster`).

use anyhow::Result;

use super::layers::{self, ConvInit, LinearInit, batchnorm, batchnorm_act, conv_weight, conv2d, key, linear, router};
use crate::graph::{Graph, Init, TensorId};
use crate::ops::conv2d::{Conv2dConfig, OutputActivation};

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, never 10% below `v`.
pub fn make_divisible(v: f64) -> usize {
    let rounded = ((v + 4.0) as usize / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v { rounded + 8 } else { rounded }
}

/// (expansion t, channels c, repeats n, stride s) of torchvision's inverted-residual stages.
const STAGES: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// torchvision's Conv2dNormActivation: conv (no bias) named `conv`, bn named `bn`, relu6.
#[allow(clippy::too_many_arguments)]
fn conv_bn_relu6(
    g: &mut Graph,
    x: TensorId,
    conv: &str,
    bn: &str,
    c_out: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    init: ConvInit,
) -> Result<TensorId> {
    layers::conv_bn_act(g, x, [conv, bn], c_out, kernel, cfg, init, OutputActivation::Relu6)
}

/// torchvision's InvertedResidual named `prefix`.
fn inverted_residual(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    out: usize,
    stride: usize,
    t: usize,
) -> Result<TensorId> {
    let inp = g.shape(x)[1];
    let hidden = inp * t;
    let init = ConvInit::KaimingFanOut;
    // torchvision numbers the block's layers conv.0, conv.1, ...; conv-bn-relu6 layers hold
    // their conv at .0 and their bn at .1.
    let layer = |i: usize| key(prefix, &format!("conv.{i}"));
    let mut i = 0;
    let mut y = x;
    if t != 1 {
        let pw = Conv2dConfig::new(1, 0);
        y = conv_bn_relu6(g, y, &key(&layer(i), "0"), &key(&layer(i), "1"), hidden, 1, pw, init)?;
        i += 1;
    }
    let dw = Conv2dConfig::new(stride, 1).groups(hidden);
    y = conv_bn_relu6(g, y, &key(&layer(i), "0"), &key(&layer(i), "1"), hidden, 3, dw, init)?;
    y = conv2d(g, y, &layer(i + 1), out, 1, Conv2dConfig::new(1, 0), false, init)?;
    y = batchnorm(g, y, &layer(i + 2))?;
    if stride == 1 && inp == out { g.add(y, x) } else { Ok(y) }
}

/// The reference's `_ib_layers` named `prefix` (pw1, bn1, dw, bn2, pw2, bn3); `pw1`/`pw2` are
/// given because kids share them.
fn ib_layers(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    pw1: TensorId,
    pw2: TensorId,
    stride: usize,
) -> Result<TensorId> {
    let init = ConvInit::TorchDefault;
    let hidden = g.shape(pw1)[0];
    let k = |name: &str| key(prefix, name);
    let y = g.conv2d(x, pw1, None, Conv2dConfig::new(1, 0))?;
    let y = batchnorm_act(g, y, &k("bn1"), OutputActivation::Relu6)?;
    let y = conv_bn_relu6(g, y, &k("dw"), &k("bn2"), hidden, 3, Conv2dConfig::new(stride, 1).groups(hidden), init)?;
    let y = g.conv2d(y, pw2, None, Conv2dConfig::new(1, 0))?;
    batchnorm(g, y, &k("bn3"))
}

fn pointwise(g: &mut Graph, name: &str, out: usize, inp: usize) -> Result<TensorId> {
    conv_weight(g, name, out, inp, 1, ConvInit::TorchDefault)
}

/// The reference's KidIB named `prefix`: routed child pointwise convs around its own depthwise conv.
fn kid_block(g: &mut Graph, x: TensorId, prefix: &str, w1: TensorId, w3: TensorId) -> Result<TensorId> {
    let init = ConvInit::TorchDefault;
    let hidden = g.shape(w1)[0];
    let k = |name: &str| key(prefix, name);
    let y = router(g, x, &k("se1.se"), 4, init)?;
    let y = g.conv2d(y, w1, None, Conv2dConfig::new(1, 0))?;
    let y = batchnorm_act(g, y, &k("bn1"), OutputActivation::Relu6)?;
    let y = conv_bn_relu6(g, y, &k("dwconv"), &k("bn2"), hidden, 3, Conv2dConfig::new(1, 1).groups(hidden), init)?;
    let y = router(g, y, &k("se3.se"), 24, init)?;
    let y = g.conv2d(y, w3, None, Conv2dConfig::new(1, 0))?;
    let y = batchnorm(g, y, &k("bn3"))?;
    g.add(y, x)
}

/// KernelDNA's MobileNetV2 cluster named `prefix`: a transition block (inp -> out, stride),
/// `n_kids` kids whose pointwise convs are filter-modulated children of last_block's, then
/// last_block.
pub fn mobilenet_cluster(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    out: usize,
    stride: usize,
    n_kids: usize,
) -> Result<TensorId> {
    let inp = g.shape(x)[1];
    let k = |name: &str| key(prefix, name);
    let t_pw1 = pointwise(g, &k("transition.layers.pw1.weight"), inp * 6, inp)?;
    let t_pw2 = pointwise(g, &k("transition.layers.pw2.weight"), out, inp * 6)?;
    let mut x = ib_layers(g, x, &k("transition.layers"), t_pw1, t_pw2, stride)?;
    let hidden = out * 6;
    let pw1 = pointwise(g, &k("last_block.layers.pw1.weight"), hidden, out)?;
    let pw2 = pointwise(g, &k("last_block.layers.pw2.weight"), out, hidden)?;
    let attn1 = g.param_init(&k("static_filter_attn1"), &[n_kids, hidden, 1, 1, 1], Init::Zeros)?;
    let attn3 = g.param_init(&k("static_filter_attn3"), &[n_kids, out, 1, 1, 1], Init::Zeros)?;
    let w1 = g.modulate(pw1, None, attn1, 0, n_kids)?;
    let w3 = g.modulate(pw2, None, attn3, 0, n_kids)?;
    for i in 0..n_kids {
        x = kid_block(g, x, &k(&format!("blocks.{i}")), w1[i], w3[i])?;
    }
    let y = ib_layers(g, x, &k("last_block.layers"), pw1, pw2, 1)?;
    g.add(y, x)
}

/// MobileNetV2 at `width` (1.0 or 0.5), classifier dropout 0 as in the seed.
pub fn mobilenet_v2(g: &mut Graph, images: TensorId, classes: usize, width: f64, kdna: bool) -> Result<TensorId> {
    let init = ConvInit::KaimingFanOut;
    let stem_channels = make_divisible(32.0 * width);
    let mut x =
        conv_bn_relu6(g, images, "features.0.0", "features.0.1", stem_channels, 3, Conv2dConfig::new(2, 1), init)?;
    let mut index = 1;
    for (stage, &(t, c, n, s)) in STAGES.iter().enumerate() {
        let out = make_divisible(c as f64 * width);
        // KernelDNA replaces stages 2..=5 (32, 64, 96 and 160 channels at width 1) by one
        // cluster each, named after the stage's last torchvision block.
        let kids = match stage {
            2 | 4 | 5 => Some(1),
            3 => Some(2),
            _ => None,
        };
        match (kdna, kids) {
            (true, Some(kids)) => {
                x = mobilenet_cluster(g, x, &format!("features.{}", index + n - 1), out, s, kids)?;
            }
            _ => {
                for i in 0..n {
                    x = inverted_residual(
                        g,
                        x,
                        &format!("features.{}", index + i),
                        out,
                        if i == 0 { s } else { 1 },
                        t,
                    )?;
                }
            }
        }
        index += n;
    }
    let last = make_divisible(1280.0 * width.max(1.0));
    let x = conv_bn_relu6(
        g,
        x,
        &format!("features.{index}.0"),
        &format!("features.{index}.1"),
        last,
        1,
        Conv2dConfig::new(1, 0),
        init,
    )?;
    let pooled = g.global_avgpool(x)?;
    linear(g, pooled, "classifier.1", classes, LinearInit::Normal(0.01))
}
