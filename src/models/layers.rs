//! The building blocks of every network, each adding its parameters under torch's names and
//! with torch's initial distributions.

use anyhow::Result;

use crate::graph::{Graph, Init, TensorId};
use crate::ops::conv2d::{Conv2dConfig, OutputActivation};

/// Joins state-dict key parts: `key("layer3", "conv1") == "layer3.conv1"`, `key("", "conv1") == "conv1"`.
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// How conv weights start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvInit {
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, as torchvision's ResNet and
    /// MobileNetV2 (and the KernelDNA ResNet18 stages) initialise their convs.
    KaimingFanOut,
    /// torch.nn.Conv2d's own default, `kaiming_uniform_(a=sqrt(5))`: U(±1/sqrt(fan_in)).
    TorchDefault,
}

impl ConvInit {
    fn weight(self, shape: &[usize]) -> Init {
        let receptive: usize = shape[2..].iter().product();
        match self {
            ConvInit::KaimingFanOut => Init::Normal((2.0 / (shape[0] * receptive) as f32).sqrt()),
            ConvInit::TorchDefault => Init::Uniform(1.0 / ((shape[1] * receptive) as f32).sqrt()),
        }
    }
}

/// torch's default bias init for a layer with `fan_in` inputs per output: U(±1/sqrt(fan_in)).
pub fn default_bias(fan_in: usize) -> Init {
    Init::Uniform(1.0 / (fan_in as f32).sqrt())
}

/// A conv weight parameter `name` ([c_out, c_in / groups, kernel, kernel]).
pub fn conv_weight(
    g: &mut Graph,
    name: &str,
    c_out: usize,
    c_in_per_group: usize,
    kernel: usize,
    init: ConvInit,
) -> Result<TensorId> {
    let shape = [c_out, c_in_per_group, kernel, kernel];
    g.param_init(name, &shape, init.weight(&shape))
}

/// nn.Conv2d named `prefix` (`prefix.weight`, and `prefix.bias` when `bias`).
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    g: &mut Graph,
    x: TensorId,
    prefix: &str,
    c_out: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    bias: bool,
    init: ConvInit,
) -> Result<TensorId> {
    let c_in = g.shape(x)[1];
    let weight = conv_weight(g, &key(prefix, "weight"), c_out, c_in / cfg.groups, kernel, init)?;
    let fan_in = c_in / cfg.groups * kernel * kernel;
    let bias = if bias { Some(g.param_init(&key(prefix, "bias"), &[c_out], default_bias(fan_in))?) } else { None };
    g.conv2d(x, weight, bias, cfg)
}

/// nn.BatchNorm2d (or BatchNorm1d on [N, C]) named `prefix`: `prefix.weight` (ones),
/// `prefix.bias` (zeros), `prefix.running_mean` (zeros), `prefix.running_var` (ones);
/// eps 1e-5, momentum 0.1.
pub fn batchnorm(g: &mut Graph, x: TensorId, prefix: &str) -> Result<TensorId> {
    batchnorm_act(g, x, prefix, OutputActivation::None)
}

/// [`batchnorm`] then `activation` (relu or relu6), in one node.
pub fn batchnorm_act(g: &mut Graph, x: TensorId, prefix: &str, activation: OutputActivation) -> Result<TensorId> {
    let c = g.shape(x)[1];
    let weight = g.param_init(&key(prefix, "weight"), &[c], Init::Ones)?;
    let bias = g.param_init(&key(prefix, "bias"), &[c], Init::Zeros)?;
    let mean = g.state(&key(prefix, "running_mean"), &[c], Init::Zeros)?;
    let var = g.state(&key(prefix, "running_var"), &[c], Init::Ones)?;
    g.batchnorm_activated(x, [weight, bias, mean, var], 1e-5, 0.1, activation)
}

/// A bias-free conv named `conv`, then a BatchNorm named `bn`, then `activation` (none, relu or
/// relu6: the BatchNorm applies it).
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    g: &mut Graph,
    x: TensorId,
    [conv, bn]: [&str; 2],
    c_out: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    init: ConvInit,
    activation: OutputActivation,
) -> Result<TensorId> {
    let y = conv2d(g, x, conv, c_out, kernel, cfg, false, init)?;
    batchnorm_act(g, y, bn, activation)
}

/// How a fully connected layer starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinearInit {
    /// torch.nn.Linear's default: weight and bias U(±1/sqrt(fan_in)) (torchvision's ResNet head).
    TorchDefault,
    /// Weight N(0, std), bias zero (torchvision's MobileNetV2 head: std 0.01).
    Normal(f32),
}

/// nn.Linear named `prefix` on [N, in].
pub fn linear(g: &mut Graph, x: TensorId, prefix: &str, out: usize, init: LinearInit) -> Result<TensorId> {
    let fan_in = g.shape(x)[1];
    let (w_init, b_init) = match init {
        LinearInit::TorchDefault => (default_bias(fan_in), default_bias(fan_in)),
        LinearInit::Normal(std) => (Init::Normal(std), Init::Zeros),
    };
    let weight = g.param_init(&key(prefix, "weight"), &[out, fan_in], w_init)?;
    let bias = g.param_init(&key(prefix, "bias"), &[out], b_init)?;
    g.linear(x, weight, Some(bias))
}

/// The KernelDNA router (SE channel attention) named `prefix`, applied to `x`:
/// `x * sigmoid(fc2(relu(bn(fc1(mean_hw(x))))))`, fc1: C -> C / rd_ratio (rounded down) without
/// bias, fc2: back to C with bias. Parameter names follow the official `SE` module's
/// `nn.Sequential` (`prefix.fc1.weight`, `prefix.bn.*`, `prefix.fc2.weight`, `prefix.fc2.bias`),
/// with torch's [out, in, 1, 1] 1x1-conv weight shapes; `init` is how the two 1x1 convs start.
pub fn router(g: &mut Graph, x: TensorId, prefix: &str, rd_ratio: usize, init: ConvInit) -> Result<TensorId> {
    let c = g.shape(x)[1];
    let rd = c / rd_ratio;
    anyhow::ensure!(rd > 0, "router {prefix}: {c} channels / ratio {rd_ratio} leaves no hidden units");
    let fc1 = conv_weight(g, &key(prefix, "fc1.weight"), rd, c, 1, init)?;
    let fc2 = conv_weight(g, &key(prefix, "fc2.weight"), c, rd, 1, init)?;
    let fc2_bias = g.param_init(&key(prefix, "fc2.bias"), &[c], default_bias(rd))?;
    let pooled = g.global_avgpool(x)?;
    let hidden = g.linear(pooled, fc1, None)?;
    let hidden = batchnorm_act(g, hidden, &key(prefix, "bn"), OutputActivation::Relu)?;
    let logits = g.linear(hidden, fc2, Some(fc2_bias))?;
    let gate = g.sigmoid(logits);
    g.channel_scale(x, gate)
}
