//! Inference folding: an eval-only copy of a graph in which child kernels are constants
//! computed once, every BatchNorm or layer scale that only follows a conv or linear layer is
//! folded into that layer's weight and bias, a residual add (with its relu) that only follows such a
//! folded conv and an activation (relu, relu6, sigmoid, GELU: the BatchNorm's own, or one that
//! only follows) are applied as the layer stores its output, and a router's gate (`channel_scale`)
//! whose only consumer is a GEMM conv is applied as that conv copies its input; a router's
//! pool and projections become one op ([`RouterGate`]). Same outputs as eval mode, fewer
//! dispatches.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};

use super::{Graph, Node, Role, TensorId};
use crate::io::{HostTensor, StateDict};
use crate::ops::activation::{Activation, ActivationOp, Add};
use crate::ops::batchnorm::BatchNorm;
use crate::ops::channel_scale::ChannelScale;
use crate::ops::conv2d::{Conv2d, ConvKernel, Fusion, OutputActivation};
use crate::ops::layer_scale::LayerScale;
use crate::ops::linear::Linear;
use crate::ops::modulate::Modulate;
use crate::ops::pool::GlobalAvgPool;
use crate::ops::router::RouterGate;

/// The folded graph, its weights, and where the original graph's tensors went.
pub struct Folded {
    pub graph: Graph,
    pub weights: StateDict,
    /// Original tensor -> folded tensor, for inputs, labels and every surviving activation.
    pub tensors: HashMap<TensorId, TensorId>,
}

/// Folds `graph` with the weights in `values` (parameters and running statistics by name).
pub fn fold(graph: &Graph, values: &StateDict) -> Result<Folded> {
    let value = |t: TensorId, known: &HashMap<TensorId, Vec<f32>>| -> Result<Vec<f32>> {
        if let Some(v) = known.get(&t) {
            return Ok(v.clone());
        }
        let name = &graph.info(t).name;
        Ok(values.floats.get(name).with_context(|| format!("no value for {name:?}"))?.data.clone())
    };
    let mut consumers = vec![0usize; graph.tensors.len()];
    for node in &graph.nodes {
        for t in &node.inputs {
            consumers[t.0] += 1;
        }
    }
    let mut g = Graph::new();
    let mut weights = BTreeMap::new();
    let mut map: HashMap<TensorId, TensorId> = HashMap::new();
    // Values of constants created here (child kernels), by original tensor.
    let mut constants: HashMap<TensorId, Vec<f32>> = HashMap::new();
    // Nodes that an earlier node absorbed (BatchNorms, activations).
    let mut absorbed = vec![false; graph.nodes.len()];
    // The one consumer of tensor `t`, if it has exactly one.
    let only_consumer =
        |t: TensorId| (consumers[t.0] == 1).then(|| graph.nodes.iter().position(|n| n.inputs.contains(&t))).flatten();
    // The activation node that alone follows tensor `t`, if a layer can apply it as it stores.
    let fusable_activation = |t: TensorId| {
        let r = only_consumer(t)?;
        Some((r, stored_activation(graph.nodes[r].op.as_any().downcast_ref::<ActivationOp>()?.kind)))
    };
    // Gated inputs: a channel_scale's output (original) -> (its input, its gate) (folded), for
    // the GEMM conv that alone consumes it.
    let mut gated: HashMap<TensorId, (TensorId, TensorId)> = HashMap::new();

    for (i, t) in graph.tensors.iter().enumerate() {
        match t.role {
            Role::Input => drop(map.insert(TensorId(i), g.input(&t.name, &t.shape))),
            Role::Labels => drop(map.insert(TensorId(i), g.labels(&t.name, t.shape[0]))),
            _ => {}
        }
    }
    for (n, node) in graph.nodes.iter().enumerate() {
        if absorbed[n] {
            continue;
        }
        let any = node.op.as_any();
        if let Some(m) = any.downcast_ref::<Modulate>() {
            // Children become constants: the same product, in the same order, as the kernel.
            let parent = value(node.inputs[0], &constants)?;
            let spatial = if m.has_spatial { Some(value(node.inputs[1], &constants)?) } else { None };
            let filter = value(node.inputs[2], &constants)?;
            for (c, &child) in node.outputs.iter().enumerate() {
                let k = m.first_child + c;
                let kernel: Vec<f32> = (0..parent.len())
                    .map(|e| {
                        let s = spatial.as_ref().map_or(1.0, |s| 1.0 + s[k * m.taps + (e % m.fan) % m.taps]);
                        parent[e] * s * (1.0 + filter[k * m.c_out + e / m.fan])
                    })
                    .collect();
                constants.insert(child, kernel);
            }
            continue;
        }
        // A gate whose only consumer is a GEMM conv (as its input) goes into that conv's copy.
        if any.is::<ChannelScale>()
            && let Some(c) = only_consumer(node.outputs[0])
            && graph.nodes[c].inputs[0] == node.outputs[0]
            && graph.nodes[c].op.as_any().downcast_ref::<Conv2d>().is_some_and(|c| c.shape.kernel() == ConvKernel::Gemm)
        {
            gated.insert(node.outputs[0], (map[&node.inputs[0]], map[&node.inputs[1]]));
            continue;
        }
        // A conv or linear layer whose only consumer is a BatchNorm, or a layer scale
        // (ConvNeXt's), absorbs it: a per-channel scale and shift of its weight and bias.
        let out = node.outputs[0];
        let scaling = only_consumer(out).filter(|&b| graph.nodes[b].inputs.first() == Some(&out)).filter(|&b| {
            let op = graph.nodes[b].op.as_any();
            op.is::<BatchNorm>() || op.is::<LayerScale>()
        });
        let layer_bias =
            any.downcast_ref::<Conv2d>().map(|c| c.has_bias).or(any.downcast_ref::<Linear>().map(|l| l.has_bias));
        if let (Some(b), Some(has_bias)) = (scaling, layer_bias) {
            let scaling_inputs = &graph.nodes[b].inputs;
            let w = value(node.inputs[1], &constants)?;
            let c_out = graph.shape(node.inputs[1])[0];
            let bias_in = if has_bias { value(node.inputs[2], &constants)? } else { vec![0.0; c_out] };
            // y = scale * (layer + bias_in - mean) + beta, and the activation the node applies.
            let (scale, shift, activation): (Vec<f32>, Vec<f32>, OutputActivation) =
                match graph.nodes[b].op.as_any().downcast_ref::<BatchNorm>() {
                    Some(bn) => {
                        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| value(scaling_inputs[i], &constants));
                        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
                        let scale: Vec<f32> = (0..c_out).map(|c| gamma[c] / (var[c] + bn.eps).sqrt()).collect();
                        let shift = (0..c_out).map(|c| beta[c] + (bias_in[c] - mean[c]) * scale[c]).collect();
                        (scale, shift, bn.activation)
                    }
                    None => {
                        let gamma = value(scaling_inputs[1], &constants)?;
                        let shift = (0..c_out).map(|c| bias_in[c] * gamma[c]).collect();
                        (gamma, shift, OutputActivation::None)
                    }
                };
            let per_out = w.len() / c_out;
            let folded_w: Vec<f32> = w.iter().enumerate().map(|(e, v)| v * scale[e / per_out]).collect();
            let folded_b = shift;
            let w_shape = graph.shape(node.inputs[1]).to_vec();
            let base = format!("folded.{n}");
            let w_id = g.param(&format!("{base}.weight"), &w_shape)?;
            let b_id = g.param(&format!("{base}.bias"), &[c_out])?;
            weights.insert(format!("{base}.weight"), HostTensor { shape: w_shape, data: folded_w });
            weights.insert(format!("{base}.bias"), HostTensor { shape: vec![c_out], data: folded_b });
            let (x, gate) = match gated.get(&node.inputs[0]) {
                Some(&(x, gate)) => (x, Some(gate)),
                None => (map[&node.inputs[0]], None),
            };
            let bn_out = graph.nodes[b].outputs[0];
            let bn_activation = activation;
            let (y, out) = match any.downcast_ref::<Conv2d>() {
                Some(conv) => {
                    // A residual add that only follows (its other input already computed: a
                    // block's identity or downsample), then a relu or relu6 that only follows,
                    // go into the conv's stores.
                    let mut out = bn_out;
                    let mut residual = None;
                    // A BatchNorm that applies its own activation leaves no add to take before it.
                    let mut activation = bn_activation;
                    if conv.shape.kernel() == ConvKernel::Gemm
                        && activation == OutputActivation::None
                        && let Some(a) = only_consumer(out)
                        && let Some(add) = graph.nodes[a].op.as_any().downcast_ref::<Add>()
                        && let [first, second] = graph.nodes[a].inputs[..]
                        && let Some(&other) = map.get(if first == out { &second } else { &first })
                        && first != second
                    {
                        residual = Some(other);
                        absorbed[a] = true;
                        out = graph.nodes[a].outputs[0];
                        // An add that applies its own activation leaves none to follow.
                        if let Some(kind) = add.activation {
                            activation = stored_activation(kind);
                        }
                    }
                    if activation == OutputActivation::None
                        && let Some((r, fused)) = fusable_activation(out)
                    {
                        activation = fused;
                        absorbed[r] = true;
                        out = graph.nodes[r].outputs[0];
                    }
                    let fused = Fusion { gate, residual, activation };
                    (g.conv2d_fused(x, w_id, Some(b_id), conv.shape.cfg, fused)?, out)
                }
                None if bn_activation != OutputActivation::None => {
                    (g.linear_fused(x, w_id, Some(b_id), bn_activation)?, bn_out)
                }
                None => match fusable_activation(bn_out) {
                    Some((r, activation)) => {
                        absorbed[r] = true;
                        (g.linear_fused(x, w_id, Some(b_id), activation)?, graph.nodes[r].outputs[0])
                    }
                    None => (g.linear(x, w_id, Some(b_id))?, bn_out),
                },
            };
            map.insert(out, y);
            absorbed[b] = true;
            continue;
        }
        // Anything else is copied, its parameters and states with it.
        let mut inputs = Vec::new();
        for &t in &node.inputs {
            if let Some(&mapped) = map.get(&t).or(gated.get(&t).map(|(x, _)| x)) {
                inputs.push(mapped);
                continue;
            }
            let info = graph.info(t);
            let name = if constants.contains_key(&t) { format!("constant.{}", t.0) } else { info.name.clone() };
            let id = match info.role {
                Role::State => g.state(&name, &info.shape, info.init)?,
                _ => g.param(&name, &info.shape)?,
            };
            weights.insert(name, HostTensor { shape: info.shape.clone(), data: value(t, &constants)? });
            map.insert(t, id);
            inputs.push(id);
        }
        // A gated conv takes the gate's input and the gate; a conv or linear layer that alone
        // feeds an activation applies it.
        let mut op = node.op.boxed_clone();
        let mut outputs_of = node.outputs.clone();
        let mut absorb_activation = |activation: &mut OutputActivation| {
            if let Some((r, fused)) = fusable_activation(out)
                && *activation == OutputActivation::None
            {
                *activation = fused;
                absorbed[r] = true;
                outputs_of = graph.nodes[r].outputs.clone();
            }
        };
        if let Some(conv) = any.downcast_ref::<Conv2d>() {
            let mut conv = conv.clone();
            if let Some(&(_, gate)) = gated.get(&node.inputs[0]) {
                inputs.push(gate);
                conv.has_gate = true;
            }
            absorb_activation(&mut conv.activation);
            op = Box::new(conv);
        }
        if let Some(linear) = any.downcast_ref::<Linear>() {
            let mut linear = *linear;
            absorb_activation(&mut linear.activation);
            op = Box::new(linear);
        }
        let shapes: Vec<Vec<usize>> = outputs_of.iter().map(|&t| graph.shape(t).to_vec()).collect();
        let outputs = g.push_boxed(op, &inputs, &shapes);
        for (&old, new) in outputs_of.iter().zip(outputs) {
            map.insert(old, new);
        }
    }
    fuse_routers(&mut g);
    let counters = weights
        .keys()
        .filter_map(|k| k.strip_suffix("running_mean"))
        .map(|bn| (format!("{bn}num_batches_tracked"), 0))
        .collect();
    Ok(Folded { graph: g, weights: StateDict { floats: weights, counters }, tensors: map })
}

/// Makes each router of the folded `g` one [`RouterGate`] node: a global average pool whose
/// only reader is a linear layer storing relu (fc1, its BatchNorm folded in), whose only reader
/// is a linear layer storing sigmoid (fc2). The node keeps the three tensors, so every tensor
/// of the folded graph is still computed, with the same values.
fn fuse_routers(g: &mut Graph) {
    let readers = super::fuse::consumers(g);
    // The linear layer that alone reads `t`, as its input, storing `activation` after a bias.
    let sole_linear = |t: TensorId, activation: OutputActivation| {
        let [n] = readers[t.0][..] else { return None };
        let linear = g.nodes[n].op.as_any().downcast_ref::<Linear>()?;
        (g.nodes[n].inputs[0] == t && linear.activation == activation && linear.has_bias).then_some(n)
    };
    let mut fused = Vec::new();
    for (p, node) in g.nodes.iter().enumerate() {
        if !node.op.as_any().is::<GlobalAvgPool>() {
            continue;
        }
        let Some(fc1) = sole_linear(node.outputs[0], OutputActivation::Relu) else { continue };
        let Some(fc2) = sole_linear(g.nodes[fc1].outputs[0], OutputActivation::Sigmoid) else { continue };
        fused.push((p, fc1, fc2));
    }
    for &(p, fc1, fc2) in &fused {
        let x = g.nodes[p].inputs[0];
        let [w1, b1] = [1, 2].map(|i| g.nodes[fc1].inputs[i]);
        let [w2, b2] = [1, 2].map(|i| g.nodes[fc2].inputs[i]);
        let &[batch, channels, h, w] = g.shape(x) else { unreachable!("a global average pool's input is NCHW") };
        let op = RouterGate { batch, channels, hidden: g.shape(b1)[0], spatial: h * w };
        let outputs = [p, fc1, fc2].map(|n| g.nodes[n].outputs[0]).to_vec();
        g.nodes[p] = Node { op: Box::new(op), inputs: vec![x, w1, b1, w2, b2], outputs };
    }
    let gone: Vec<usize> = fused.iter().flat_map(|&(_, fc1, fc2)| [fc1, fc2]).collect();
    let nodes = std::mem::take(&mut g.nodes);
    g.nodes = nodes.into_iter().enumerate().filter(|(n, _)| !gone.contains(n)).map(|(_, node)| node).collect();
}

/// The activation a layer applies as it stores its output for `kind`.
fn stored_activation(kind: Activation) -> OutputActivation {
    match kind {
        Activation::Relu => OutputActivation::Relu,
        Activation::Relu6 => OutputActivation::Relu6,
        Activation::Sigmoid => OutputActivation::Sigmoid,
        Activation::Gelu => OutputActivation::Gelu,
    }
}
