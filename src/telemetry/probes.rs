//! What telemetry watches in a network: its routers (the gate each computes per image) and
//! its children (kernels modulated from a parent), found from the graph's structure, and the
//! statistics of a child computed on the host from its parent and attentions.

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, Role, TensorId};
use crate::ops::modulate::Modulate;

/// Energy maps are summed over blocks of ceil(C / this) channels along each side, so neither
/// side exceeds this (energy is additive, so a block's value is exact: the sum over its channels).
pub const MAX_ENERGY_CELLS: usize = 64;

/// A router of the network, as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterInfo {
    /// State-dict prefix (`layer3.se.0.se`).
    pub name: String,
    /// The stage it belongs to (`layer3`, `features.6`).
    pub stage: String,
    pub channels: usize,
    /// The child whose conv reads the gated input, if any.
    pub gates: Option<String>,
}

/// A child kernel, as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// `<parent prefix>/child<row>` (`layer3.conv2/child1`).
    pub name: String,
    /// The parent's state-dict key (`layer3.conv2.weight`).
    pub parent: String,
    pub stage: String,
    /// Its row of the attention tensors.
    pub row: usize,
    pub c_out: usize,
    pub c_in: usize,
    pub kh: usize,
    pub kw: usize,
    /// Whether it has a spatial attention (ResNet children do).
    pub spatial: bool,
    /// Channels per energy-map cell along (outputs, inputs).
    pub cell: [usize; 2],
}

impl ChildInfo {
    /// Rows and columns of its energy maps.
    pub fn cells(&self) -> [usize; 2] {
        [self.c_out.div_ceil(self.cell[0]), self.c_in.div_ceil(self.cell[1])]
    }
}

/// A router and the tensor holding its gate ([N, C]) in one graph.
#[derive(Clone, Debug)]
pub struct RouterProbe {
    pub info: RouterInfo,
    pub gate: TensorId,
}

/// A child and the parameters it is computed from.
#[derive(Clone, Debug)]
pub struct ChildProbe {
    pub info: ChildInfo,
    pub parent: TensorId,
    pub spatial: Option<TensorId>,
    pub filter: TensorId,
}

/// The stage of a state-dict key: its first part, with the index that follows (`features.6`).
pub fn stage_of(name: &str) -> String {
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        Some(index) if index.chars().all(|c| c.is_ascii_digit()) => format!("{first}.{index}"),
        _ => first.to_string(),
    }
}

/// The node producing `t`, if an op does.
fn producer(graph: &Graph, t: TensorId) -> Option<usize> {
    graph.nodes.iter().position(|n| n.outputs.contains(&t))
}

/// Routers and children of `graph`, in graph order. A router is a `channel_scale` whose gate
/// is a sigmoid of a linear layer with parameter `<name>.fc2.weight`; a child is an output of
/// a `modulate` node.
pub fn discover(graph: &Graph) -> (Vec<RouterProbe>, Vec<ChildProbe>) {
    let mut children = Vec::new();
    let mut child_of = std::collections::HashMap::new();
    for node in &graph.nodes {
        let Some(m) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
        let parent = node.inputs[0];
        let pshape = graph.shape(parent);
        let parent_name = graph.info(parent).name.clone();
        let prefix = parent_name.strip_suffix(".weight").unwrap_or(&parent_name).to_string();
        let (kh, kw) = if pshape.len() == 4 { (pshape[2], pshape[3]) } else { (1, 1) };
        let c_in = pshape.get(1).copied().unwrap_or(1);
        let cell = |c: usize| c.div_ceil(MAX_ENERGY_CELLS).max(1);
        for (k, &out) in node.outputs.iter().enumerate() {
            let row = m.first_child + k;
            let info = ChildInfo {
                name: format!("{prefix}/child{row}"),
                parent: parent_name.clone(),
                stage: stage_of(&parent_name),
                row,
                c_out: m.c_out,
                c_in,
                kh,
                kw,
                spatial: m.has_spatial,
                cell: [cell(m.c_out), cell(c_in)],
            };
            child_of.insert(out, info.name.clone());
            children.push(ChildProbe {
                info,
                parent,
                spatial: m.has_spatial.then_some(node.inputs[1]),
                filter: node.inputs[2],
            });
        }
    }
    let mut routers = Vec::new();
    for node in graph.nodes.iter().filter(|n| n.op.name() == "channel_scale") {
        let gate = node.inputs[1];
        let Some(sigmoid) = producer(graph, gate) else { continue };
        let Some(linear) = producer(graph, graph.nodes[sigmoid].inputs[0]) else { continue };
        let Some(fc2) = graph.nodes[linear]
            .inputs
            .iter()
            .map(|&t| graph.info(t))
            .find(|t| t.role == Role::Param && t.name.ends_with(".fc2.weight"))
        else {
            continue;
        };
        let name = fc2.name.trim_end_matches(".fc2.weight").to_string();
        let gated = node.outputs[0];
        let gates = graph
            .nodes
            .iter()
            .find(|n| n.op.name() == "conv2d" && n.inputs[0] == gated)
            .and_then(|conv| child_of.get(&conv.inputs[1]).cloned());
        let channels = graph.shape(gate)[1];
        routers.push(RouterProbe { info: RouterInfo { stage: stage_of(&name), name, channels, gates }, gate });
    }
    (routers, children)
}

/// How a child differs from its parent at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildStats {
    /// Child energy (sum of squared weights) per cell of (output, input) channels, row-major.
    pub energy: Vec<f32>,
    /// Energy of child minus parent, per cell.
    pub delta: Vec<f32>,
    /// Child energy per tap ([kh, kw], row-major).
    pub taps: Vec<f32>,
    /// Cosine similarity of the whole child kernel to its parent.
    pub cosine: f32,
}

/// The statistics of child `info` from its parent (`[c_out, c_in, kh, kw]`), its spatial
/// attention row (kh * kw values) if it has one, and its filter attention row (c_out values):
/// `child = parent * (1 + spatial[tap]) * (1 + filter[out])`, computed whole (the network
/// itself computes only the taps its convs read). Accumulates in f64.
pub fn child_stats(info: &ChildInfo, parent: &[f32], spatial: Option<&[f32]>, filter: &[f32]) -> ChildStats {
    let taps = info.kh * info.kw;
    let [rows, cols] = info.cells();
    let mut energy = vec![0.0f64; rows * cols];
    let mut delta = vec![0.0f64; rows * cols];
    let mut tap_energy = vec![0.0f64; taps];
    let (mut dot, mut child_sq, mut parent_sq) = (0.0f64, 0.0f64, 0.0f64);
    for o in 0..info.c_out {
        let f = 1.0 + filter[o] as f64;
        for i in 0..info.c_in {
            let cell = (o / info.cell[0]) * cols + i / info.cell[1];
            let weights = &parent[(o * info.c_in + i) * taps..][..taps];
            for (t, &p) in weights.iter().enumerate() {
                let p = p as f64;
                let s = spatial.map_or(1.0, |s| 1.0 + s[t] as f64);
                let c = p * s * f;
                energy[cell] += c * c;
                delta[cell] += (c - p) * (c - p);
                tap_energy[t] += c * c;
                dot += c * p;
                child_sq += c * c;
                parent_sq += p * p;
            }
        }
    }
    let norms = (child_sq * parent_sq).sqrt();
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    ChildStats {
        energy: to_f32(energy),
        delta: to_f32(delta),
        taps: to_f32(tap_energy),
        cosine: if norms > 0.0 { (dot / norms) as f32 } else { 1.0 },
    }
}

/// Per-channel mean and standard deviation (population) of gates `[n, c]` over the batch.
pub fn gate_spread(gates: &[f32], channels: usize) -> (Vec<f32>, Vec<f32>) {
    let n = gates.len() / channels.max(1);
    let mut mean = vec![0.0f64; channels];
    let mut sq = vec![0.0f64; channels];
    for row in gates.chunks_exact(channels) {
        for (c, &g) in row.iter().enumerate() {
            mean[c] += g as f64;
            sq[c] += (g as f64) * (g as f64);
        }
    }
    let n = n.max(1) as f64;
    let mean: Vec<f64> = mean.into_iter().map(|m| m / n).collect();
    let std = sq.iter().zip(&mean).map(|(s, m)| ((s / n - m * m).max(0.0)).sqrt() as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}
