//! ResNet18 and ResNet50 (torchvision), and their KernelDNA stages (the official modules,
//! reproduced by `ResNet18Stage`, `ResNet50Stage3`, `ResNet50Stage4` of the reference).

use anyhow::Result;

use super::layers::{self, ConvInit, LinearInit, batchnorm_act, conv_weight, key, linear, router};
use crate::graph::{Graph, Init, TensorId};
use crate::ops::conv2d::{Conv2dConfig, OutputActivation};

/// conv -> bn (-> `act`, the BatchNorm applying it), with the conv's weight given (a parent or
/// a child kernel).
fn conv_bn_with(
    g: &mut Graph,
    x: TensorId,
    weight: TensorId,
    stride: usize,
    bn: &str,
    act: OutputActivation,
) -> Result<TensorId> {
    let pad = g.shape(weight)[2] / 2;
    let y = g.conv2d(x, weight, None, Conv2dConfig::new(stride, pad))?;
    batchnorm_act(g, y, bn, act)
}

/// A bias-free conv with "same" padding named `conv`, then a BatchNorm named `bn`, then `act`
/// (the BatchNorm applying it).
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    g: &mut Graph,
    x: TensorId,
    [conv, bn]: [&str; 2],
    c_out: usize,
    kernel: usize,
    stride: usize,
    init: ConvInit,
    act: OutputActivation,
) -> Result<TensorId> {
    let cfg = Conv2dConfig::new(stride, kernel / 2);
    layers::conv_bn_act(g, x, [conv, bn], c_out, kernel, cfg, init, act)
}

/// torchvision's stem: 7x7/2 conv, bn, relu, 3x3/2 max pool.
pub fn stem(g: &mut Graph, images: TensorId) -> Result<TensorId> {
    let x = conv_bn(g, images, ["conv1", "bn1"], 64, 7, 2, ConvInit::KaimingFanOut, OutputActivation::Relu)?;
    g.maxpool2d(x, 3, 2, 1)
}

/// Global average pool and the `fc` classifier.
pub fn head(g: &mut Graph, x: TensorId, classes: usize) -> Result<TensorId> {
    let pooled = g.global_avgpool(x)?;
    linear(g, pooled, "fc", classes, LinearInit::TorchDefault)
}

/// torchvision's projection shortcut `prefix.0` (1x1 conv, stride) and `prefix.1` (bn).
fn downsample(g: &mut Graph, x: TensorId, prefix: &str, c_out: usize, stride: usize) -> Result<TensorId> {
    let (conv, bn) = (key(prefix, "0"), key(prefix, "1"));
    conv_bn(g, x, [&conv, &bn], c_out, 1, stride, ConvInit::KaimingFanOut, OutputActivation::None)
}

/// torchvision's BasicBlock named `prefix`.
fn basic_block(g: &mut Graph, x: TensorId, prefix: &str, planes: usize, stride: usize) -> Result<TensorId> {
    let identity = if stride != 1 || g.shape(x)[1] != planes {
        downsample(g, x, &key(prefix, "downsample"), planes, stride)?
    } else {
        x
    };
    let init = ConvInit::KaimingFanOut;
    let y =
        conv_bn(g, x, [&key(prefix, "conv1"), &key(prefix, "bn1")], planes, 3, stride, init, OutputActivation::Relu)?;
    let y = conv_bn(g, y, [&key(prefix, "conv2"), &key(prefix, "bn2")], planes, 3, 1, init, OutputActivation::None)?;
    g.add_relu(y, identity)
}

/// A routed child conv: `act(bn(conv(router(x), child)))`.
fn routed_child(
    g: &mut Graph,
    x: TensorId,
    child: TensorId,
    [router_name, bn]: [&str; 2],
    init: ConvInit,
    act: OutputActivation,
) -> Result<TensorId> {
    let routed = router(g, x, router_name, 4, init)?;
    conv_bn_with(g, routed, child, 1, bn, act)
}

/// KernelDNA's ResNet18 stage named `prefix`, replacing torchvision's two BasicBlocks by three
/// blocks of six convs: [conv1 -> child0(conv2)], [child1(conv2) -> conv2], [child2(conv3) -> conv3].
/// Every conv here (router convs included) starts Kaiming-normal fan-out, as the reference
/// re-initialises the stage.
pub fn resnet18_stage(g: &mut Graph, x: TensorId, prefix: &str, planes: usize, stride: usize) -> Result<TensorId> {
    let init = ConvInit::KaimingFanOut;
    let k = |name: &str| key(prefix, name);
    let identity =
        if stride != 1 || g.shape(x)[1] != planes { downsample(g, x, &k("downsample"), planes, stride)? } else { x };
    let conv2 = conv_weight(g, &k("conv2.weight"), planes, planes, 3, init)?;
    let conv3 = conv_weight(g, &k("conv3.weight"), planes, planes, 3, init)?;
    let spatial = g.param_init(&k("static_spatial_attn"), &[3, 1, 1, 3, 3], Init::Zeros)?;
    let filter = g.param_init(&k("static_filter_attn"), &[3, planes, 1, 1, 1], Init::Zeros)?;
    let kids_of_conv2 = g.modulate(conv2, Some(spatial), filter, 0, 2)?;
    let kid_of_conv3 = g.modulate(conv3, Some(spatial), filter, 2, 1)?[0];

    let y = conv_bn(g, x, [&k("conv1"), &k("bn1")], planes, 3, stride, init, OutputActivation::Relu)?;
    let y = routed_child(g, y, kids_of_conv2[0], [&k("se.0.se"), &k("bns.0")], init, OutputActivation::None)?;
    let x = g.add_relu(y, identity)?;

    let y = routed_child(g, x, kids_of_conv2[1], [&k("se.1.se"), &k("bns.1")], init, OutputActivation::Relu)?;
    let y = conv_bn_with(g, y, conv2, 1, &k("bn2"), OutputActivation::None)?;
    let x = g.add_relu(y, x)?;

    let y = routed_child(g, x, kid_of_conv3, [&k("se.2.se"), &k("bns.2")], init, OutputActivation::Relu)?;
    let y = conv_bn_with(g, y, conv3, 1, &k("bn3"), OutputActivation::None)?;
    g.add_relu(y, x)
}

pub fn resnet18(g: &mut Graph, images: TensorId, classes: usize, kdna: bool) -> Result<TensorId> {
    let mut x = stem(g, images)?;
    for (layer, planes, stride) in [(1, 64, 1), (2, 128, 2), (3, 256, 2), (4, 512, 2)] {
        let name = format!("layer{layer}");
        if kdna && layer >= 3 {
            x = resnet18_stage(g, x, &name, planes, stride)?;
        } else {
            x = basic_block(g, x, &format!("{name}.0"), planes, stride)?;
            x = basic_block(g, x, &format!("{name}.1"), planes, 1)?;
        }
    }
    head(g, x, classes)
}

/// torchvision's Bottleneck named `prefix` (stride on the 3x3 conv).
fn bottleneck(g: &mut Graph, x: TensorId, prefix: &str, planes: usize, stride: usize) -> Result<TensorId> {
    let out = planes * 4;
    let identity = if stride != 1 || g.shape(x)[1] != out {
        downsample(g, x, &key(prefix, "downsample"), out, stride)?
    } else {
        x
    };
    let init = ConvInit::KaimingFanOut;
    let y = conv_bn(g, x, [&key(prefix, "conv1"), &key(prefix, "bn1")], planes, 1, 1, init, OutputActivation::Relu)?;
    let y =
        conv_bn(g, y, [&key(prefix, "conv2"), &key(prefix, "bn2")], planes, 3, stride, init, OutputActivation::Relu)?;
    let y = conv_bn(g, y, [&key(prefix, "conv3"), &key(prefix, "bn3")], out, 1, 1, init, OutputActivation::None)?;
    g.add_relu(y, identity)
}

/// The reference's Bottleneck (KernelDNA stages) named `prefix`: `prefix.layers.conv1..bn3`,
/// `prefix.downsample.{conv,bn}`; PyTorch's default init. `conv2` is its 3x3 weight, made by
/// the caller because children share it.
fn kdna_bottleneck(g: &mut Graph, x: TensorId, prefix: &str, conv2: TensorId, stride: usize) -> Result<TensorId> {
    let dim = g.shape(conv2)[0];
    let out = dim * 4;
    let init = ConvInit::TorchDefault;
    let k = |name: &str| key(prefix, name);
    let identity = if stride != 1 || g.shape(x)[1] != out {
        conv_bn(g, x, [&k("downsample.conv"), &k("downsample.bn")], out, 1, stride, init, OutputActivation::None)?
    } else {
        x
    };
    let y = conv_bn(g, x, [&k("layers.conv1"), &k("layers.bn1")], dim, 1, 1, init, OutputActivation::Relu)?;
    let y = conv_bn_with(g, y, conv2, stride, &k("layers.bn2"), OutputActivation::Relu)?;
    let y = conv_bn(g, y, [&k("layers.conv3"), &k("layers.bn3")], out, 1, 1, init, OutputActivation::None)?;
    g.add_relu(y, identity)
}

/// A new 3x3 weight for a KernelDNA bottleneck (`prefix.layers.conv2.weight`).
fn kdna_conv2(g: &mut Graph, prefix: &str, dim: usize) -> Result<TensorId> {
    conv_weight(g, &key(prefix, "layers.conv2.weight"), dim, dim, 3, ConvInit::TorchDefault)
}

/// The reference's KidBottleneck named `prefix`, whose 3x3 conv is `child`.
fn kid_bottleneck(g: &mut Graph, x: TensorId, prefix: &str, child: TensorId) -> Result<TensorId> {
    let dim = g.shape(child)[0];
    let init = ConvInit::TorchDefault;
    let k = |name: &str| key(prefix, name);
    let y = conv_bn(g, x, [&k("half1.conv1"), &k("half1.bn1")], dim, 1, 1, init, OutputActivation::Relu)?;
    let y = routed_child(g, y, child, [&k("half1.se.se"), &k("half2.bn2")], init, OutputActivation::Relu)?;
    let y = conv_bn(g, y, [&k("half2.conv3"), &k("half2.bn3")], dim * 4, 1, 1, init, OutputActivation::None)?;
    g.add_relu(y, x)
}

/// ResNet50's KernelDNA layer3 named `prefix`: block0 (stride 2), then `n` x [kid_i, parent_i],
/// kid_i's 3x3 conv a child of parent_i's.
pub fn resnet50_stage3(g: &mut Graph, x: TensorId, prefix: &str, dim: usize, n: usize) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let filter = g.param_init(&k("static_filter_attn"), &[n, dim, 1, 1, 1], Init::Zeros)?;
    let spatial = g.param_init(&k("static_spatial_attn"), &[n, 1, 1, 3, 3], Init::Zeros)?;
    let conv2 = kdna_conv2(g, &k("block0"), dim)?;
    let mut x = kdna_bottleneck(g, x, &k("block0"), conv2, 2)?;
    for i in 0..n {
        let parent = kdna_conv2(g, &k(&format!("parents.{i}")), dim)?;
        let child = g.modulate(parent, Some(spatial), filter, i, 1)?[0];
        x = kid_bottleneck(g, x, &k(&format!("kids.{i}")), child)?;
        x = kdna_bottleneck(g, x, &k(&format!("parents.{i}")), parent, 1)?;
    }
    Ok(x)
}

/// ResNet50's KernelDNA layer4 named `prefix`: block0 (stride 2), `n_kids` kids sharing
/// last_block's 3x3 conv, then last_block.
pub fn resnet50_stage4(g: &mut Graph, x: TensorId, prefix: &str, dim: usize, n_kids: usize) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let filter = g.param_init(&k("static_filter_attn2"), &[n_kids, dim, 1, 1, 1], Init::Zeros)?;
    let spatial = g.param_init(&k("static_spatial_attn"), &[n_kids, 1, 1, 3, 3], Init::Zeros)?;
    let conv2 = kdna_conv2(g, &k("block0"), dim)?;
    let mut x = kdna_bottleneck(g, x, &k("block0"), conv2, 2)?;
    let parent = kdna_conv2(g, &k("last_block"), dim)?;
    let kids = g.modulate(parent, Some(spatial), filter, 0, n_kids)?;
    for (i, &child) in kids.iter().enumerate() {
        x = kid_bottleneck(g, x, &k(&format!("blocks.{i}")), child)?;
    }
    kdna_bottleneck(g, x, &k("last_block"), parent, 1)
}

pub fn resnet50(g: &mut Graph, images: TensorId, classes: usize, kdna: bool) -> Result<TensorId> {
    let mut x = stem(g, images)?;
    for (layer, planes, blocks, stride) in [(1, 64, 3, 1), (2, 128, 4, 2), (3, 256, 6, 2), (4, 512, 3, 2)] {
        let name = format!("layer{layer}");
        match (kdna, layer) {
            (true, 3) => x = resnet50_stage3(g, x, &name, planes, 3)?,
            (true, 4) => x = resnet50_stage4(g, x, &name, planes, 1)?,
            _ => {
                for b in 0..blocks {
                    x = bottleneck(g, x, &format!("{name}.{b}"), planes, if b == 0 { stride } else { 1 })?;
                }
            }
        }
    }
    head(g, x, classes)
}
