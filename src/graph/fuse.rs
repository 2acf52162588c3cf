//! Rewrites the executor makes to the graph it plans, for the device it plans on. Values and
//! gradients are those of the graph as built, bit for bit; fewer dispatches and less traffic.
//!
//! A KernelDNA child whose one consumer is a GEMM convolution that packs its weight by quads
//! ([`GemmPlan::packs_child`]) is packed straight from its parent: the modulation leaves that
//! child's tensor unwritten ([`Modulate::packed_by_consumer`]) and the convolution reads the
//! parent and attentions ([`Conv2d::child`]), multiplying as it packs. That spares storing the
//! child and loading it back, twice its size in traffic, every time the parent changes.

use super::{Graph, TensorId};
use crate::gpu::Gpu;
use crate::ops::conv_gemm::GemmPlan;
use crate::ops::conv2d::{Conv2d, ConvKernel};
use crate::ops::modulate::Modulate;

/// Spatial taps of the children a convolution packs from their parent (3x3 kernels).
const CHILD_TAPS: usize = 9;

/// `graph` with its children packed by their consumers where the plan on `gpu` allows it, and
/// the children so packed (never stored); `keep` lists tensors whose values the caller reads.
pub fn pack_children(graph: &Graph, gpu: &Gpu, keep: &[TensorId]) -> (Graph, Vec<TensorId>) {
    let mut packed = Vec::new();
    let mut out = graph.clone();
    let mut consumers = vec![Vec::new(); graph.tensors.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            consumers[t.0].push(n);
        }
    }
    for (m, node) in graph.nodes.iter().enumerate() {
        let Some(modulate) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
        if !(modulate.has_spatial && modulate.taps == CHILD_TAPS) || modulate.children > 32 {
            continue;
        }
        for (c, &child) in node.outputs.iter().enumerate() {
            let [consumer] = consumers[child.0][..] else { continue };
            let reader = &graph.nodes[consumer];
            let Some(conv) = reader.op.as_any().downcast_ref::<Conv2d>() else { continue };
            let packs = reader.inputs[1] == child
                && reader.inputs.iter().filter(|&&t| t == child).count() == 1
                && conv.shape.kernel() == ConvKernel::Gemm
                && !(conv.has_gate || conv.has_residual)
                && conv.child.is_none()
                && !keep.contains(&child)
                && GemmPlan::for_device(&conv.shape, gpu).packs_child();
            if !packs {
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
