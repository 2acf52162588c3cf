//! The networks, baseline and KernelDNA, built as graphs with PyTorch's state-dict names.

pub mod convnext;
pub mod layers;
pub mod mobilenet;
pub mod pretrained;
pub mod resnet;

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use crate::graph::{Graph, TensorId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    ResNet18,
    ResNet50,
    MobileNetV2,
    /// MobileNetV2 at width 0.5.
    MobileNetV2Half,
    ConvNeXtTiny,
}

impl Arch {
    pub const ALL: [Arch; 5] =
        [Arch::ResNet18, Arch::ResNet50, Arch::MobileNetV2, Arch::MobileNetV2Half, Arch::ConvNeXtTiny];

    /// The name `--arch` takes (the seed's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet50 => "resnet50",
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::MobileNetV2Half => "mobilenet_v2_1d2",
            Arch::ConvNeXtTiny => "convnext_tiny",
        }
    }

    /// Other spellings `--arch` takes (the seed's README writes `convNeXt-tiny`).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Arch::ConvNeXtTiny => &["convnext-tiny"],
            _ => &[],
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Arch> {
        let known =
            |a: &Arch| a.name().eq_ignore_ascii_case(s) || a.aliases().iter().any(|n| n.eq_ignore_ascii_case(s));
        match Arch::ALL.into_iter().find(known) {
            Some(a) => Ok(a),
            None => {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                bail!("unknown architecture {s:?}; kdna knows {}", names.join(", "))
            }
        }
    }
}

/// Which network: the architecture, KernelDNA or the torchvision baseline, the classes, and
/// the stochastic-depth probability of its last block (ConvNeXt; torchvision's linear schedule
/// gives earlier blocks less; 0 leaves it out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub kdna: bool,
    pub classes: usize,
    pub drop_path: f32,
}

/// A network's graph for one batch shape, and its interface tensors.
pub struct Network {
    pub graph: Graph,
    pub images: TensorId,
    pub labels: TensorId,
    pub logits: TensorId,
    /// [mean cross-entropy, correct top-1 count].
    pub loss: TensorId,
    /// Stochastic-depth masks to draw before each training step: (mask input [N], drop
    /// probability).
    pub drop_paths: Vec<(TensorId, f32)>,
}

/// Builds `spec` for batches of `batch` images of `res` x `res` pixels.
pub fn build(spec: ModelSpec, batch: usize, res: usize, label_smoothing: f32) -> Result<Network> {
    if spec.classes == 0 {
        bail!("a network needs at least one class");
    }
    let mut g = Graph::new();
    let images = g.input("images", &[batch, 3, res, res]);
    let labels = g.labels("labels", batch);
    let logits = match spec.arch {
        Arch::ResNet18 => resnet::resnet18(&mut g, images, spec.classes, spec.kdna)?,
        Arch::ResNet50 => resnet::resnet50(&mut g, images, spec.classes, spec.kdna)?,
        Arch::MobileNetV2 => mobilenet::mobilenet_v2(&mut g, images, spec.classes, 1.0, spec.kdna)?,
        Arch::MobileNetV2Half => mobilenet::mobilenet_v2(&mut g, images, spec.classes, 0.5, spec.kdna)?,
        Arch::ConvNeXtTiny => convnext::convnext_tiny(&mut g, images, spec.classes, spec.kdna, spec.drop_path)?,
    };
    let loss = g.cross_entropy(logits, labels, label_smoothing)?;
    let drop_paths = g
        .nodes
        .iter()
        .filter_map(|n| n.op.as_any().downcast_ref::<crate::ops::drop_path::DropPath>().map(|d| (n.inputs[1], d.p)))
        .collect();
    Ok(Network { graph: g, images, labels, logits, loss, drop_paths })
}

/// Number of trained parameters (buffers such as running statistics excluded), as
/// `sum(p.numel() for p in model.parameters())`.
pub fn parameter_count(g: &Graph) -> usize {
    g.params().map(|(_, t)| t.numel()).sum()
}

/// Multiply-accumulates of one forward pass per image: convolutions and fully connected
/// layers, router projections included (torchvision's model-table convention).
pub fn macs_per_image(net: &Network) -> u64 {
    let batch = net.graph.shape(net.images)[0] as u64;
    net.graph.nodes.iter().map(|n| n.op.macs()).sum::<u64>() / batch
}
