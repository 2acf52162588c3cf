//! The building blocks of every network, each adding its parameters under torch's names.

use anyhow::Result;

use crate::graph::{Graph, TensorId};
use crate::ops::conv2d::Conv2dConfig;

/// nn.BatchNorm2d (or BatchNorm1d on [N, C]) named `prefix`: `prefix.weight`, `prefix.bias`,
/// `prefix.running_mean`, `prefix.running_var`; eps 1e-5, momentum 0.1.
pub fn batchnorm(g: &mut Graph, x: TensorId, prefix: &str) -> Result<TensorId> {
    let c = g.shape(x)[1];
    let weight = g.param(&format!("{prefix}.weight"), &[c])?;
    let bias = g.param(&format!("{prefix}.bias"), &[c])?;
    let mean = g.state(&format!("{prefix}.running_mean"), &[c])?;
    let var = g.state(&format!("{prefix}.running_var"), &[c])?;
    g.batchnorm(x, weight, bias, mean, var, 1e-5, 0.1)
}

/// nn.Conv2d named `prefix` (`prefix.weight`, and `prefix.bias` when `bias`).
pub fn conv2d(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    c_out: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    bias: bool,
) -> Result<TensorId> {
    let c_in = g.shape(x)[1];
    let weight = g.param(&format!("{prefix}.weight"), &[c_out, c_in / cfg.groups, kernel, kernel])?;
    let bias = if bias { Some(g.param(&format!("{prefix}.bias"), &[c_out])?) } else { None };
    g.conv2d(x, weight, bias, cfg)
}

/// The KernelDNA router (SE channel attention) named `prefix`, applied to `x`:
/// `x * sigmoid(fc2(relu(bn(fc1(mean_hw(x))))))`, fc1: C -> C / rd_ratio without bias,
/// fc2: back to C with bias. Parameter names follow the official `SE` module's
/// `nn.Sequential` (`prefix.fc1.weight`, `prefix.bn.*`, `prefix.fc2.weight`, `prefix.fc2.bias`),
/// with torch's [out, in, 1, 1] 1x1-conv weight shapes.
pub fn router(g: &mut Graph, x: TensorId, prefix: &str, rd_ratio: usize) -> Result<TensorId> {
    let c = g.shape(x)[1];
    let rd = c / rd_ratio;
    anyhow::ensure!(rd > 0, "router {prefix}: {c} channels / ratio {rd_ratio} leaves no hidden units");
    let fc1 = g.param(&format!("{prefix}.fc1.weight"), &[rd, c, 1, 1])?;
    let fc2 = g.param(&format!("{prefix}.fc2.weight"), &[c, rd, 1, 1])?;
    let fc2_bias = g.param(&format!("{prefix}.fc2.bias"), &[c])?;
    let pooled = g.global_avgpool(x)?;
    let hidden = g.linear(pooled, fc1, None)?;
    let hidden = batchnorm(g, hidden, &format!("{prefix}.bn"))?;
    let hidden = g.relu(hidden);
    let logits = g.linear(hidden, fc2, Some(fc2_bias))?;
    let gate = g.sigmoid(logits);
    g.channel_scale(x, gate)
}
