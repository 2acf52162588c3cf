//! Rewrites the executor makes to the graph it plans, for the device it plans on: fewer
//! dispatches and less traffic. The first five leave values and gradients those of the graph as
//! built, bit for bit; each spares storing a tensor whose one consumer is a GEMM convolution,
//! and loading it back (or packing it):
//!
//! - [`pack_children`]: a KernelDNA child whose convolution packs its weight by quads
//!   ([`GemmPlan::packs_child`]) is packed straight from its parent: the modulation leaves that
//!   child's tensor unwritten ([`Modulate::packed_by_consumer`]) and the convolution reads the
//!   parent and attentions ([`Conv2d::child`]), multiplying as it packs, every time the parent
//!   changes.
//! - [`share_parent_packings`]: where a parent's own convolution and its children's run one
//!   plan whose tiles can modulate as they load ([`GemmPlan::runs_child_over_parent_packing`]),
//!   the parent's convolution packs into a buffer the children's read ([`Conv2d::shared_packing`]):
//!   the children are never packed at all, their tiles multiplying each weight by the child's
//!   attentions as they load it (the products packing makes, rounded alike).
//! - [`gate_in_copies`]: a router's gated input (`channel_scale`) is computed by the
//!   convolution as it copies its input to channels-last ([`Conv2d::gates_input`]), as inference
//!   folding does, but in training too: the router's backward pass never reads it.
//! - [`unreduced_child_gradients`]: the other way, a child's gradient stays as its
//!   convolution's weight-gradient passes sum it ([`Conv2d::dw_unreduced`]), and the
//!   modulation's backward pass reads that layout ([`Modulate::dchild_strides`]): no reduction
//!   pass stores it in the weight's layout for one reader to load back.
//! - [`unreduced_parent_gradients`]: likewise the parent's own conv's weight gradient, which
//!   the modulation takes as the start of the parent's gradient.
//!
//! - [`fold_columns`]: a convolution over an input with no gradient whose few channels leave
//!   most of each input quad empty (a stem over 3 channels) folds its kernel's columns into its
//!   channels as it copies the input ([`GemmPlan::folding_columns`]): the same products, fewer
//!   of them padding, and longer loops over fewer taps. Its sums group differently, so unlike
//!   the rewrites above it changes the stem's values by rounding (it is fixed by the graph, so
//!   seeded runs stay bit-identical from one run to the next).
//!
//! The tensors so spared still have buffers (their gradients are as before); reading one is an
//! error ([`super::Executor::read`]), as is reading an unreduced gradient.

use super::{Graph, Role, TensorId};
use crate::gpu::Gpu;
use crate::ops::channel_scale::ChannelScale;
use crate::ops::conv_gemm::GemmPlan;
use crate::ops::conv2d::{Conv2d, ConvKernel, SharedPacking};
use crate::ops::modulate::Modulate;

/// Spatial taps of the children a convolution packs from their parent (3x3 kernels).
const CHILD_TAPS: usize = 9;

/// A graph with every rewrite made.
pub struct Fused {
    pub graph: Graph,
    /// Tensors never stored.
    pub unstored: Vec<TensorId>,
    /// Tensors whose gradients are left in their conv's unreduced layout.
    pub unreduced_grads: Vec<TensorId>,
}

/// Every rewrite; `keep` lists tensors whose values or gradients the caller reads, and
/// `input_grads` says whether the graph's inputs are differentiated.
pub fn fuse(graph: &Graph, gpu: &Gpu, keep: &[TensorId], input_grads: bool) -> Fused {
    let (packed, mut unstored) = pack_children(graph, gpu, keep);
    let (gated, gated_inputs) = gate_in_copies(&packed, keep);
    unstored.extend(gated_inputs);
    let shared = share_parent_packings(&gated, gpu);
    let (children, unreduced_grads) = unreduced_child_gradients(&shared, gpu, keep);
    let parents = unreduced_parent_gradients(&children, gpu, keep);
    let graph = if input_grads { parents } else { fold_columns(&parents) };
    Fused { graph, unstored, unreduced_grads }
}

/// The nodes that read each tensor (once per input naming it).
pub(super) fn consumers(graph: &Graph) -> Vec<Vec<usize>> {
    let mut consumers = vec![Vec::new(); graph.tensors.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            consumers[t.0].push(n);
        }
    }
    consumers
}

/// The convolution that alone reads `t`, as its input `input` and nowhere else, if there is one
/// (a GEMM convolution without eval-only fusions).
fn sole_conv_reader<'g>(
    graph: &'g Graph,
    consumers: &[Vec<usize>],
    t: TensorId,
    input: usize,
) -> Option<(usize, &'g Conv2d)> {
    let [n] = consumers[t.0][..] else { return None };
    let node = &graph.nodes[n];
    let conv = node.op.as_any().downcast_ref::<Conv2d>()?;
    (plain_gemm(conv) && node.inputs.get(input) == Some(&t)).then_some((n, conv))
}

/// A GEMM convolution without eval-only fusions.
fn plain_gemm(conv: &Conv2d) -> bool {
    conv.shape.kernel() == ConvKernel::Gemm && !(conv.has_gate || conv.has_residual)
}

/// `graph` with its children packed by their consumers where the plan on `gpu` allows it, and
/// the children so packed (never stored); `keep` lists tensors whose values the caller reads.
pub fn pack_children(graph: &Graph, gpu: &Gpu, keep: &[TensorId]) -> (Graph, Vec<TensorId>) {
    let mut packed = Vec::new();
    let mut out = graph.clone();
    let consumers = consumers(graph);
    for (m, node) in graph.nodes.iter().enumerate() {
        let Some(modulate) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
        if !(modulate.has_spatial && modulate.taps == CHILD_TAPS) || modulate.children > 32 {
            continue;
        }
        for (c, &child) in node.outputs.iter().enumerate() {
            let Some((consumer, conv)) = sole_conv_reader(graph, &consumers, child, 1) else { continue };
            if keep.contains(&child) || !GemmPlan::for_device(&conv.shape, gpu).packs_child() {
                continue;
            }
            let conv = Conv2d { child: Some(modulate.first_child + c), ..conv.clone() };
            out.nodes[consumer].op = Box::new(conv);
            // Parent, spatial attention, filter attention: the modulation's inputs.
            out.nodes[consumer].inputs.extend_from_slice(&node.inputs);
            let fused = out.nodes[m].op.as_any_mut().downcast_mut::<Modulate>().expect("a modulation");
            fused.packed_by_consumer |= 1 << c;
            packed.push(child);
        }
    }
    (out, packed)
}

/// `graph` with each KernelDNA parent's packings shared by its own convolution and its packed
/// children's ([`pack_children`]) where all run one plan on `gpu` that
/// [`GemmPlan::runs_child_over_parent_packing`]: a buffer tensor `<parent>.packed` that the
/// parent's convolution packs into and the children's read ([`Conv2d::shared_packing`]).
pub fn share_parent_packings(graph: &Graph, gpu: &Gpu) -> Graph {
    let mut out = graph.clone();
    let consumers = consumers(graph);
    let mut parents: Vec<TensorId> = graph
        .nodes
        .iter()
        .filter(|n| n.op.as_any().downcast_ref::<Modulate>().is_some())
        .map(|n| n.inputs[0])
        .collect();
    parents.sort_by_key(|t| t.0);
    parents.dedup();
    let conv = |n: usize| graph.nodes[n].op.as_any().downcast_ref::<Conv2d>();
    for parent in parents {
        let mut readers: Vec<usize> = consumers[parent.0].clone();
        readers.dedup();
        // The parent's own convolution (its weight is the parent), and its children's
        // (the parent follows their other inputs).
        let own = readers.iter().copied().find(|&n| {
            conv(n).is_some_and(|c| c.child.is_none() && plain_gemm(c) && graph.nodes[n].inputs[1] == parent)
        });
        let Some(own) = own else { continue };
        let own_conv = conv(own).expect("a convolution");
        let plan = GemmPlan::for_device(&own_conv.shape, gpu);
        if own_conv.fold_columns || own_conv.shared_packing.is_some() || !plan.runs_child_over_parent_packing() {
            continue;
        }
        let children: Vec<usize> = readers
            .iter()
            .copied()
            .filter(|&n| {
                conv(n).is_some_and(|c| {
                    let is_child = c.child.is_some() && graph.nodes[n].inputs.get(c.child_inputs()) == Some(&parent);
                    is_child && c.shape == own_conv.shape && !c.fold_columns && c.shared_packing.is_none()
                })
            })
            .collect();
        if children.is_empty() {
            continue;
        }
        let [forward, backward] = GemmPlan::shared_packing_sizes(&own_conv.shape);
        let name = format!("{}.packed", graph.info(parent).name);
        let buffer = out.tensor(name, &[forward + backward], Role::Activation);
        let roles =
            std::iter::once((own, SharedPacking::Writes)).chain(children.iter().map(|&c| (c, SharedPacking::Reads)));
        for (n, role) in roles {
            let conv = conv(n).expect("a convolution");
            // Nothing follows the buffer yet (a weight gradient's buffer comes later).
            assert_eq!(out.nodes[n].inputs.len(), conv.shared_packing_input(), "the shared packing's input");
            out.nodes[n].op = Box::new(Conv2d { shared_packing: Some(role), ..conv.clone() });
            out.nodes[n].inputs.push(buffer);
        }
    }
    out
}

/// `graph` with every router's gated input that a convolution alone reads computed by that
/// convolution's input copy, and those gated inputs (never stored); `keep` as above.
pub fn gate_in_copies(graph: &Graph, keep: &[TensorId]) -> (Graph, Vec<TensorId>) {
    let mut out = graph.clone();
    let mut gated = Vec::new();
    let consumers = consumers(graph);
    for (r, node) in graph.nodes.iter().enumerate() {
        let Some(router) = node.op.as_any().downcast_ref::<ChannelScale>() else { continue };
        let y = node.outputs[0];
        let Some((consumer, conv)) = sole_conv_reader(graph, &consumers, y, 0) else { continue };
        if keep.contains(&y) || conv.gates_input {
            continue;
        }
        out.nodes[consumer].op = Box::new(Conv2d { gates_input: true, ..conv.clone() });
        // The router's input and gate.
        out.nodes[consumer].inputs.extend_from_slice(&node.inputs);
        out.nodes[r].op = Box::new(ChannelScale { applied_by_consumer: true, ..*router });
        gated.push(y);
    }
    (out, gated)
}

/// `graph` with the gradients of children whose modulation sums them serially
/// (`Modulate::serial_blocks`) left as their convolutions' passes sum them, where every child
/// of the node has one such convolution and all leave the same layout
/// ([`GemmPlan::unreduced_weight_gradient`]); and those children.
pub fn unreduced_child_gradients(graph: &Graph, gpu: &Gpu, keep: &[TensorId]) -> (Graph, Vec<TensorId>) {
    let mut out = graph.clone();
    let mut unreduced = Vec::new();
    let consumers = consumers(graph);
    for (m, node) in graph.nodes.iter().enumerate() {
        let Some(modulate) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
        if !modulate.serial_blocks() || node.outputs.iter().any(|t| keep.contains(t)) {
            continue;
        }
        let convs: Option<Vec<(usize, &Conv2d)>> =
            node.outputs.iter().map(|&child| sole_conv_reader(graph, &consumers, child, 1)).collect();
        let Some(convs) = convs else { continue };
        let strides: Vec<_> =
            convs.iter().map(|(_, conv)| GemmPlan::for_device(&conv.shape, gpu).unreduced_weight_gradient()).collect();
        let Some(&Some(first)) = strides.first() else { continue };
        if strides.iter().any(|s| *s != Some(first)) {
            continue;
        }
        for &(n, conv) in &convs {
            out.nodes[n].op = Box::new(Conv2d { dw_unreduced: true, ..conv.clone() });
        }
        let fused = out.nodes[m].op.as_any_mut().downcast_mut::<Modulate>().expect("a modulation");
        fused.dchild_strides = Some(first);
        unreduced.extend_from_slice(&node.outputs);
    }
    (out, unreduced)
}

/// `graph` where a modulation whose children's gradients stay unreduced also takes its
/// parent's own conv's gradient unreduced: the parent is differentiated by that modulation and
/// one GEMM conv (as its weight) alone, the conv comes later (so its gradient is the parent's first),
/// and it leaves the children's layout. The conv writes into a buffer the rewrite adds
/// (`<parent>.unreduced_grad`, an input of both, [`Conv2d::dw_to_buffer`]); the modulation's
/// first serial pass starts the parent's gradient from it ([`Modulate::own_parent_gradient`])
/// and writes the whole gradient.
pub fn unreduced_parent_gradients(graph: &Graph, gpu: &Gpu, keep: &[TensorId]) -> Graph {
    let mut out = graph.clone();
    let consumers = consumers(graph);
    for (m, node) in graph.nodes.iter().enumerate() {
        let Some(modulate) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
        let Some(strides) = modulate.dchild_strides else { continue };
        let parent = node.inputs[0];
        // The nodes that differentiate the parent (children's convs read it too, to pack).
        let writers: Vec<usize> = consumers[parent.0]
            .iter()
            .copied()
            .filter(|&n| {
                let node = &graph.nodes[n];
                node.inputs.iter().enumerate().any(|(i, &t)| t == parent && node.op.differentiable(i))
            })
            .collect();
        let &[first, c] = &writers[..] else { continue };
        let reader = &graph.nodes[c];
        let Some(conv) = reader.op.as_any().downcast_ref::<Conv2d>() else { continue };
        let plain = plain_gemm(conv)
            && !(conv.dw_unreduced || conv.dw_to_buffer)
            && conv.child.is_none()
            && reader.inputs.iter().filter(|&&t| t == parent).count() == 1
            && reader.inputs[1] == parent;
        let layout = GemmPlan::for_device(&conv.shape, gpu).unreduced_weight_gradient();
        if first != m || c <= m || !plain || layout != Some(strides) || keep.contains(&parent) {
            continue;
        }
        let name = format!("{}.unreduced_grad", graph.info(parent).name);
        let buffer = out.tensor(name, &[graph.info(parent).numel()], Role::Activation);
        out.nodes[c].op = Box::new(Conv2d { dw_to_buffer: true, ..conv.clone() });
        out.nodes[c].inputs.push(buffer);
        let fused = out.nodes[m].op.as_any_mut().downcast_mut::<Modulate>().expect("a modulation");
        fused.own_parent_gradient = true;
        out.nodes[m].inputs.push(buffer);
    }
    out
}

/// `graph` with every plain GEMM convolution of a graph input (which has no gradient) that
/// [`GemmPlan::folds_columns`] folding its kernel's columns into its input channels.
pub fn fold_columns(graph: &Graph) -> Graph {
    let mut out = graph.clone();
    for (n, node) in graph.nodes.iter().enumerate() {
        let Some(conv) = node.op.as_any().downcast_ref::<Conv2d>() else { continue };
        let plain =
            plain_gemm(conv) && !(conv.gates_input || conv.dw_unreduced || conv.dw_to_buffer) && conv.child.is_none();
        if plain && graph.info(node.inputs[0]).role == Role::Input && GemmPlan::folds_columns(&conv.shape) {
            out.nodes[n].op = Box::new(Conv2d { fold_columns: true, ..conv.clone() });
        }
    }
    out
}
