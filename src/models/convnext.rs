//! ConvNeXt's building blocks under torchvision's names (`torchvision.models.convnext`): the
//! block is a 7x7 depthwise conv, LayerNorm across channels, a pointwise MLP (Linear 4x wide,
//! GELU, Linear back) and a per-channel layer scale on the residual branch. kdna keeps NCHW
//! throughout: torchvision's permutes to channels-last and back disappear, its Linear layers
//! become 1x1 convs over the same [out, in] weights, and LayerNorm normalises across channels.

use anyhow::Result;

use super::layers::key;
use crate::graph::{Graph, Init, TensorId};
use crate::ops::conv2d::Conv2dConfig;

/// How ConvNeXt initialises conv and linear weights: `trunc_normal_(std=0.02)`, biases zero.
const WEIGHT_INIT: Init = Init::TruncNormal(0.02);

/// A pointwise (Linear) layer named `prefix` on [N, C, H, W]: weight [out, C], bias [out].
fn pointwise(g: &mut Graph, x: TensorId, prefix: &str, out: usize) -> Result<TensorId> {
    let c = g.shape(x)[1];
    let weight = g.param_init(&key(prefix, "weight"), &[out, c], WEIGHT_INIT)?;
    let bias = g.param_init(&key(prefix, "bias"), &[out], Init::Zeros)?;
    g.conv2d(x, weight, Some(bias), Conv2dConfig::new(1, 0))
}

/// torchvision's `CNBlock` named `prefix` on `x` ([N, C, H, W]), its layer scale starting at
/// `layer_scale` (1e-6 in ConvNeXt-Tiny):
/// `x + layer_scale * block.5(gelu(block.3(block.2(block.0(x)))))`.
pub fn cn_block(g: &mut Graph, x: TensorId, prefix: &str, layer_scale: f32) -> Result<TensorId> {
    let k = |name: &str| key(prefix, name);
    let c = g.shape(x)[1];
    let dw_weight = g.param_init(&k("block.0.weight"), &[c, 1, 7, 7], WEIGHT_INIT)?;
    let dw_bias = g.param_init(&k("block.0.bias"), &[c], Init::Zeros)?;
    let y = g.conv2d(x, dw_weight, Some(dw_bias), Conv2dConfig::new(1, 3).groups(c))?;
    let ln_weight = g.param_init(&k("block.2.weight"), &[c], Init::Ones)?;
    let ln_bias = g.param_init(&k("block.2.bias"), &[c], Init::Zeros)?;
    let y = g.layernorm(y, ln_weight, ln_bias, 1e-6)?;
    let y = pointwise(g, y, &k("block.3"), 4 * c)?;
    let y = g.gelu(y);
    let y = pointwise(g, y, &k("block.5"), c)?;
    let gamma = g.param_init(&k("layer_scale"), &[c, 1, 1], Init::Constant(layer_scale))?;
    let y = g.layer_scale(y, gamma)?;
    g.add(x, y)
}
