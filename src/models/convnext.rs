//! ConvNeXt's building blocks under torchvision's names (`torchvision.models.convnext`) and
//! kdna's KernelDNA stages for it (`ConvNeXtStage3`, `ConvNeXtStage4` in the reference).
//!
//! The block is a 7x7 depthwise conv, LayerNorm across channels, a pointwise MLP (Linear 4x
//! wide, GELU, Linear back) and a per-channel layer scale on the residual branch. kdna keeps
//! NCHW throughout: torchvision's permutes to channels-last and back disappear, its Linear
//! layers become 1x1 convs over the same [out, in] weights, and LayerNorm normalises across
//! channels. A KernelDNA kid shares its parent block's two pointwise weights, modulated per
//! output unit (`1 + a_filter`), and owns its depthwise conv, LayerNorm, biases, layer scale and
//! a router before each pointwise layer.

use anyhow::Result;

use super::layers::{ConvInit, default_bias, key, router};
use crate::graph::{Graph, Init, TensorId};
use crate::ops::conv2d::Conv2dConfig;

/// How a block's conv and linear layers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockInit {
    /// torchvision's ConvNeXt: `trunc_normal_(std=0.02)` weights, zero biases.
    Torchvision,
    /// PyTorch's layer defaults, U(±1/sqrt(fan_in)) for weights and biases: the KernelDNA
    /// stages' blocks, built after torchvision's init ran.
    TorchDefault,
}

impl BlockInit {
    fn weight(self, fan_in: usize) -> Init {
        match self {
            BlockInit::Torchvision => Init::TruncNormal(0.02),
            BlockInit::TorchDefault => default_bias(fan_in),
        }
    }

    fn bias(self, fan_in: usize) -> Init {
        match self {
            BlockInit::Torchvision => Init::Zeros,
            BlockInit::TorchDefault => default_bias(fan_in),
        }
    }
}

/// A LayerNorm's parameters `prefix.weight` (ones) and `prefix.bias` (zeros) over `c` channels.
fn layernorm_params(g: &mut Graph, prefix: &str, c: usize) -> Result<(TensorId, TensorId)> {
    Ok((
        g.param_init(&key(prefix, "weight"), &[c], Init::Ones)?,
        g.param_init(&key(prefix, "bias"), &[c], Init::Zeros)?,
    ))
}

/// The parameters of a `CNBlock` named `prefix` at `c` channels.
#[derive(Clone, Debug)]
pub struct CnBlock {
    dw_weight: TensorId,
    dw_bias: TensorId,
    ln_weight: TensorId,
    ln_bias: TensorId,
    /// `block.3` (Linear c -> 4c) and `block.5` (Linear 4c -> c) weights: what kids share.
    pub pw1: TensorId,
    pw1_bias: TensorId,
    pub pw2: TensorId,
    pw2_bias: TensorId,
    gamma: TensorId,
    /// Stochastic-depth probability of the residual branch (mask input `<prefix>.stochastic_depth`).
    drop_path: f32,
    prefix: String,
}

impl CnBlock {
    /// Adds the block's parameters (before it is applied, so kids can share its pointwise
    /// weights first); its layer scale starts at `layer_scale` (1e-6 in ConvNeXt-Tiny).
    pub fn new(
        g: &mut Graph,
        prefix: &str,
        c: usize,
        layer_scale: f32,
        drop_path: f32,
        init: BlockInit,
    ) -> Result<CnBlock> {
        let k = |name: &str| key(prefix, name);
        let dw_weight = g.param_init(&k("block.0.weight"), &[c, 1, 7, 7], init.weight(49))?;
        let dw_bias = g.param_init(&k("block.0.bias"), &[c], init.bias(49))?;
        let (ln_weight, ln_bias) = layernorm_params(g, &k("block.2"), c)?;
        Ok(CnBlock {
            dw_weight,
            dw_bias,
            ln_weight,
            ln_bias,
            pw1: g.param_init(&k("block.3.weight"), &[4 * c, c], init.weight(c))?,
            pw1_bias: g.param_init(&k("block.3.bias"), &[4 * c], init.bias(c))?,
            pw2: g.param_init(&k("block.5.weight"), &[c, 4 * c], init.weight(4 * c))?,
            pw2_bias: g.param_init(&k("block.5.bias"), &[c], init.bias(4 * c))?,
            gamma: g.param_init(&k("layer_scale"), &[c, 1, 1], Init::Constant(layer_scale))?,
            drop_path,
            prefix: prefix.to_string(),
        })
    }

    /// `x + drop_path(layer_scale * block.5(gelu(block.3(block.2(block.0(x))))))`.
    pub fn apply(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        let c = g.shape(x)[1];
        let y = g.conv2d(x, self.dw_weight, Some(self.dw_bias), Conv2dConfig::new(1, 3).groups(c))?;
        let y = g.layernorm(y, self.ln_weight, self.ln_bias, 1e-6)?;
        let y = g.conv2d(y, self.pw1, Some(self.pw1_bias), Conv2dConfig::new(1, 0))?;
        let y = g.gelu(y);
        let y = g.conv2d(y, self.pw2, Some(self.pw2_bias), Conv2dConfig::new(1, 0))?;
        let y = g.layer_scale(y, self.gamma)?;
        let y = g.drop_path(y, &key(&self.prefix, "stochastic_depth"), self.drop_path);
        g.add(x, y)
    }
}

/// torchvision's `CNBlock` named `prefix` on `x` ([N, C, H, W]).
pub fn cn_block(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    layer_scale: f32,
    drop_path: f32,
    init: BlockInit,
) -> Result<TensorId> {
    let c = g.shape(x)[1];
    CnBlock::new(g, prefix, c, layer_scale, drop_path, init)?.apply(g, x)
}

/// The reference's `ConvNeXtKid` named `prefix`: its own depthwise conv and LayerNorm, then the
/// child pointwise weights `w1` ([4c, c]) and `w2` ([c, 4c]), each after a router (ratio 4
/// before w1, 24 before w2), with its own biases and layer scale (1e-6). PyTorch's default init.
pub fn convnext_kid(g: &mut Graph, x: TensorId, prefix: &str, w1: TensorId, w2: TensorId) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let c = g.shape(x)[1];
    let dw_weight = g.param_init(&k("dwconv.weight"), &[c, 1, 7, 7], default_bias(49))?;
    let dw_bias = g.param_init(&k("dwconv.bias"), &[c], default_bias(49))?;
    let (ln_weight, ln_bias) = layernorm_params(g, &k("norm"), c)?;
    let pw1_bias = g.param_init(&k("pw1_bias"), &[4 * c], Init::Zeros)?;
    let pw2_bias = g.param_init(&k("pw2_bias"), &[c], Init::Zeros)?;
    let gamma = g.param_init(&k("layer_scale"), &[c, 1, 1], Init::Constant(1e-6))?;
    let y = g.conv2d(x, dw_weight, Some(dw_bias), Conv2dConfig::new(1, 3).groups(c))?;
    let y = g.layernorm(y, ln_weight, ln_bias, 1e-6)?;
    let y = router(g, y, &k("se1.se"), 4, ConvInit::TorchDefault)?;
    let y = g.conv2d(y, w1, Some(pw1_bias), Conv2dConfig::new(1, 0))?;
    let y = g.gelu(y);
    let y = router(g, y, &k("se2.se"), 24, ConvInit::TorchDefault)?;
    let y = g.conv2d(y, w2, Some(pw2_bias), Conv2dConfig::new(1, 0))?;
    let y = g.layer_scale(y, gamma)?;
    g.add(x, y)
}

/// The stage's filter attentions ([kids, 4c, 1] and [kids, c, 1], zeros).
fn filter_attentions(g: &mut Graph, prefix: &str, kids: usize, c: usize) -> Result<(TensorId, TensorId)> {
    let k = |name: &str| key(prefix, name);
    Ok((
        g.param_init(&k("static_filter_attn1"), &[kids, 4 * c, 1], Init::Zeros)?,
        g.param_init(&k("static_filter_attn2"), &[kids, c, 1], Init::Zeros)?,
    ))
}

/// Stochastic-depth probability of block `i` of a stage from its schedule (`probs`, one per
/// block in torchvision's order; empty: off).
fn prob(probs: &[f32], i: usize) -> f32 {
    probs.get(i).copied().unwrap_or(0.0)
}

/// kdna's KernelDNA ConvNeXt stage 3 named `prefix`: block0, then `n` pairs of [kid_i,
/// parent_i], kid_i sharing parent_i's pointwise weights (`kids.i`, `parents.i`). `probs`: the
/// stochastic depth of the stage's 2n + 1 block positions (kids have none, as in the reference).
pub fn convnext_stage3(g: &mut Graph, x: TensorId, prefix: &str, n: usize, probs: &[f32]) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let c = g.shape(x)[1];
    let init = BlockInit::TorchDefault;
    let mut x = cn_block(g, x, &k("block0"), 1e-6, prob(probs, 0), init)?;
    let (attn1, attn2) = filter_attentions(g, prefix, n, c)?;
    for i in 0..n {
        let parent = CnBlock::new(g, &k(&format!("parents.{i}")), c, 1e-6, prob(probs, 2 + 2 * i), init)?;
        let w1 = g.modulate(parent.pw1, None, attn1, i, 1)?[0];
        let w2 = g.modulate(parent.pw2, None, attn2, i, 1)?[0];
        x = convnext_kid(g, x, &k(&format!("kids.{i}")), w1, w2)?;
        x = parent.apply(g, x)?;
    }
    Ok(x)
}

/// kdna's KernelDNA ConvNeXt stage 4 named `prefix`: block0, `n_kids` kids sharing the last
/// block's pointwise weights (`blocks.i`), then the last block; `probs` as for stage 3
/// (n_kids + 2 positions).
pub fn convnext_stage4(g: &mut Graph, x: TensorId, prefix: &str, n_kids: usize, probs: &[f32]) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let c = g.shape(x)[1];
    let init = BlockInit::TorchDefault;
    let mut x = cn_block(g, x, &k("block0"), 1e-6, prob(probs, 0), init)?;
    let (attn1, attn2) = filter_attentions(g, prefix, n_kids, c)?;
    let last = CnBlock::new(g, &k("last_block"), c, 1e-6, prob(probs, n_kids + 1), init)?;
    let w1 = g.modulate(last.pw1, None, attn1, 0, n_kids)?;
    let w2 = g.modulate(last.pw2, None, attn2, 0, n_kids)?;
    for i in 0..n_kids {
        x = convnext_kid(g, x, &k(&format!("blocks.{i}")), w1[i], w2[i])?;
    }
    last.apply(g, x)
}

/// Channels and blocks of ConvNeXt-Tiny's four stages.
const TINY: [(usize, usize); 4] = [(96, 3), (192, 3), (384, 9), (768, 3)];

/// The smallest input ConvNeXt takes: it downsamples 32x (a 4x4 stem, three 2x2 steps).
pub const MIN_RES: usize = 32;

/// torchvision's `convnext_tiny` (`--baseline`) or kdna's KernelDNA variant (stage 3 as block0
/// and 4 kid/parent pairs, stage 4 as block0, 1 kid and the last block). Stochastic depth
/// follows torchvision's schedule: block i of the 18 drops with probability `drop_path * i / 17`.
pub fn convnext_tiny(g: &mut Graph, images: TensorId, classes: usize, kdna: bool, drop_path: f32) -> Result<TensorId> {
    let res = g.shape(images)[2].min(g.shape(images)[3]);
    if res < MIN_RES {
        anyhow::bail!(
            "convnext_tiny downsamples 32x: {res}x{res} inputs are below its minimum of {MIN_RES}x{MIN_RES} (--res {MIN_RES} or more)"
        );
    }
    let init = BlockInit::Torchvision;
    let layernorm2d = |g: &mut Graph, x: TensorId, prefix: &str| -> Result<TensorId> {
        let (w, b) = layernorm_params(g, prefix, g.shape(x)[1])?;
        g.layernorm(x, w, b, 1e-6)
    };
    let conv = |g: &mut Graph, x: TensorId, prefix: &str, out: usize, kernel: usize| -> Result<TensorId> {
        let c = g.shape(x)[1];
        let w = g.param_init(&key(prefix, "weight"), &[out, c, kernel, kernel], init.weight(c * kernel * kernel))?;
        let b = g.param_init(&key(prefix, "bias"), &[out], init.bias(c * kernel * kernel))?;
        g.conv2d(x, w, Some(b), Conv2dConfig::new(kernel, 0))
    };
    let total: usize = TINY.iter().map(|s| s.1).sum();
    let schedule: Vec<f32> = (0..total).map(|i| drop_path * i as f32 / (total - 1) as f32).collect();
    let x = conv(g, images, "features.0.0", TINY[0].0, 4)?;
    let mut x = layernorm2d(g, x, "features.0.1")?;
    let mut first = 0;
    for (stage, &(channels, blocks)) in TINY.iter().enumerate() {
        let name = format!("features.{}", 2 * stage + 1);
        let probs = &schedule[first..first + blocks];
        first += blocks;
        x = match (kdna, stage) {
            (true, 2) => convnext_stage3(g, x, &name, (blocks - 1) / 2, probs)?,
            (true, 3) => convnext_stage4(g, x, &name, blocks - 2, probs)?,
            _ => {
                for (block, &p) in probs.iter().enumerate() {
                    x = cn_block(g, x, &format!("{name}.{block}"), 1e-6, p, init)?;
                }
                x
            }
        };
        if let Some(&(next, _)) = TINY.get(stage + 1) {
            let down = format!("features.{}", 2 * stage + 2);
            x = layernorm2d(g, x, &format!("{down}.0"))?;
            x = conv(g, x, &format!("{down}.1"), next, 2)?;
        }
        debug_assert_eq!(g.shape(x)[1], TINY.get(stage + 1).map_or(channels, |s| s.0));
    }
    let pooled = g.global_avgpool(x)?;
    let pooled = layernorm2d(g, pooled, "classifier.0")?;
    let c = g.shape(pooled)[1];
    let w = g.param_init("classifier.2.weight", &[classes, c], init.weight(c))?;
    let b = g.param_init("classifier.2.bias", &[classes], init.bias(c))?;
    g.linear(pooled, w, Some(b))
}
