//! KernelDNA static modulation (`shaders/modulate.wgsl`): child kernels derived from a parent,
//! `child_k = parent * (1 + spatial[k]) * (1 + filter[k])`.
//!
//! One node makes several children of one parent, each its own tensor, from consecutive rows
//! of the attention tensors. Attention tensors keep torch's shapes: spatial `[R, 1, 1, kh, kw]`,
//! filter `[R, C_out, 1, 1, 1]` (or `[R, C_out, 1]`); a node may use some of the R rows, so one
//! attention tensor serves children of different parents (ResNet18's stages do this).
//!
//! Consumers say which taps they read ([`Op::taps_read`]): a conv on a 1x1 map reads only the
//! centre of a 3x3 kernel. Taps that no consumer reads are neither computed nor differentiated
//! (their gradients, which the consumers write as zeros, would add nothing), which spares
//! ResNet18's layer4 eight ninths of its modulation work at small resolutions.

use anyhow::{Result, bail};

use super::{Bound, Forward, GradTarget, Grads, Mode, Op, placeholder};
use crate::gpu::{Dispatch, Gpu, GpuSlice, grid};
use crate::graph::{Graph, TensorId, shape_error};

/// Taps of a 3x3 child (`TAPS_3X3` in modulate.wgsl), whose attention gradients come from one
/// pass and whose weights may go in 36-weight blocks.
const TAPS_3X3: usize = 9;
/// Most 36-weight blocks per output channel that the attention gradient sums in one
/// invocation (in order), not in a workgroup tree (`modulate_backward_attention_3x3_serial`):
/// every 3x3 conv of ResNet (at most 512 input channels, 128 blocks).
const SERIAL_MAX_BLOCKS: usize = 128;
/// Most weights per output channel that the filter gradient of a child without a spatial
/// attention sums in one invocation (`modulate_backward_filter_serial`): every pointwise conv
/// of ConvNeXt-T (3072 inputs) and MobileNetV2 (960).
const SERIAL_MAX_FAN: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Modulate {
    /// Rows of the attention tensors this node uses.
    pub first_child: usize,
    pub children: usize,
    /// Rows the attention tensors have.
    pub rows: usize,
    pub c_out: usize,
    /// Weights per output channel.
    pub fan: usize,
    /// Spatial taps (kh * kw); 1 for linear weights.
    pub taps: usize,
    pub has_spatial: bool,
    /// Taps some consumer reads, a bit per tap (row-major; kernels of at most 32 taps); `None`
    /// until a consumer joins the graph (then every tap is computed).
    pub live_taps: Option<u32>,
    /// Children (a bit per output) that their consumer packs straight from the parent
    /// ([`crate::graph::fuse`]): the forward pass leaves their tensors unwritten. Their
    /// gradients come back as every child's do.
    pub packed_by_consumer: u32,
    /// Every child's gradient arrives as its conv's weight gradient left it, unreduced
    /// ([`crate::ops::conv2d::Conv2d::dw_unreduced`]): [c_out][tap][input quad] vec4s, output
    /// channels and taps these many vec4s apart ([`crate::graph::fuse`]; 3x3 children whose
    /// gradients `serial_blocks` passes take).
    pub dchild_strides: Option<[usize; 2]>,
    /// The parent's own conv leaves its weight gradient unreduced, in the children's layout,
    /// in a buffer that follows the other inputs ([`crate::graph::fuse`]): the first serial
    /// pass starts the parent's gradient from it (`_own` kernels) rather than from the
    /// gradient buffer, which nothing else wrote.
    pub own_parent_gradient: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ModulateParams {
    children: u32,
    first_child: u32,
    c_out: u32,
    fan: u32,
    taps: u32,
    has_spatial: u32,
    accumulate: u32,
    /// Always 1.0 (see shaders/double_float.wgsl).
    one: f32,
    live_taps: u32,
    parent_accumulate: u32,
    /// `modulate_backward_3x3_serial_pair`: where the second child's partial sums begin, in
    /// double-float pairs.
    next_partials: u32,
    dchild_tap_major: u32,
    dchild_co_stride: u32,
    dchild_tap_stride: u32,
    _pad: u32,
}

impl Modulate {
    /// Parameters for the dispatch that makes child `k` (an attention row).
    fn params(&self, k: usize, accumulate: bool) -> ModulateParams {
        ModulateParams {
            children: 1,
            first_child: k as u32,
            c_out: self.c_out as u32,
            fan: self.fan as u32,
            taps: self.taps as u32,
            has_spatial: self.has_spatial as u32,
            accumulate: accumulate as u32,
            one: 1.0,
            live_taps: self.live(),
            parent_accumulate: 0,
            next_partials: (self.next_partials() / 2) as u32,
            dchild_tap_major: self.dchild_strides.is_some() as u32,
            dchild_co_stride: self.dchild_strides.map_or(0, |s| s[0] as u32),
            dchild_tap_stride: self.dchild_strides.map_or(0, |s| s[1] as u32),
            _pad: 0,
        }
    }

    /// The mask of every tap (all bits past 32 taps, where masks are not used).
    fn all_taps(&self) -> u32 {
        if self.taps >= 32 { u32::MAX } else { (1 << self.taps) - 1 }
    }

    /// The taps to compute.
    fn live(&self) -> u32 {
        self.live_taps.unwrap_or(self.all_taps())
    }

    /// Whether some taps go uncomputed (the `_live` kernels run).
    fn skips_taps(&self) -> bool {
        self.live() != self.all_taps()
    }

    /// The entry point of an elementwise kernel (`entry` or its four-wide `_quads` version,
    /// when four consecutive weights always share an output channel) and its invocations.
    fn elementwise(&self, entry: &'static str) -> (&'static str, usize) {
        let weights = self.c_out * self.fan;
        if self.skips_taps() {
            // One invocation per row of taps, computing the live ones.
            let live =
                if entry == "modulate_forward" { "modulate_forward_live" } else { "modulate_backward_parent_live" };
            return (live, weights / self.taps);
        }
        let blocks = self.runs_blocks();
        match (self.fan.is_multiple_of(4), entry) {
            (true, "modulate_forward") if blocks => ("modulate_forward_3x3", weights / (4 * TAPS_3X3)),
            (true, "modulate_backward_parent") if blocks => ("modulate_backward_parent_3x3", weights / (4 * TAPS_3X3)),
            (true, "modulate_forward") => ("modulate_forward_quads", weights / 4),
            (true, "modulate_backward_parent") => ("modulate_backward_parent_quads", weights / 4),
            _ => (entry, weights),
        }
    }

    /// Whether both attention gradients come from one pass (3x3 children with a spatial
    /// attention: `modulate_backward_attention_3x3`), when both are wanted.
    fn fused_attention(&self) -> bool {
        self.has_spatial && self.taps == TAPS_3X3
    }

    /// Whether the kernels take 36-weight blocks, nine vec4s per invocation: 3x3 children with a
    /// spatial attention whose input channels come in fours, every tap computed.
    fn runs_blocks(&self) -> bool {
        self.fused_attention() && !self.skips_taps() && self.fan.is_multiple_of(4 * TAPS_3X3)
    }

    /// Whether the fused attention gradient takes 36-weight blocks with one invocation per
    /// output channel: channels of at most SERIAL_MAX_BLOCKS blocks. The parent's gradient
    /// then comes from the same pass (`modulate_backward_3x3_serial`) where it is wanted too,
    /// two children to a pass where there are two or more (`_pair`: the parent loaded once,
    /// its gradient stored once).
    pub fn serial_blocks(&self) -> bool {
        self.runs_blocks() && self.fan / (4 * TAPS_3X3) <= SERIAL_MAX_BLOCKS
    }

    /// Whether the filter gradient sums each output channel's weights in one invocation, in
    /// order (`modulate_backward_filter_serial`): children without a spatial attention whose
    /// channels' weights come in fours, at most SERIAL_MAX_FAN of them. Else one workgroup per
    /// output channel sums them as a tree (`modulate_backward_filter`). By shape alone, as
    /// every kernel choice: the two sum in different orders.
    fn serial_filter(&self) -> bool {
        !self.has_spatial && self.fan.is_multiple_of(4) && self.fan <= SERIAL_MAX_FAN
    }

    /// The fused attention gradient's kernel and grid: one workgroup per output channel, or
    /// for channels of at most SERIAL_MAX_BLOCKS blocks one invocation each.
    fn attention_entry(&self) -> (&'static str, [u32; 3]) {
        let channels = self.c_out as u32;
        match self.runs_blocks() {
            true if self.serial_blocks() => ("modulate_backward_attention_3x3_serial", grid(self.c_out)),
            true => ("modulate_backward_attention_3x3_blocks", [channels, 1, 1]),
            false => ("modulate_backward_attention_3x3", [channels, 1, 1]),
        }
    }

    /// dspatial of child k from the fused attention gradient's per-tap partial sums
    /// (`buffers`: parent, spatial, filter, dchild, dspatial, partials).
    fn spatial_sums(&self, gpu: &Gpu, buffers: [&GpuSlice; 6], k: usize, ds: GradTarget) -> Dispatch {
        let params = self.params(k, ds.accumulate);
        gpu.dispatch("modulate", "modulate_backward_spatial_partials", &params, &buffers, [TAPS_3X3 as u32, 1, 1])
    }

    /// Floats of one child's per-tap partial sums (double-float pairs).
    fn partials_len(&self) -> usize {
        self.c_out * TAPS_3X3 * 2
    }

    /// Where the second child's partial sums of a pair begin: past the first's, at an offset
    /// every adapter can bind (256 bytes, WebGPU's largest storage offset alignment).
    fn next_partials(&self) -> usize {
        self.partials_len().next_multiple_of(64)
    }

    fn rows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.children).map(|c| (c, self.first_child + c))
    }
}

impl Op for Modulate {
    fn name(&self) -> &'static str {
        "modulate"
    }

    fn scratch(&self, backward: bool) -> Vec<usize> {
        // Per-tap partial sums (double-float pairs) of the fused attention gradients: of two
        // children at once where the serial pass takes them in pairs.
        let pairs = self.serial_blocks() && self.children > 1;
        let len = if pairs { self.next_partials() + self.partials_len() } else { self.partials_len() };
        if backward && self.fused_attention() { vec![len] } else { Vec::new() }
    }

    fn differentiable(&self, input: usize) -> bool {
        (input != 1 || self.has_spatial) && input < 3
    }

    fn covers_input(&self, input: usize) -> bool {
        input == 0 || (self.first_child == 0 && self.children == self.rows)
    }

    fn read_by(&mut self, _output: usize, taps: Option<u32>) {
        let taps = taps.unwrap_or(self.all_taps());
        self.live_taps = Some(self.live_taps.map_or(taps, |live| live | taps));
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let none = placeholder(gpu);
        let spatial = if self.has_spatial { b.inputs[1] } else { &none };
        let filter = b.inputs[2];
        self.rows()
            .filter(|&(c, _)| self.packed_by_consumer & (1 << c) == 0)
            .map(|(c, k)| {
                let buffers = [b.inputs[0], spatial, filter, b.outputs[c]];
                let (entry, invocations) = self.elementwise("modulate_forward");
                gpu.dispatch("modulate", entry, &self.params(k, false), &buffers, grid(invocations))
            })
            .collect()
    }

    /// Children of fixed parents and attentions (eval over trained weights) are computed once.
    fn split_forward(&self, gpu: &Gpu, b: &Bound, mode: Mode, fixed: &[bool]) -> Forward {
        let dispatches = self.forward(gpu, b, mode);
        // Parent and attentions (an own conv's gradient buffer is not read forward).
        match fixed.len() == b.inputs.len() && fixed[..3].iter().all(|&f| f) {
            true => Forward { prepare: dispatches, run: Vec::new() },
            false => Forward { prepare: Vec::new(), run: dispatches },
        }
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let none = placeholder(gpu);
        let spatial = if self.has_spatial { b.inputs[1] } else { &none };
        let (parent, filter) = (b.inputs[0], b.inputs[2]);
        let mut out = Vec::new();
        let mut each = |entry: &'static str, target: Option<GradTarget>, workgroups: [u32; 3], always_add: bool| {
            let Some(t) = target else { return };
            for (c, k) in self.rows() {
                // The parent's gradient sums over children: all but the first add.
                let accumulate = t.accumulate || (always_add && c > 0);
                let buffers = [parent, spatial, filter, grads.outputs[c], t.slice];
                out.push(gpu.dispatch("modulate", entry, &self.params(k, accumulate), &buffers, workgroups));
            }
        };
        if let (Some(dparent), Some(ds), Some(dfilter)) = (grads.inputs[0], grads.inputs[1], grads.inputs[2])
            && self.serial_blocks()
        {
            // One pass over each pair of children (or the last child alone) for all three
            // gradients, then each child's spatial sums.
            for c in (0..self.children).step_by(2) {
                let pair = c + 1 < self.children;
                let children = 1 + pair as usize;
                let partials = b.scratch[0].range(0, (children - 1) * self.next_partials() + self.partials_len());
                let kernel = [parent, spatial, filter, grads.outputs[c], dfilter.slice, &partials, dparent.slice];
                // Read through textures: the parent, this child's dchild, the parent's gradient
                // so far (the `_own` kernels: the parent's own conv's), the pair's next dchild.
                let own = self.own_parent_gradient && c == 0;
                let gradient_so_far = if own { b.inputs[3] } else { dparent.slice };
                let mut textures = vec![parent, grads.outputs[c], gradient_so_far];
                if pair {
                    textures.push(grads.outputs[c + 1]);
                }
                // The parent's gradient sums over children: all but the first add.
                let params = ModulateParams {
                    parent_accumulate: (dparent.accumulate || c > 0) as u32,
                    ..self.params(self.first_child + c, dfilter.accumulate)
                };
                let entry = match (pair, own) {
                    (true, false) => "modulate_backward_3x3_serial_pair",
                    (true, true) => "modulate_backward_3x3_serial_pair_own",
                    (false, false) => "modulate_backward_3x3_serial",
                    (false, true) => "modulate_backward_3x3_serial_own",
                };
                out.push(gpu.dispatch_with_textures("modulate", entry, &params, &kernel, &textures, grid(self.c_out)));
                for n in 0..children {
                    let partials = b.scratch[0].range(n * self.next_partials(), self.partials_len());
                    let buffers = [parent, spatial, filter, grads.outputs[c + n], ds.slice, &partials];
                    out.push(self.spatial_sums(gpu, buffers, self.first_child + c + n, ds));
                }
            }
            return out;
        }
        assert!(self.dchild_strides.is_none(), "only the serial passes read unreduced child gradients");
        let (entry, invocations) = self.elementwise("modulate_backward_parent");
        each(entry, grads.inputs[0], grid(invocations), true);
        if let (true, Some(ds), Some(dfilter)) = (self.fused_attention(), grads.inputs[1], grads.inputs[2]) {
            // One pass over each child for both attention gradients, then the spatial sums.
            let partials = b.scratch[0];
            for (c, k) in self.rows() {
                let kernel = [parent, spatial, filter, grads.outputs[c], dfilter.slice, partials];
                let params = self.params(k, dfilter.accumulate);
                let (entry, workgroups) = self.attention_entry();
                out.push(gpu.dispatch("modulate", entry, &params, &kernel, workgroups));
                out.push(self.spatial_sums(
                    gpu,
                    [parent, spatial, filter, grads.outputs[c], ds.slice, partials],
                    k,
                    ds,
                ));
            }
            return out;
        }
        // One 64-invocation workgroup per attention value.
        if self.has_spatial {
            each("modulate_backward_spatial", grads.inputs[1], [self.taps as u32, 1, 1], false);
        }
        if !self.serial_filter() {
            each("modulate_backward_filter", grads.inputs[2], [self.c_out as u32, 1, 1], false);
            return out;
        }
        let Some(dfilter) = grads.inputs[2] else { return out };
        for (c, k) in self.rows() {
            let buffers = [parent, spatial, filter, grads.outputs[c], dfilter.slice];
            let entries = ["modulate_backward_filter_serial", "modulate_backward_filter_serial_textured"];
            // Textures in binding order: the parent (15), then dchild (14).
            let sources = [parent, grads.outputs[c]];
            let params = self.params(k, dfilter.accumulate);
            out.push(gpu.dispatch_streaming(None, "modulate", entries, &params, &buffers, &sources, grid(self.c_out)));
        }
        out
    }
}

impl Graph {
    /// Children `first_child .. first_child + children` of `parent` ([C_out, ...]); `spatial`
    /// is absent for filter-only modulation. Returns one tensor per child, shaped as the parent.
    pub fn modulate(
        &mut self,
        parent: TensorId,
        spatial: Option<TensorId>,
        filter: TensorId,
        first_child: usize,
        children: usize,
    ) -> Result<Vec<TensorId>> {
        let pshape = self.shape(parent).to_vec();
        let c_out = pshape[0];
        let taps = if pshape.len() == 4 { pshape[2] * pshape[3] } else { 1 };
        // Rows are counted from the filter attention, which may lack the child dimension when
        // there is one child ([C_out, 1, 1, 1]).
        let fshape = self.shape(filter).to_vec();
        let filter_len: usize = fshape.iter().product();
        let rows = filter_len / c_out;
        if !filter_len.is_multiple_of(c_out) || !(fshape[0] == rows || (rows == 1 && fshape[0] == c_out)) {
            return Err(shape_error("modulate", "filter attention", &fshape, &format!("[R, {c_out}, 1, ...]")));
        }
        if let Some(s) = spatial {
            let sshape = self.shape(s);
            if sshape.iter().product::<usize>() != rows * taps {
                return Err(shape_error("modulate", "spatial attention", sshape, &format!("[{rows}, 1, 1, kh, kw]")));
            }
        }
        if children == 0 || first_child + children > rows {
            bail!("modulate: children {first_child}..{} outside the {rows} attention rows", first_child + children);
        }
        let op = Modulate {
            first_child,
            children,
            rows,
            c_out,
            fan: pshape.iter().product::<usize>() / c_out,
            taps,
            has_spatial: spatial.is_some(),
            live_taps: None,
            packed_by_consumer: 0,
            dchild_strides: None,
            own_parent_gradient: false,
        };
        // Without a spatial attention the filter stands in its slot, so inputs keep positions.
        let inputs = [parent, spatial.unwrap_or(filter), filter];
        Ok(self.push(op, &inputs, &vec![pshape; children]))
    }
}
