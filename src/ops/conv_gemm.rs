//! Ungrouped convolution as implicit GEMM over channels-last copies (`shaders/conv_tile.wgsl`).
//!
//! Every size here — tile shapes, copy layouts, how the weight gradient splits its reduction —
//! follows from the convolution's shape alone, so a shape computes the same sums in the same
//! order on every run, and a resumed or repeated seeded run stays bit-identical.

use std::ops::Range;

use super::Forward;
use super::conv2d::{Conv2dConfig, Conv2dShape, Fusion};
use crate::gpu::conv_tiles::{
    ChildPass, FORWARD_TILES, LANES_ENTRY, LANES_TILE, SHARED_CHANNELS, SHARED_PIXELS, TILE_WORKGROUP, WEIGHT_TILE_OUT,
    WEIGHT_TILES, forward_child_entry, forward_entry, forward_quads_entry, lanes_child_entry, shared_entry,
    weight_entry,
};
use crate::gpu::{Dispatch, Entry, Gpu, GpuSlice, Stores, grid, grid_of, texture_width};

/// Fewest batch-wide pixels per weight-gradient chunk: shorter chunks cost more in partial
/// sums written than they gain in parallelism.
const MIN_CHUNK: usize = 256;
/// Weight-gradient invocations (tiles x chunks) to aim for, so that a layer with few tiles
/// (early layers: few channels, many pixels) still fills a GPU.
const TARGET_INVOCATIONS: usize = 8192;
/// Most floats the weight gradient's partial sums may take.
const MAX_PARTIAL_FLOATS: usize = 16 << 20;

/// Buffers an ungrouped convolution keeps (`Op::scratch` order).
const X_LAST: usize = 0;
const W_FORWARD: usize = 1;
const DY_LAST_PADDED: usize = 2;
const W_BACKWARD: usize = 3;
const DY_LAST: usize = 4;
const PARTIALS: usize = 5;

/// Mirrors `TileParams` in conv_tile.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TileParams {
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_quads: u32,
    c_out: u32,
    out_h: u32,
    out_w: u32,
    out_pad: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    channels: u32,
    src_h: u32,
    src_w: u32,
    dilation_h: u32,
    dilation_w: u32,
    top: i32,
    left: i32,
    chunks: u32,
    chunk_len: u32,
    accumulate: u32,
    weight_out: u32,
    weight_in: u32,
    tile: u32,
    c0: u32,
    tap0: u32,
    tap1: u32,
    quad0: u32,
    quad1: u32,
    // The weight's own kernel: the kernels above see only the taps from (ky0, kx0) on.
    ky0: u32,
    kx0: u32,
    full_kernel_w: u32,
    full_taps: u32,
    // One phase of a strided input gradient (`InputPhase`); zero for dense outputs.
    store_h: u32,
    store_w: u32,
    store_stride_h: u32,
    store_stride_w: u32,
    store_y0: u32,
    store_x0: u32,
    flip_h: u32,
    flip_w: u32,
    tap_step_h: u32,
    tap_step_w: u32,
    tap0_h: u32,
    tap0_w: u32,
    window_y0: u32,
    window_x0: u32,
    // The input copy multiplies each (sample, channel) by a gate (binding 3).
    gate: u32,
    // A band reading weights packed once for its whole pass ([`bands_share_packing`]): the
    // pass's taps, taps to a row, and the band's first tap (row, column) among them; zero
    // when the weights were packed for the band's taps alone.
    pack_taps: u32,
    pack_kernel_w: u32,
    pack_y0: u32,
    pack_x0: u32,
    // The weight-gradient reduction's passes: (used taps, packed as ky0 | rows << 8 | kx0 << 16
    // | columns << 24; first vec4 of its partial sums; chunks; unused).
    band_count: u32,
    // Pass t reads full tap t alone: the reduction takes each tap's sums from its pass.
    pass_per_tap: u32,
    // `reduce_weight_partials_3x3_strided` and `_1x1`: vec4s between output channels, taps and chunks.
    co_stride: u32,
    tap_stride: u32,
    chunk_stride: u32,
    // `pack_weight_forward_quads`, where it also packs the input gradient's weights (nonzero
    // back_tile, [`GemmPlan::backward_packed_by_forward`]): that packing's tile width, blocks
    // per tile and input quads.
    back_tile: u32,
    back_blocks: u32,
    back_quads: u32,
    // `pack_weight_forward_quads`: nonzero where the bound weight is a KernelDNA parent whose
    // child (attention row `child_row`) is packed ([`ChildPacking`]). The `_child` tiles, which
    // run that child over its parent's packing ([`ChildPacking::parent_packed`]): 1 in its
    // forward pass, 2 in its input gradient ([`modulating`]).
    child_modulated: u32,
    child_row: u32,
    // Kernels that read textures ([`Gpu::dispatch_with_textures`]): log2 of their texels per
    // row ([`texture_width`]).
    texture_shift: u32,
    bands: [[u32; 4]; MAX_WEIGHT_PASSES],
    // `pack_weight_forward_quads`: where each weight tap's rows begin among a tile's packed
    // blocks, in vec4s; u32::MAX for a tap the pass does not read ([`tap_rows`]). The same in
    // the input gradient's packing.
    tap_rows: [[u32; 4]; 3],
    back_tap_rows: [[u32; 4]; 3],
    // The `_child` tiles: the weight's own tap that each tap of the pass reads ([`modulating`]).
    child_taps: [[u32; 4]; 3],
    // A convolution with its kernel's columns folded into its input channels ([`ColumnFold`]):
    // the source's channels, the kernel's columns, the column stride and padding; zero
    // otherwise.
    fold_channels: u32,
    fold_kernel_w: u32,
    fold_stride: u32,
    fold_left: u32,
}

impl TileParams {
    /// These parameters for a kernel that reads textures on `gpu` (its rows' texel shift).
    fn reading_textures(&self, gpu: &Gpu) -> TileParams {
        TileParams { texture_shift: texture_width(gpu).trailing_zeros(), ..*self }
    }

    /// Whether every four batch-wide output pixels from a multiple of four lie side by side in
    /// each channel of the output (and of the residual, laid out alike): a dense output, not a
    /// phase of a strided gradient nor a band's frame, whose planes hold whole quads.
    fn pixel_quads_side_by_side(&self) -> bool {
        let whole = |store: u32, out: u32| store == 0 || store == out;
        let dense = self.store_stride_h <= 1 && self.store_stride_w <= 1 && (self.store_y0, self.store_x0) == (0, 0);
        dense
            && whole(self.store_h, self.out_h)
            && whole(self.store_w, self.out_w)
            && (self.out_h * self.out_w).is_multiple_of(4)
    }
}

/// A convolution over few input channels computed as one over its kernel's columns folded
/// into the channels: the input copy's column ox holds, as channel kx * channels + c, source
/// channel c at column ox * stride + kx - pad (`to_channels_last_folded`), so that a kh x 1
/// convolution at column stride 1 over kw * channels channels computes the kh x kw one. The
/// weights are read and their gradient written in the weight's own layout
/// (`weight_offset`). A ResNet stem's 3 channels fill 21 of 24 channels rather than 3 of 4,
/// and each of its 7 taps loops over 6 input quads rather than 49 taps over one. The input
/// gradient is not computed this way ([`GemmPlan::folds_columns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnFold {
    /// The source's input channels, the kernel's columns, the column stride and padding.
    channels: usize,
    kernel_w: usize,
    stride: usize,
    pad: usize,
    /// The source's columns.
    width: usize,
}

impl ColumnFold {
    /// The fold of `shape`, where it spares input quads: the kernel's columns times the
    /// padded quads of its channels exceed the quads of the folded channels.
    fn of(shape: &Conv2dShape) -> Option<ColumnFold> {
        let s = shape;
        let folded = s.c_in * s.kernel_w;
        let spares = s.kernel_w * s.c_in.div_ceil(4) > folded.div_ceil(4);
        (s.cfg.groups == 1 && s.kernel_w > 1 && spares).then_some(ColumnFold {
            channels: s.c_in,
            kernel_w: s.kernel_w,
            stride: s.cfg.stride.1,
            pad: s.cfg.padding.1,
            width: s.w,
        })
    }

    /// The folded convolution's shape: kh x 1 taps at column stride 1 over the folded channels,
    /// the output's columns as its input's.
    fn shape(&self, s: &Conv2dShape) -> Conv2dShape {
        let cfg = Conv2dConfig { stride: (s.cfg.stride.0, 1), padding: (s.cfg.padding.0, 0), groups: 1 };
        Conv2dShape { c_in: self.channels * self.kernel_w, w: s.out_w, kernel_w: 1, cfg, ..*s }
    }
}

/// A KernelDNA child that the forward packing computes from its parent as it packs, so that
/// the child is never stored on its own: the bound weight is the parent, and
/// `pack_weight_forward_quads` multiplies each value by child `row`'s attentions (torch's
/// shapes: `spatial` [R, 1, 1, 3, 3], `filter` [R, C_out, 1, 1, 1]) exactly as
/// `modulate_forward_3x3` would have. Only where [`GemmPlan::packs_child`].
///
/// With `parent_packed`, the packings in the scratch are the parent's, which its own
/// convolution packs (the same plan: [`GemmPlan::runs_child_over_parent_packing`]): this
/// convolution packs nothing, and its tiles (the `_child` twins) multiply each weight as they
/// load it, the same products rounded alike.
#[derive(Clone, Copy)]
pub struct ChildPacking<'a> {
    pub spatial: &'a GpuSlice,
    pub filter: &'a GpuSlice,
    pub row: usize,
    pub parent_packed: bool,
}

/// `params` of a pass packed `packing`'s way for the `_child` tiles that run `child` over its
/// parent's packing: its attention row, whether the filter factors go by output channel
/// (forward) or input lane (input gradient), and each of the pass's taps' own tap in the weight.
fn modulating(params: TileParams, child: &ChildPacking, packing: Packing) -> TileParams {
    let mut taps = [0; 12];
    for (tap, own) in taps.iter_mut().enumerate().take((params.kernel_h * params.kernel_w) as usize) {
        *own = weight_tap(&params, packing, tap) as u32;
    }
    TileParams {
        child_modulated: match packing {
            Packing::Forward => 1,
            Packing::Backward => 2,
        },
        child_row: child.row as u32,
        child_taps: per_tap_quads(taps),
        ..params
    }
}

/// Twelve per-tap values (a 3x3 kernel's nine, then padding) as the three vec4<u32> the
/// shader's parameter struct holds them in.
fn per_tap_quads(values: [u32; 12]) -> [[u32; 4]; 3] {
    bytemuck::cast(values)
}

/// One phase of the input gradient along one axis: the input positions first, first + stride,
/// ... (`outputs` of them), which only the flipped used taps tap0, tap0 + stride, ... (`taps`
/// of them) reach, from dy row `base` + (output index) + (tap index) on. Splitting a strided
/// convolution's input gradient into stride x stride such phases skips the zeros a dilated
/// dy would hold (three quarters of the work at stride 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InputPhase {
    first: usize,
    outputs: usize,
    tap0: usize,
    taps: usize,
    base: i32,
}

impl InputPhase {
    /// The phases along an axis of `size` input positions, for `kernel` used taps, padding
    /// `pad` before the first of them, and `stride`; positions a phase never reaches are left out.
    fn along(size: usize, kernel: usize, pad: i32, stride: usize) -> Vec<InputPhase> {
        // dy[0] sits at `top` in the dilated, padded dy of the stride-1 formulation.
        let top = kernel as i32 - 1 - pad;
        let s = stride as i32;
        (0..stride.min(size))
            .map(|first| {
                let tap0 = (top - first as i32).rem_euclid(s) as usize;
                InputPhase {
                    first,
                    outputs: (size - first).div_ceil(stride),
                    tap0,
                    taps: if tap0 < kernel { (kernel - tap0).div_ceil(stride) } else { 0 },
                    base: (first as i32 + tap0 as i32 - top) / s,
                }
            })
            .collect()
    }

    /// Rows of this phase's dy copy: the outputs plus the taps' reach.
    fn copy_size(&self) -> usize {
        self.outputs + self.taps.max(1) - 1
    }
}

/// The base every phase along an axis that some tap reaches shares, if they share one (a 3x3
/// kernel at stride 2 with padding 1: both phases start at dy row 0).
fn shared_base(phases: &[InputPhase]) -> Option<i32> {
    let mut reached = phases.iter().filter(|phase| phase.taps > 0);
    let first = reached.next()?.base;
    reached.all(|phase| phase.base == first).then_some(first)
}

/// Consecutive outputs along one axis that read real data through the same taps: outputs
/// `first .. first + count`, through taps `tap0 .. tap0 + taps` of the pass's (used) taps.
/// Near a border of a small map most taps meet only padding (three of a 3x3 kernel's rows on
/// a 2x2 map's edge), and the implicit GEMM would multiply those zeros like any other value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Band {
    first: usize,
    count: usize,
    tap0: usize,
    taps: usize,
}

/// The bands of `outputs` outputs whose tap j reads copy position `o * stride + j`
/// (`taps` taps), real data lying at copy positions `data` (padding around it).
fn bands(outputs: usize, stride: usize, taps: usize, data: Range<i64>) -> Vec<Band> {
    let mut out: Vec<Band> = Vec::new();
    for o in 0..outputs {
        let at = (o * stride) as i64;
        let lo = (data.start - at).clamp(0, taps as i64) as usize;
        let hi = (data.end - at).clamp(0, taps as i64) as usize;
        let (tap0, taps) = if hi > lo { (lo, hi - lo) } else { (0, 0) };
        match out.last_mut() {
            Some(b) if (b.tap0, b.taps) == (tap0, taps) => b.count += 1,
            _ => out.push(Band { first: o, count: 1, tap0, taps }),
        }
    }
    out
}

/// The weight gradient's split of a banded convolution along one axis: each run of taps that
/// the same outputs read real data with, as a band of those outputs and taps. Every
/// (output, tap) term lies in one of them, so each tap's partial sums come from one pass and
/// the reduction reads each once — where bands of outputs (`bands`) would leave a 2x2 map's
/// centre tap in all four.
fn tap_bands(outputs: usize, stride: usize, taps: usize, data: Range<i64>) -> Vec<Band> {
    let mut out: Vec<Band> = Vec::new();
    for tap in 0..taps {
        let real = |o: &usize| data.contains(&((o * stride + tap) as i64));
        let Some(first) = (0..outputs).find(real) else { continue };
        let count = (first..outputs).take_while(real).count();
        match out.last_mut() {
            Some(b) if (b.first, b.count, b.tap0 + b.taps) == (first, count, tap) => b.taps += 1,
            _ => out.push(Band { first, count, tap0: tap, taps: 1 }),
        }
    }
    out
}

/// Most passes of a weight gradient (tap bands: three per axis of a 3x3 kernel), each an entry
/// of the reduction's `bands` (`p.bands` in conv_tile.wgsl).
const MAX_WEIGHT_PASSES: usize = 9;

/// Largest number of regions (row bands x column bands) a pass is split into: each costs a
/// weight packing and a dispatch, and a small region leaves cores idle. On lavapipe, 2x2 maps
/// (four regions) run a 3x3 conv in half the time, while 4x4 and 7x7 maps (nine) gain little
/// or lose.
const MAX_BANDS: usize = 4;

/// The regions (row band, column band) of a pass whose unsplit form costs `full` (output,
/// tap) pairs per sample, where splitting spares at least 30% of them. Each region's pass
/// fills its pixel tiles less well than the whole, and packs its weights apart: on lavapipe
/// a stride-2 3x3 conv from 8x8 to 4x4 maps (16% spared) ran its forward pass in twice the
/// time split, while 2x2 maps (56%) and a stride-2 conv from 4x4 to 2x2 (31%) gain.
fn worth_splitting(rows: &[Band], cols: &[Band], full: usize) -> Option<Vec<(Band, Band)>> {
    let work = |bands: &[Band]| bands.iter().map(|b| b.count * b.taps).sum::<usize>();
    let regions = rows.len() * cols.len();
    (regions > 1 && regions <= MAX_BANDS && 10 * work(rows) * work(cols) <= 7 * full).then(|| regions_of(rows, cols))
}

/// Every region (row band, column band) of a split, rows outer.
fn regions_of(rows: &[Band], cols: &[Band]) -> Vec<(Band, Band)> {
    rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).collect()
}

/// (tap, input quad) steps per weight block, and the floats a uniform-block kernel binds of
/// it whatever the tile (64 KiB, the most a uniform binding may hold, a block of the widest
/// tile): `STEPS` and `UNIFORM_BLOCK_VEC4S` in conv_tile.wgsl.
const STEPS: usize = 64;
const UNIFORM_BLOCK_FLOATS: usize = 16384;

/// The floats of one weight block of `tile`-wide tiles (STEPS steps x 4 input lanes x `tile`
/// channels; `block_vec4s` in conv_tile.wgsl): as dense for narrow tiles as for the widest, so
/// that a texture copied from packed weights holds no padding.
fn block_floats(tile: u32) -> usize {
    STEPS * 4 * tile as usize
}

/// What a buffer of packed weights holds past its blocks: a uniform-block kernel binds
/// [`UNIFORM_BLOCK_FLOATS`] from a block's start, past the last block's end where the tile is
/// narrower than the widest.
fn uniform_tail(tile: u32) -> usize {
    UNIFORM_BLOCK_FLOATS - block_floats(tile)
}

/// The weight blocks of one output-channel tile, as (taps, input quads) ranges: whole taps per
/// block while a tap has at most STEPS quads, else each tap split (`block_steps` in the shader).
fn weight_blocks(taps: usize, in_quads: usize) -> Vec<(Range<usize>, Range<usize>)> {
    if in_quads <= STEPS {
        let per = STEPS / in_quads;
        (0..taps.div_ceil(per)).map(|b| (b * per..taps.min((b + 1) * per), 0..in_quads)).collect()
    } else {
        let split = in_quads.div_ceil(STEPS);
        (0..taps * split)
            .map(|b| {
                let quad0 = (b % split) * STEPS;
                (b / split..b / split + 1, quad0..in_quads.min(quad0 + STEPS))
            })
            .collect()
    }
}

/// Whether the bands of a pass whose input has `in_quads` quads share one packing of the
/// pass's weights: a block then holds (part of) one tap, so a band's taps are whole blocks of
/// it ([`packed_block`]). With fewer quads a block holds several taps, and each band packs
/// its own.
fn bands_share_packing(in_quads: usize) -> bool {
    in_quads > STEPS / 2
}

/// Where block `b` (of `blocks` per tile) of output-channel tile `tile` lies in the packed
/// weights, in blocks: `packed_block` in conv_tile.wgsl.
fn packed_block(params: &TileParams, tile: usize, b: usize, blocks: usize) -> usize {
    if params.pack_taps == 0 {
        return tile * blocks + b;
    }
    let split = (params.in_quads as usize).div_ceil(STEPS);
    let (tap, kernel_w) = (b / split, params.kernel_w as usize);
    let row = tap / kernel_w + params.pack_y0 as usize;
    let shared_tap = row * params.pack_kernel_w as usize + tap % kernel_w + params.pack_x0 as usize;
    (tile * params.pack_taps as usize + shared_tap) * split + b % split
}

/// `params` for a band of a pass whose `(rows, columns)` taps were packed together, the band's
/// taps starting at `(y0, x0)` among them.
fn sharing_packing(params: TileParams, (rows, cols): (usize, usize), (y0, x0): (usize, usize)) -> TileParams {
    let u = |v: usize| v as u32;
    TileParams { pack_taps: u(rows * cols), pack_kernel_w: u(cols), pack_y0: u(y0), pack_x0: u(x0), ..params }
}

/// Without subgroups: batch-wide output pixels from which a convolution reads its weights as
/// uniform blocks (one dispatch per block and channel tile); below it, one dispatch reads them
/// all from storage, since the few pixel tiles of a per-block dispatch would leave most cores
/// idle. (Subgroup broadcasts beat both on lavapipe at every size measured.)
const UNIFORM_MIN_PIXELS: usize = 1024;

/// With subgroups: batch-wide output pixels below which lanes take output channels
/// ([`WeightReads::SubgroupInputs`]). Below it a pass has fewer pixel tiles of 8 than a
/// workgroup has lanes, and the rest would compute clamped copies.
const LANES_MAX_PIXELS: usize = 128;

/// How the forward-style kernel reads its packed weights. Every way sums each result in the
/// same order, so the choice never changes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightReads {
    /// One dispatch per (output channel tile, 64 KiB block), the block read as a uniform buffer
    /// (a workgroup-uniform uniform load is one scalar load on software adapters).
    UniformBlocks,
    /// One dispatch over every block, read from storage.
    Storage,
    /// As `Storage`, each eight lanes of a subgroup loading eight values at once and sharing
    /// them by broadcast (family conv_tile_subgroup; also used by the weight gradient). The
    /// input copy and the packed weights are read from textures, copied from their buffers
    /// before the dispatch ([`Gpu::dispatch_with_textures`]): software adapters fetch texels
    /// faster than storage values whose addresses differ per lane.
    SubgroupStorage,
    /// Workgroups of 128 pixels x 64 or 128 channels that stage inputs and weights in
    /// workgroup memory (`conv_shared_forward_T`; real GPUs, [`Gpu::workgroup_tiles`]).
    WorkgroupTiles,
    /// Lanes that take output channels rather than pixels, each reading its own weights, the
    /// pixels loaded once per eight lanes and broadcast (`conv_tile_forward_lanes`, family
    /// conv_tile_subgroup; both from textures, as `SubgroupStorage`): passes over too few
    /// pixels to give every lane a pixel tile.
    SubgroupInputs,
}

impl WeightReads {
    /// The fastest way on `gpu` for a pass over `pixels` batch-wide output pixels.
    fn choose(gpu_subgroups: bool, pixels: usize) -> WeightReads {
        match (gpu_subgroups, pixels) {
            (true, pixels) if pixels < LANES_MAX_PIXELS => WeightReads::SubgroupInputs,
            (true, _) => WeightReads::SubgroupStorage,
            (false, pixels) if pixels >= UNIFORM_MIN_PIXELS => WeightReads::UniformBlocks,
            (false, _) => WeightReads::Storage,
        }
    }

    fn family(self) -> &'static str {
        match self {
            WeightReads::SubgroupStorage | WeightReads::SubgroupInputs => "conv_tile_subgroup",
            _ => "conv_tile",
        }
    }

    /// The tile (output channels, pixels) these reads impose, if any.
    fn tile(self) -> Option<(u32, u32)> {
        match self {
            // Only the channels count for workgroup tiles (their pixels are `SHARED_PIXELS`).
            WeightReads::WorkgroupTiles => Some((SHARED_CHANNELS, 8)),
            WeightReads::SubgroupInputs => Some(LANES_TILE),
            _ => None,
        }
    }
}

/// The weight gradient's partial-sum kernels. All sum the same chunks in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightKernel {
    /// `conv_tile_weight_I`: 32 output x `weight_inputs` input channels per invocation.
    Registers,
    /// The same, each eight lanes of a subgroup sharing their dy loads by broadcast, x and dy
    /// read from textures (as [`WeightReads::SubgroupStorage`] reads its operands).
    SubgroupRegisters,
    /// `conv_shared_weight`: 64 x 64 channels per workgroup, staged in workgroup memory.
    WorkgroupTiles,
}

/// Which way [`pack_dispatch`] packs a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packing {
    /// For the forward pass: the kernel's outputs are the weight's.
    Forward,
    /// For the input gradient: the kernel's outputs are the weight's inputs, taps flipped.
    Backward,
}

impl Packing {
    /// The pass of a KernelDNA child that tiles over a packing this way run.
    fn child_pass(self) -> ChildPass {
        match self {
            Packing::Forward => ChildPass::Forward,
            Packing::Backward => ChildPass::InputGradient,
        }
    }
}

/// Packs the weights of a tile pass's taps into blocks of `channels`-wide tiles (nothing where
/// no tap reaches the pass), one invocation per packed row; for the forward pass over 3x3
/// weights whose input channels come in fours, `pack_weight_forward_quads` reads the weight
/// as vec4s, one invocation per (output channel quad, input quad), placing rows by
/// [`tap_rows`].
fn pack_dispatch(
    gpu: &Gpu,
    params: TileParams,
    channels: u32,
    [weight, packed]: [&GpuSlice; 2],
    packing: Packing,
    child: Option<ChildPacking>,
) -> Option<Dispatch> {
    let params = TileParams { tile: channels, ..params };
    let taps = (params.kernel_h * params.kernel_w) as usize;
    if taps == 0 {
        return None;
    }
    if packing == Packing::Forward && packs_by_quads(&params) {
        return Some(pack_forward_quads(gpu, params, [weight, packed], None, child));
    }
    assert!(child.is_none(), "only pack_weight_forward_quads packs a child from its parent");
    let entry = match packing {
        Packing::Forward => "pack_weight_forward",
        Packing::Backward => "pack_weight_backward",
    };
    Some(gpu.dispatch("conv_tile", entry, &params, &[weight, packed], pack_grid(packed, channels)))
}

/// Whether a forward packing reads the weight by quads (`pack_weight_forward_quads`): 3x3
/// weights whose input channels come in fours (their columns not folded into them).
fn packs_by_quads(params: &TileParams) -> bool {
    params.weight_in.is_multiple_of(4) && params.full_taps == 9 && params.fold_channels == 0
}

/// `pack_weight_forward_quads` over the forward packing `params` (tile set) into `packed`;
/// with `backward` (the input gradient's packing, tile set, and its buffer), writing that
/// packing from the same loads; with `child`, packing that child of the parent `weight`.
fn pack_forward_quads(
    gpu: &Gpu,
    params: TileParams,
    [weight, packed]: [&GpuSlice; 2],
    backward: Option<(TileParams, &GpuSlice)>,
    child: Option<ChildPacking>,
) -> Dispatch {
    let blocks = weight_blocks((params.kernel_h * params.kernel_w) as usize, params.in_quads as usize);
    let tiles = packed.len() / block_floats(params.tile) / blocks.len();
    let invocations = tiles * params.tile as usize / 4 * params.in_quads as usize;
    let mut params = TileParams { tap_rows: tap_rows(&params, &blocks, Packing::Forward), ..params };
    // Without the input gradient's packing, its binding is not written: one vec4 does.
    let unused = gpu.storage("kdna.conv.unused", 4);
    let mut back_packed = &unused;
    if let Some((back, packed)) = backward {
        let back_blocks = weight_blocks((back.kernel_h * back.kernel_w) as usize, back.in_quads as usize);
        params.back_tile = back.tile;
        params.back_blocks = back_blocks.len() as u32;
        params.back_quads = back.in_quads;
        params.back_tap_rows = tap_rows(&back, &back_blocks, Packing::Backward);
        back_packed = packed;
    }
    // Without a child the attentions' bindings are not read: the weight stands in for them.
    let (mut spatial, mut filter) = (weight, weight);
    if let Some(c) = child {
        (params.child_modulated, params.child_row) = (1, c.row as u32);
        (spatial, filter) = (c.spatial, c.filter);
    }
    // Bindings 2, 4, 5 and 6 (the gate's binding 3 is not read), and the weight as a texture.
    // (One texture holds width^2 vec4s: 1 GiB at the least width WebGPU guarantees, 8192.)
    let buffers = [weight, packed, weight, back_packed, spatial, filter];
    let entry = "pack_weight_forward_quads";
    gpu.dispatch_with_textures("conv_tile", entry, &params, &buffers, &[weight], grid(invocations))
}

/// Where each of a 3x3 weight's taps has its rows among a tile's packed `blocks`
/// ([`weight_blocks`]) of the pass `params`, packed `packing`'s way, in vec4s from the tile's
/// first: the block and step of the pass's tap, at input quad 0 (the first block holding the
/// tap); u32::MAX for a tap the pass does not read.
fn tap_rows(params: &TileParams, blocks: &[(Range<usize>, Range<usize>)], packing: Packing) -> [[u32; 4]; 3] {
    let row_vec4s = params.tile as usize / 4;
    let mut rows = [u32::MAX; 12];
    for (b, (taps, quads)) in blocks.iter().enumerate().filter(|(_, (_, quads))| quads.start == 0) {
        for tap in taps.clone() {
            let step = (tap - taps.start) * quads.len();
            rows[weight_tap(params, packing, tap)] = (b * block_floats(params.tile) / 4 + step * 4 * row_vec4s) as u32;
        }
    }
    per_tap_quads(rows)
}

/// The weight's own tap (row-major in its full kernel) that tap `tap` of the pass `params`
/// reads, packed `packing`'s way: as `pack_weight_forward` and `pack_weight_backward` find it.
fn weight_tap(params: &TileParams, packing: Packing, tap: usize) -> usize {
    let p = params;
    let (a, b) = (tap / p.kernel_w as usize, tap % p.kernel_w as usize);
    let (ty, tx) = match packing {
        Packing::Forward => (a, b),
        Packing::Backward => {
            let flip = |flip: u32, taps: u32| if flip != 0 { flip } else { taps } as usize;
            let (step_h, step_w) = (p.tap_step_h.max(1) as usize, p.tap_step_w.max(1) as usize);
            (
                flip(p.flip_h, p.kernel_h) - 1 - (p.tap0_h as usize + step_h * a),
                flip(p.flip_w, p.kernel_w) - 1 - (p.tap0_w as usize + step_w * b),
            )
        }
    };
    (ty + p.ky0 as usize) * p.full_kernel_w as usize + tx + p.kx0 as usize
}

/// The forward-style tile kernel over weights [`pack_dispatch`] packed: with uniform blocks,
/// once per (output channel tile, weight block), in block order, each block adding to what the
/// previous left (the first to the output already there when `params.accumulate`); else once
/// over every block. All sum in the same order. The last block adds the bias and the residual
/// and applies the output activation, as `stores` asks (each dispatch's pipeline constants).
/// Without a bias or a residual, their bindings are not read: any buffers do.
///
/// `earlier`: the dispatch recorded right before these, if it writes none of the buffers it
/// reads through textures. The subgroup tiles read the input copy and the packed weights
/// through textures that `earlier` filled where it read the same ones: the bands and phases of
/// one pass copy each once ([`Gpu::dispatch_with_textures_after`]).
///
/// With `child` (a KernelDNA child over its parent's packing, the pass packed that way: subgroup
/// tiles only), the `_child` twins, which multiply each weight by the child's attentions.
#[allow(clippy::too_many_arguments)]
fn tile_dispatches(
    gpu: &Gpu,
    params: TileParams,
    (channels, pixels): (u32, u32),
    [input, packed, bias, output, residual]: [&GpuSlice; 5],
    reads: WeightReads,
    stores: Stores,
    earlier: Option<&Dispatch>,
    child: Option<(&ChildPacking, Packing)>,
) -> Vec<Dispatch> {
    let accumulate = params.accumulate != 0;
    let mut params = TileParams { tile: channels, ..params };
    // Without a child the attentions' bindings are not read: the packed weights stand in.
    let mut attentions = [packed, packed];
    if let Some((child, packing)) = child {
        let subgroups = matches!(reads, WeightReads::SubgroupStorage | WeightReads::SubgroupInputs);
        assert!(subgroups, "only the subgroup tiles run a child over its parent's packing, not {reads:?}");
        params = modulating(params, child, packing);
        attentions = [child.spatial, child.filter];
    }
    let [spatial, filter] = attentions;
    let mut out = Vec::new();
    // A phase of an input gradient that no tap reaches only stores what is there (or zeros).
    let reads = match (params.kernel_h * params.kernel_w, reads) {
        (0, WeightReads::UniformBlocks) => WeightReads::Storage,
        _ => reads,
    };
    let channel_tiles = params.out_pad / channels;
    if reads == WeightReads::WorkgroupTiles {
        assert_eq!(channels, SHARED_CHANNELS, "workgroup tiles read weights packed in tiles of 64");
        let groups = (params.batch * params.out_h * params.out_w).div_ceil(SHARED_PIXELS) as usize;
        let [x, y, _] = grid_of(groups, 1);
        let buffers = [input, packed, bias, output, residual];
        // Two weight tiles per workgroup where there are two (same sums either way).
        let tiles = if channel_tiles == 1 { 1 } else { 2 };
        let z = channel_tiles.div_ceil(tiles);
        let entry = Entry::storing(shared_entry(tiles), stores);
        out.push(gpu.dispatch("conv_tile", entry, &params, &buffers, [x, y, z]));
        return out;
    }
    let pixel_tiles = (params.batch * params.out_h * params.out_w).div_ceil(pixels) as usize;
    // The subgroup kernels read the input copy and the packed weights as textures.
    let textured = params.reading_textures(gpu);
    if reads == WeightReads::SubgroupInputs {
        assert_eq!((channels, pixels), LANES_TILE, "lanes read weights packed in tiles of {}", LANES_TILE.0);
        let [y, z, _] = grid_of(pixel_tiles, 1);
        let x = channel_tiles.div_ceil(gpu.tile_lanes);
        let buffers = [input, packed, bias, output, residual, spatial, filter];
        let entry = child.map_or(LANES_ENTRY, |(_, packing)| lanes_child_entry(packing.child_pass()));
        out.push(gpu.dispatch_with_textures_after(
            earlier,
            reads.family(),
            Entry::storing(entry, stores),
            &textured,
            &buffers,
            &[input, packed],
            [x, y, z],
        ));
        return out;
    }
    if reads != WeightReads::UniformBlocks {
        let [x, y, _] = grid_of(pixel_tiles, TILE_WORKGROUP);
        let quads = gpu.quad_stores && params.pixel_quads_side_by_side();
        let entry = match (child, quads) {
            (Some((_, packing)), quads) => forward_child_entry(channels, pixels, quads, packing.child_pass()),
            (None, true) => forward_quads_entry(channels, pixels),
            (None, false) => forward_entry(channels, pixels, true),
        };
        let entry = Entry::storing(entry, stores);
        let buffers = [input, packed, bias, output, residual, spatial, filter];
        let (family, grid) = (reads.family(), [x, y, channel_tiles]);
        out.push(match reads {
            WeightReads::SubgroupStorage => {
                let sources = [input, packed];
                gpu.dispatch_with_textures_after(earlier, family, entry, &textured, &buffers, &sources, grid)
            }
            _ => gpu.dispatch(family, entry, &params, &buffers, grid),
        });
        return out;
    }
    let blocks = weight_blocks((params.kernel_h * params.kernel_w) as usize, params.in_quads as usize);
    for tile in 0..channel_tiles {
        for (b, (taps, quads)) in blocks.iter().enumerate() {
            let at = packed_block(&params, tile as usize, b, blocks.len());
            let block = uniform_block(packed, at * block_floats(channels));
            let last = b + 1 == blocks.len();
            let params = TileParams {
                c0: tile * channels,
                tap0: taps.start as u32,
                tap1: taps.end as u32,
                quad0: quads.start as u32,
                quad1: quads.end as u32,
                accumulate: (accumulate || b > 0) as u32,
                ..params
            };
            let stores = if last { stores } else { Stores::default() };
            out.push(gpu.dispatch(
                "conv_tile",
                Entry::storing(forward_entry(channels, pixels, false), stores),
                &params,
                &[input, &block, bias, output, residual],
                grid_of(pixel_tiles, TILE_WORKGROUP),
            ));
        }
    }
    out
}

/// Copies a [batch][channels][src_h][src_w] source into `vec4s` vec4s of a padded
/// channels-last buffer (`params`: the placement; `[source, destination, gate]`). Rows that
/// come in fours, or two-column rows in pairs, copy four pixels per invocation
/// (`to_channels_last_rows`, `to_channels_last_pairs`), writing only where the source lands:
/// callers guarantee the rest of the destination is already zero. Those two read the source
/// through a texture where the device reads streams so ([`Gpu::dispatch_streaming`]), and a
/// gate whose channels come in fours too.
fn copy_to_channels_last(gpu: &Gpu, params: &TileParams, buffers: [&GpuSlice; 3], vec4s: usize) -> Dispatch {
    let p = params;
    let dense = (p.dilation_h, p.dilation_w) == (1, 1);
    let gated_quads = p.gate != 0 && p.channels.is_multiple_of(4);
    let (entries, invocations) = match (p.src_w, p.src_h) {
        (w, _) if dense && w.is_multiple_of(4) => {
            let textured =
                if gated_quads { "to_channels_last_rows_gated_textured" } else { "to_channels_last_rows_textured" };
            (["to_channels_last_rows", textured], p.batch * p.src_h * w / 4 * p.in_quads)
        }
        (2, h) if dense && h.is_multiple_of(2) => {
            let textured =
                if gated_quads { "to_channels_last_pairs_gated_textured" } else { "to_channels_last_pairs_textured" };
            (["to_channels_last_pairs", textured], p.batch * h / 2 * p.in_quads)
        }
        _ => return gpu.dispatch("conv_tile", "to_channels_last", params, &buffers, grid(vec4s)),
    };
    let [source, _, gate] = buffers;
    let sources: &[&GpuSlice] = if gated_quads { &[source, gate] } else { &[source] };
    let workgroups = grid(invocations as usize);
    gpu.dispatch_streaming(None, "conv_tile", entries, params, &buffers, sources, workgroups)
}

/// The [`UNIFORM_BLOCK_FLOATS`] a uniform-block kernel binds from float `start` of `packed`
/// on: past the slice's end for a narrow tile's last block, into the buffer's [`uniform_tail`]
/// (the kernel reads only the block's own floats).
fn uniform_block(packed: &GpuSlice, start: usize) -> GpuSlice {
    let offset = packed.offset + 4 * start as u64;
    let size = 4 * UNIFORM_BLOCK_FLOATS as u64;
    assert!(offset + size <= packed.buffer.size(), "a uniform block past the end of its buffer");
    GpuSlice { buffer: packed.buffer.clone(), offset, size }
}

/// The packing kernels' grid: (x) the rows of a weight block that hold steps, each a tile's
/// channels at one (tap, input channel), by (y) the blocks `packed` holds.
fn pack_grid(packed: &GpuSlice, tile: u32) -> [u32; 3] {
    let blocks = packed.len() / block_floats(tile);
    assert!(packed.len().is_multiple_of(block_floats(tile)) && blocks <= 65535, "packed weights of {blocks} blocks");
    [(4 * STEPS).div_ceil(64) as u32, blocks as u32, 1]
}

/// The sizes of one convolution's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    shape: Conv2dShape,
    /// The taps some output's window puts on the input (others only ever meet padding, as a
    /// 3x3 kernel's outer ring on a 1x1 map): first row and column, rows and columns.
    ky0: usize,
    kx0: usize,
    kernel_h: usize,
    kernel_w: usize,
    /// The padding before the first used tap (negative where the first rows go unused).
    pad_h: i32,
    pad_w: i32,
    /// Output channels and pixels of a forward tile.
    forward_tile: (u32, u32),
    /// The same for the input gradient (whose outputs are the input channels).
    backward_tile: (u32, u32),
    /// Input channels of a weight-gradient tile.
    weight_inputs: u32,
    /// Input channel quads of the channels-last input copy (a multiple of weight_inputs / 4).
    x_quads: usize,
    /// Output-gradient channel quads of the input gradient's channels-last copy.
    dy_quads: usize,
    /// The weight gradient's reduction split.
    chunks: usize,
    chunk_len: usize,
    /// How the forward and the input gradient read their weights.
    forward_reads: WeightReads,
    backward_reads: WeightReads,
    /// How the weight gradient computes its partial sums.
    weight_kernel: WeightKernel,
    /// Where the plan's shape is a convolution's with its columns folded into its channels.
    fold: Option<ColumnFold>,
}

/// Batch-wide pixels from which a pass with few channels takes a narrower tile. Below it the
/// widest tile serves: the work is small whatever the tile, and each tile size is a kernel
/// that compiles for tens of seconds on lavapipe (a classifier's 10 outputs at batch 128
/// would otherwise cost a run half a minute of compilation).
const NARROW_TILE_MIN_PIXELS: usize = 1024;

/// The smallest forward tile holding `channels` (the largest when none does, or when the pass
/// has fewer than [`NARROW_TILE_MIN_PIXELS`] pixels).
fn forward_tile(channels: usize, pixels: usize) -> (u32, u32) {
    let widest = FORWARD_TILES[FORWARD_TILES.len() - 1];
    if pixels < NARROW_TILE_MIN_PIXELS {
        return widest;
    }
    FORWARD_TILES.into_iter().find(|&(c, _)| c as usize >= channels).unwrap_or(widest)
}

/// The taps along one axis that put some output's window on the input: (first, count). Taps
/// outside it multiply only padding, so skipping them leaves every sum as it is.
fn used_taps(kernel: usize, pad: usize, stride: usize, size: usize, out: usize) -> (usize, usize) {
    let used = |t: usize| (0..out).any(|o| (pad..pad + size).contains(&(o * stride + t)));
    match ((0..kernel).find(|&t| used(t)), (0..kernel).rev().find(|&t| used(t))) {
        (Some(first), Some(last)) => (first, last + 1 - first),
        _ => (0, kernel),
    }
}

impl GemmPlan {
    /// The plan for `gpu`.
    pub fn for_device(shape: &Conv2dShape, gpu: &Gpu) -> GemmPlan {
        let plan = GemmPlan::with_subgroups(shape, gpu.subgroups);
        if gpu.workgroup_tiles { plan.with_weight_reads(WeightReads::WorkgroupTiles) } else { plan }
    }

    /// The plan for a device with or without subgroups (of at least eight lanes).
    pub fn with_subgroups(shape: &Conv2dShape, subgroups: bool) -> GemmPlan {
        let s = shape;
        let plan = GemmPlan::new(shape);
        let forward_reads = WeightReads::choose(subgroups, s.batch * s.out_h * s.out_w);
        let backward_reads = WeightReads::choose(subgroups, plan.input_phase_pixels());
        GemmPlan {
            forward_reads,
            backward_reads,
            forward_tile: forward_reads.tile().unwrap_or(plan.forward_tile),
            backward_tile: backward_reads.tile().unwrap_or(plan.backward_tile),
            weight_kernel: if subgroups { WeightKernel::SubgroupRegisters } else { WeightKernel::Registers },
            ..plan
        }
    }

    /// The plan for `gpu` of `shape` with its kernel's columns folded into its input channels
    /// ([`ColumnFold`]), where [`GemmPlan::folds_columns`]. It has no input gradient.
    pub fn folding_columns(shape: &Conv2dShape, gpu: &Gpu) -> GemmPlan {
        let fold = ColumnFold::of(shape).expect("a convolution whose columns fold into its channels");
        GemmPlan { fold: Some(fold), ..GemmPlan::for_device(&fold.shape(shape), gpu) }
    }

    /// Whether folding `shape`'s kernel columns into its input channels spares work (a stem
    /// over 3 channels): then [`GemmPlan::folding_columns`] plans it, for a convolution whose
    /// input has no gradient.
    pub fn folds_columns(shape: &Conv2dShape) -> bool {
        ColumnFold::of(shape).is_some()
    }

    /// The shape [`GemmPlan::folding_columns`] computes `shape` as, for sizing its buffers.
    pub fn folded_shape(shape: &Conv2dShape) -> Option<Conv2dShape> {
        ColumnFold::of(shape).map(|fold| fold.shape(shape))
    }

    /// The plan's sizes, with the kernels of a device without subgroups.
    pub fn new(shape: &Conv2dShape) -> GemmPlan {
        let s = *shape;
        let (ky0, kernel_h) = used_taps(s.kernel_h, s.cfg.padding.0, s.cfg.stride.0, s.h, s.out_h);
        let (kx0, kernel_w) = used_taps(s.kernel_w, s.cfg.padding.1, s.cfg.stride.1, s.w, s.out_w);
        let quads = s.c_in.div_ceil(4);
        // The widest weight tile that divides the padded input channels.
        let weight_inputs =
            WEIGHT_TILES.into_iter().rev().find(|&i| (4 * quads).is_multiple_of(i as usize)).expect("4 divides");
        let taps = kernel_h * kernel_w;
        let total = s.batch * s.out_h * s.out_w;
        let tiles = s.c_out.div_ceil(WEIGHT_TILE_OUT as usize) * taps * (4 * quads / weight_inputs as usize);
        let partial_floats = s.c_out.next_multiple_of(WEIGHT_TILE_OUT as usize) * taps * 4 * quads;
        let chunks = total
            .div_ceil(MIN_CHUNK)
            .min(TARGET_INVOCATIONS.div_ceil(tiles))
            .min(MAX_PARTIAL_FLOATS / partial_floats)
            .max(1);
        let chunk_len = total.div_ceil(chunks);
        let plan = GemmPlan {
            shape: s,
            ky0,
            kx0,
            kernel_h,
            kernel_w,
            pad_h: s.cfg.padding.0 as i32 - ky0 as i32,
            pad_w: s.cfg.padding.1 as i32 - kx0 as i32,
            forward_tile: forward_tile(s.c_out, total),
            backward_tile: forward_tile(s.c_in, s.batch * s.h * s.w),
            weight_inputs,
            x_quads: quads,
            dy_quads: s.c_out.div_ceil(4),
            chunks: total.div_ceil(chunk_len),
            chunk_len,
            forward_reads: WeightReads::choose(false, total),
            backward_reads: WeightReads::Storage,
            weight_kernel: WeightKernel::Registers,
            fold: None,
        };
        GemmPlan { backward_reads: WeightReads::choose(false, plan.input_phase_pixels()), ..plan }
    }

    /// Batch-wide pixels of the input gradient's largest phase (the whole input without a
    /// stride): the most any of its passes computes, so what its weight reads are chosen by.
    /// A stride-2 conv from 4x4 to 2x2 maps takes the lanes kernel for its 2x2 phases.
    fn input_phase_pixels(&self) -> usize {
        let (rows, cols) = self.input_phases();
        let largest = |phases: &[InputPhase]| phases.iter().map(|p| p.outputs).max().unwrap_or(0);
        self.shape.batch * largest(&rows) * largest(&cols)
    }

    /// The same plan with the weights read one way in both passes, whatever the pixel count,
    /// and the weight gradient's kernel to match: sharing loads across subgroups exactly when
    /// `reads` does, in workgroup tiles with workgroup tiles (whose weights are packed in tiles
    /// of 64 channels). Every way sums in the same order, so tests may compare them bit for bit.
    pub fn with_weight_reads(self, reads: WeightReads) -> GemmPlan {
        let (forward_tile, backward_tile) = match reads.tile() {
            Some(tile) => (tile, tile),
            None => (self.forward_tile, self.backward_tile),
        };
        let weight_kernel = match reads {
            WeightReads::SubgroupStorage | WeightReads::SubgroupInputs => WeightKernel::SubgroupRegisters,
            WeightReads::WorkgroupTiles => WeightKernel::WorkgroupTiles,
            _ => WeightKernel::Registers,
        };
        GemmPlan { forward_reads: reads, backward_reads: reads, forward_tile, backward_tile, weight_kernel, ..self }
    }

    /// The weight taps these kernels read, a bit per tap (row-major), for kernels of at most 32
    /// taps.
    pub fn taps_read(&self) -> Option<u32> {
        let s = &self.shape;
        (s.kernel_h * s.kernel_w <= 32).then(|| {
            let rows = self.ky0..self.ky0 + self.kernel_h;
            let cols = self.kx0..self.kx0 + self.kernel_w;
            rows.flat_map(|ky| cols.clone().map(move |kx| 1 << (ky * s.kernel_w + kx))).sum()
        })
    }

    fn forward_pad(&self) -> usize {
        self.shape.c_out.next_multiple_of(self.forward_tile.0 as usize)
    }

    fn backward_pad(&self) -> usize {
        self.shape.c_in.next_multiple_of(self.backward_tile.0 as usize)
    }

    fn weight_pad(&self) -> usize {
        self.shape.c_out.next_multiple_of(WEIGHT_TILE_OUT as usize)
    }

    fn taps(&self) -> usize {
        self.kernel_h * self.kernel_w
    }

    /// Sizes of the padded channels-last input copy (height, width): the rows and columns the
    /// used taps reach.
    fn x_last_size(&self) -> (usize, usize) {
        let s = &self.shape;
        ((s.out_h - 1) * s.cfg.stride.0 + self.kernel_h, (s.out_w - 1) * s.cfg.stride.1 + self.kernel_w)
    }

    /// The input gradient's phases along each axis (one per axis without a stride).
    fn input_phases(&self) -> (Vec<InputPhase>, Vec<InputPhase>) {
        let s = &self.shape;
        (
            InputPhase::along(s.h, self.kernel_h, self.pad_h, s.cfg.stride.0),
            InputPhase::along(s.w, self.kernel_w, self.pad_w, s.cfg.stride.1),
        )
    }

    /// Sizes of the input gradient's copy of dy: room for the largest phase.
    fn dy_last_size(&self) -> (usize, usize) {
        let (rows, cols) = self.input_phases();
        let largest = |phases: &[InputPhase]| phases.iter().map(InputPhase::copy_size).max().unwrap_or(1);
        (largest(&rows), largest(&cols))
    }

    /// [`GemmPlan::scratch`] large enough for the plan of any device (an op's scratch is sized
    /// before its device is known): each buffer as large as any device's plan needs.
    pub fn scratch_for_any_device(shape: &Conv2dShape, backward: bool) -> Vec<usize> {
        let plans = [
            GemmPlan::with_subgroups(shape, false),
            GemmPlan::with_subgroups(shape, true),
            GemmPlan::new(shape).with_weight_reads(WeightReads::WorkgroupTiles),
        ];
        let sizes: Vec<Vec<usize>> = plans.iter().map(|plan| plan.scratch(backward)).collect();
        (0..sizes[0].len()).map(|i| sizes.iter().map(|s| s[i]).max().unwrap_or(0)).collect()
    }

    /// Element counts of the buffers the convolution keeps; the last four only with a backward pass.
    pub fn scratch(&self, backward: bool) -> Vec<usize> {
        let s = &self.shape;
        let (xh, xw) = self.x_last_size();
        let (dh, dw) = self.dy_last_size();
        let blocks = |tile: (u32, u32), pad: usize, quads: usize| {
            pad / tile.0 as usize * weight_blocks(self.taps(), quads).len() * block_floats(tile.0)
                + uniform_tail(tile.0)
        };
        let forward_weights = match self.forward_bands() {
            Some(regions) if !bands_share_packing(self.x_quads) => {
                let packings: usize = regions.iter().map(|(r, c)| self.forward_packing(r.taps * c.taps)).sum();
                packings + uniform_tail(self.forward_tile.0)
            }
            _ => blocks(self.forward_tile, self.forward_pad(), self.x_quads),
        };
        let mut sizes = vec![s.batch * xh * xw * 4 * self.x_quads, forward_weights];
        if backward {
            sizes.extend([
                s.batch * dh * dw * 4 * self.dy_quads,
                blocks(self.backward_tile, self.backward_pad(), self.dy_quads),
                s.batch * s.out_h * s.out_w * self.weight_pad(),
                self.weight_passes().iter().map(|pass| pass.partials).sum(),
            ]);
        }
        sizes
    }

    /// The parameters every kernel of this convolution shares.
    fn params(&self) -> TileParams {
        let s = &self.shape;
        let u = |v: usize| v as u32;
        TileParams {
            batch: u(s.batch),
            kernel_h: u(self.kernel_h),
            kernel_w: u(self.kernel_w),
            ky0: u(self.ky0),
            kx0: u(self.kx0),
            full_kernel_w: u(s.kernel_w),
            full_taps: u(s.kernel_h * s.kernel_w),
            weight_out: u(s.c_out),
            weight_in: u(s.c_in),
            fold_channels: self.fold.map_or(0, |f| u(f.channels)),
            fold_kernel_w: self.fold.map_or(0, |f| u(f.kernel_w)),
            fold_stride: self.fold.map_or(0, |f| u(f.stride)),
            fold_left: self.fold.map_or(0, |f| u(f.pad)),
            ..TileParams::default()
        }
    }

    /// The forward convolution's view: the padded input copy to the output.
    fn forward_params(&self) -> TileParams {
        let s = &self.shape;
        let (xh, xw) = self.x_last_size();
        let u = |v: usize| v as u32;
        TileParams {
            in_h: u(xh),
            in_w: u(xw),
            in_quads: u(self.x_quads),
            c_out: u(s.c_out),
            out_h: u(s.out_h),
            out_w: u(s.out_w),
            stride_h: u(s.cfg.stride.0),
            stride_w: u(s.cfg.stride.1),
            ..self.params()
        }
    }

    /// Copies x (times the gate, where there is one) to the padded channels-last layout
    /// (forward and weight gradient both read it).
    fn copy_x(&self, gpu: &Gpu, x: &GpuSlice, gate: Option<&GpuSlice>, scratch: &[&GpuSlice]) -> Dispatch {
        let s = &self.shape;
        let params = TileParams {
            channels: s.c_in as u32,
            src_h: s.h as u32,
            src_w: s.w as u32,
            dilation_h: 1,
            dilation_w: 1,
            top: self.pad_h,
            left: self.pad_w,
            gate: gate.is_some() as u32,
            ..self.forward_params()
        };
        let dst = scratch[X_LAST];
        // Without a gate the binding is not read: any buffer does.
        let buffers = [x, dst, gate.unwrap_or(x)];
        if let Some(fold) = self.fold {
            assert!(gate.is_none(), "a convolution whose columns are folded has no gate");
            let params = TileParams { src_w: fold.width as u32, ..params };
            return gpu.dispatch("conv_tile", "to_channels_last_folded", &params, &buffers, grid(dst.len() / 4));
        }
        // Only this copy writes X_LAST, always placing x the same way: its padding stays zero.
        copy_to_channels_last(gpu, &params, buffers, dst.len() / 4)
    }

    /// y = act(conv(x * gate, w) + bias + residual) ([`Fusion`]): one pass over every used tap, or
    /// one per band of outputs that read the same taps ([`Band`]), reading one packing of every
    /// used tap where blocks hold a tap each ([`bands_share_packing`]), else each with the
    /// weights of its taps packed apart. The packing reads w alone (with `child`, w is the
    /// parent and the attentions are read too) and is [`Forward::prepare`]; each band packs
    /// into a region of its own, so packed weights keep from one run to the next.
    pub fn forward(
        &self,
        gpu: &Gpu,
        [x, w, bias, y]: [&GpuSlice; 4],
        has_bias: bool,
        fusion: Fusion<&GpuSlice>,
        child: Option<ChildPacking>,
        scratch: &[&GpuSlice],
    ) -> Forward {
        assert!(child.is_none() || self.packs_child(), "this convolution cannot pack a child from its parent");
        // A child over its parent's packing packs nothing; one packed here is packed as a child.
        let parent_packed = child.filter(|c| c.parent_packed);
        let over_parent = parent_packed.is_some();
        assert!(!over_parent || self.runs_child_over_parent_packing(), "no child tiles run this plan");
        let child = child.filter(|c| !c.parent_packed);
        let params = TileParams { out_pad: self.forward_pad() as u32, ..self.forward_params() };
        let stores = Stores { activation: fusion.activation, bias: has_bias, residual: fusion.residual.is_some() };
        // Without a residual the binding is not read: any read-only buffer does.
        let residual = fusion.residual.unwrap_or(scratch[X_LAST]);
        let mut forward = Forward { prepare: Vec::new(), run: vec![self.copy_x(gpu, x, fusion.gate, scratch)] };
        let pack = |params: TileParams, packed: &GpuSlice| {
            pack_dispatch(gpu, params, self.forward_tile.0, [w, packed], Packing::Forward, child)
        };
        // Every used tap packed once, with the input gradient's packing where it comes from the
        // same loads (and the graph has a backward pass: its buffer is there).
        let pack_all = |params: TileParams, packed: &GpuSlice| match self.backward_packed_by_forward() {
            Some(back) if scratch.len() > W_BACKWARD => {
                let back_packed = scratch[W_BACKWARD].range(0, self.backward_packing(back.kernel_h * back.kernel_w));
                let params = TileParams { tile: self.forward_tile.0, ..params };
                Some(pack_forward_quads(gpu, params, [w, packed], Some((back, &back_packed)), child))
            }
            _ => pack(params, packed),
        };
        // Bands run one after another (their packing is prepared before): each reads the
        // textures the one before filled, where it reads the same buffers.
        let run = |params: TileParams, packed: &GpuSlice, earlier: Option<&Dispatch>| {
            let buffers = [scratch[X_LAST], packed, bias, y, residual];
            let child = parent_packed.as_ref().map(|c| (c, Packing::Forward));
            tile_dispatches(gpu, params, self.forward_tile, buffers, self.forward_reads, stores, earlier, child)
        };
        // The scratch may be sized for another device's wider packing.
        let all_taps = scratch[W_FORWARD].range(0, self.forward_packing(self.taps()));
        let pack_all =
            |params: TileParams, packed: &GpuSlice| if over_parent { None } else { pack_all(params, packed) };
        let Some(regions) = self.forward_bands() else {
            forward.prepare.extend(pack_all(params, &all_taps));
            let run = run(params, &all_taps, forward.run.last());
            forward.run.extend(run);
            return forward;
        };
        if bands_share_packing(self.x_quads) {
            forward.prepare.extend(pack_all(params, &all_taps));
            for (row, col) in regions {
                let band = sharing_packing(
                    self.band_params(params, &row, &col),
                    (self.kernel_h, self.kernel_w),
                    (row.tap0, col.tap0),
                );
                let run = run(band, &all_taps, forward.run.last());
                forward.run.extend(run);
            }
            return forward;
        }
        let mut offset = 0;
        for (row, col) in regions {
            let (band, len) = (self.band_params(params, &row, &col), self.forward_packing(row.taps * col.taps));
            let packed = scratch[W_FORWARD].range(offset, len);
            forward.prepare.extend(pack(band, &packed));
            let run = run(band, &packed, forward.run.last());
            forward.run.extend(run);
            offset += len;
        }
        forward
    }

    /// `params` narrowed to one region of outputs (a row band by a column band): its outputs,
    /// the taps they read, where their windows start, and where they are stored in the whole
    /// output (the forward pass's y; the weight gradient's dy pixels).
    fn band_params(&self, params: TileParams, row: &Band, col: &Band) -> TileParams {
        let s = &self.shape;
        let u = |v: usize| v as u32;
        TileParams {
            out_h: u(row.count),
            out_w: u(col.count),
            kernel_h: u(row.taps),
            kernel_w: u(col.taps),
            ky0: u(self.ky0 + row.tap0),
            kx0: u(self.kx0 + col.tap0),
            window_y0: u(row.first * s.cfg.stride.0 + row.tap0),
            window_x0: u(col.first * s.cfg.stride.1 + col.tap0),
            store_h: u(s.out_h),
            store_w: u(s.out_w),
            store_stride_h: 1,
            store_stride_w: 1,
            store_y0: u(row.first),
            store_x0: u(col.first),
            ..params
        }
    }

    /// The forward pass's bands (row band, column band), where splitting spares enough
    /// multiply-adds ([`worth_splitting`]); `None`: one pass.
    fn forward_bands(&self) -> Option<Vec<(Band, Band)>> {
        let s = &self.shape;
        let (rows, cols) = self.split_axes(bands);
        worth_splitting(&rows, &cols, self.kernel_h * s.out_h * self.kernel_w * s.out_w)
    }

    /// The weight gradient's regions of a convolution split into `bands` (the forward pass's):
    /// (row tap band, column tap band) where there are at most MAX_WEIGHT_PASSES of them,
    /// else the forward bands.
    fn weight_regions(&self, bands: Vec<(Band, Band)>) -> Vec<(Band, Band)> {
        let (rows, cols) = self.split_axes(tap_bands);
        match rows.len() * cols.len() <= MAX_WEIGHT_PASSES {
            true => regions_of(&rows, &cols),
            false => bands,
        }
    }

    /// The output rows and columns split by `split` ([`bands`] or [`tap_bands`]) over the used
    /// taps, real data lying past the padding.
    fn split_axes(&self, split: fn(usize, usize, usize, Range<i64>) -> Vec<Band>) -> (Vec<Band>, Vec<Band>) {
        let s = &self.shape;
        let data = |pad: i32, size: usize| pad as i64..pad as i64 + size as i64;
        (
            split(s.out_h, s.cfg.stride.0, self.kernel_h, data(self.pad_h, s.h)),
            split(s.out_w, s.cfg.stride.1, self.kernel_w, data(self.pad_w, s.w)),
        )
    }

    /// Floats of the forward weights packed for `taps` taps (at least one block, so that a
    /// band no tap reaches still binds a buffer).
    fn forward_packing(&self, taps: usize) -> usize {
        let blocks = weight_blocks(taps, self.x_quads).len().max(1);
        self.forward_pad() / self.forward_tile.0 as usize * blocks * block_floats(self.forward_tile.0)
    }

    /// The same for the input gradient's weights (`taps` taps of one phase or band).
    fn backward_packing(&self, taps: u32) -> usize {
        let blocks = weight_blocks(taps as usize, self.dy_quads).len().max(1);
        self.backward_pad() / self.backward_tile.0 as usize * blocks * block_floats(self.backward_tile.0)
    }

    /// The input gradient's pass over one phase (`row` x `col`), adding to dx or not.
    fn phase_params(&self, row: &InputPhase, col: &InputPhase, accumulate: bool) -> TileParams {
        let s = &self.shape;
        let u = |v: usize| v as u32;
        // Phases that place dy alike read one copy, in a frame as large as the largest phase's
        // (each reads only its own rows and columns of it).
        let (in_h, in_w) = match self.shared_dy_placement() {
            Some(_) => self.dy_last_size(),
            None => (row.copy_size(), col.copy_size()),
        };
        TileParams {
            in_h: u(in_h),
            in_w: u(in_w),
            in_quads: u(self.dy_quads),
            c_out: u(s.c_in),
            out_h: u(row.outputs),
            out_w: u(col.outputs),
            out_pad: u(self.backward_pad()),
            stride_h: 1,
            stride_w: 1,
            kernel_h: u(row.taps),
            kernel_w: u(col.taps),
            channels: u(s.c_out),
            src_h: u(s.out_h),
            src_w: u(s.out_w),
            dilation_h: 1,
            dilation_w: 1,
            top: -row.base,
            left: -col.base,
            accumulate: accumulate as u32,
            store_h: u(s.h),
            store_w: u(s.w),
            store_stride_h: u(s.cfg.stride.0),
            store_stride_w: u(s.cfg.stride.1),
            store_y0: u(row.first),
            store_x0: u(col.first),
            flip_h: u(self.kernel_h),
            flip_w: u(self.kernel_w),
            tap_step_h: u(s.cfg.stride.0),
            tap_step_w: u(s.cfg.stride.1),
            tap0_h: u(row.tap0),
            tap0_w: u(col.tap0),
            ..self.params()
        }
    }

    /// One input-gradient phase's bands, where splitting spares enough multiply-adds
    /// ([`worth_splitting`]); `None`: one pass.
    fn input_bands(&self, row: &InputPhase, col: &InputPhase) -> Option<Vec<(Band, Band)>> {
        let s = &self.shape;
        // dy's real rows lie at copy rows -base .. out_h - base (the rest is padding).
        let data = |phase: &InputPhase, size: usize| -phase.base as i64..size as i64 - phase.base as i64;
        let row_bands = bands(row.outputs, 1, row.taps, data(row, s.out_h));
        let col_bands = bands(col.outputs, 1, col.taps, data(col, s.out_w));
        worth_splitting(&row_bands, &col_bands, row.taps * row.outputs * col.taps * col.outputs)
    }

    /// Whether the forward packing may compute a KernelDNA child from its parent
    /// ([`ChildPacking`]): every read of the weight is `pack_weight_forward_quads`, which packs
    /// the forward pass's taps once and the input gradient's from the same loads.
    pub fn packs_child(&self) -> bool {
        self.backward_packed_by_forward().is_some()
    }

    /// Whether a KernelDNA child's convolution of this plan can run over its parent's packings
    /// ([`ChildPacking::parent_packed`]), which a convolution of the same plan packs: one
    /// forward packing of every used tap and one input-gradient packing, both read by subgroup
    /// tiles, which have `_child` twins.
    pub fn runs_child_over_parent_packing(&self) -> bool {
        let subgroups = |reads| matches!(reads, WeightReads::SubgroupStorage | WeightReads::SubgroupInputs);
        self.packs_child() && subgroups(self.forward_reads) && subgroups(self.backward_reads)
    }

    /// The floats of the packings a KernelDNA parent's convolution shares with its children's
    /// (forward, then input gradient), as large as any device's plan needs
    /// ([`GemmPlan::scratch_for_any_device`]).
    pub fn shared_packing_sizes(shape: &Conv2dShape) -> [usize; 2] {
        let sizes = Self::scratch_for_any_device(shape, true);
        [sizes[W_FORWARD], sizes[W_BACKWARD]]
    }

    /// Scratch sizes ([`GemmPlan::scratch_for_any_device`]) less the packings, for a
    /// convolution that binds shared ones ([`GemmPlan::with_shared_packing`]).
    pub fn without_packings(mut sizes: Vec<usize>) -> Vec<usize> {
        sizes[W_FORWARD] = 0;
        if sizes.len() > W_BACKWARD {
            sizes[W_BACKWARD] = 0;
        }
        sizes
    }

    /// `scratch` (the convolution's buffers) with its packings those in `shared` (a buffer of
    /// [`GemmPlan::shared_packing_sizes`]: forward, then input gradient, where the scratch
    /// has one).
    pub fn with_shared_packing(shape: &Conv2dShape, scratch: &[&GpuSlice], shared: &GpuSlice) -> Vec<GpuSlice> {
        let [forward, backward] = Self::shared_packing_sizes(shape);
        let mut out: Vec<GpuSlice> = scratch.iter().map(|&s| s.clone()).collect();
        out[W_FORWARD] = shared.range(0, forward);
        if out.len() > W_BACKWARD {
            out[W_BACKWARD] = shared.range(forward, backward);
        }
        out
    }

    /// The input gradient's weight packing where the forward packing writes it from the same
    /// loads (`pack_weight_forward_quads`): the forward pass packs every used tap by quads
    /// once, and the input gradient is one phase (no stride) that reads one packing of every
    /// tap. Its pass parameters, tile set; `None` elsewhere.
    fn backward_packed_by_forward(&self) -> Option<TileParams> {
        let forward = self.forward_params();
        let forward_once = self.forward_bands().is_none() || bands_share_packing(self.x_quads);
        let (rows, cols) = self.input_phases();
        let ([row], [col]) = (&rows[..], &cols[..]) else { return None };
        let backward = TileParams { tile: self.backward_tile.0, ..self.phase_params(row, col, false) };
        let backward_once = self.input_bands(row, col).is_none() || bands_share_packing(self.dy_quads);
        (packs_by_quads(&forward) && forward_once && row.taps * col.taps > 0 && backward_once).then_some(backward)
    }

    /// dx (+)= the gradient to the input: the forward kernel over dy padded by kernel - 1 - pad,
    /// with the weights transposed and flipped; with a stride, once per phase ([`InputPhase`]),
    /// each writing its own input positions.
    ///
    /// With `child` over its parent's packing ([`ChildPacking::parent_packed`]), the `_child`
    /// tiles read the parent's input-gradient packing and multiply by the child's attentions.
    pub fn backward_input(
        &self,
        gpu: &Gpu,
        [dy, w, dx]: [&GpuSlice; 3],
        accumulate: bool,
        child: Option<ChildPacking>,
        scratch: &[&GpuSlice],
    ) -> Vec<Dispatch> {
        assert!(self.fold.is_none(), "a convolution whose columns are folded has no input gradient");
        let child = child.filter(|c| c.parent_packed);
        assert!(child.is_none() || self.runs_child_over_parent_packing(), "no child tiles run this plan");
        let s = &self.shape;
        let u = |v: usize| v as u32;
        let dy_last = scratch[DY_LAST_PADDED];
        let (rows, cols) = self.input_phases();
        // Weights the forward pass packed for this pass too are not packed again.
        let prepacked = self.backward_packed_by_forward().is_some();
        // Where every phase places dy alike, one copy serves them all (`phase_params`).
        let shared = self.shared_dy_placement().is_some();
        let mut copied = false;
        let mut out = Vec::new();
        for row in &rows {
            for col in &cols {
                // A phase no tap reaches adds nothing: it only writes zeros, where dx is not
                // added to.
                let reached = row.taps * col.taps > 0;
                if !reached && accumulate {
                    continue;
                }
                let params = self.phase_params(row, col, accumulate);
                // No gate: the binding is not read. The copy's padding stays zero where every
                // run places dy the same way (one copy). A phase no tap reaches (three of a 1x1
                // kernel's four at stride 2) reads no dy: it has no copy.
                let buffers = [dy, dy_last, dy];
                let vec4s = s.batch * (params.in_h * params.in_w) as usize * self.dy_quads;
                if reached && !copied {
                    out.push(match shared {
                        true => copy_to_channels_last(gpu, &params, buffers, vec4s),
                        false => gpu.dispatch("conv_tile", "to_channels_last", &params, &buffers, grid(vec4s)),
                    });
                    copied = shared;
                }
                // The kernel's bias and residual bindings are read only when asked for: any
                // buffer does. Passes and bands run one after another through the same
                // packed-weight buffer, each packing the taps it reads or reading the phase's
                // (`packing`: the packing's parameters; `packs`: whether this pass runs it). A
                // pass that packs nothing reads the textures of the pass before it (`earlier`)
                // where it reads the same buffers.
                let pass = |params: TileParams, packing: TileParams, packs: bool, earlier: Option<&Dispatch>| {
                    let taps = packing.kernel_h * packing.kernel_w;
                    let packed = scratch[W_BACKWARD].range(0, self.backward_packing(taps));
                    let (tile, reads) = (self.backward_tile, self.backward_reads);
                    let pack = (packs && !prepacked)
                        .then(|| pack_dispatch(gpu, packing, tile.0, [w, &packed], Packing::Backward, None))
                        .flatten();
                    let earlier = earlier.filter(|_| pack.is_none());
                    let buffers = [dy_last, &packed, w, dx, dy_last];
                    let child = child.as_ref().map(|c| (c, Packing::Backward));
                    let tiles = tile_dispatches(gpu, params, tile, buffers, reads, Stores::default(), earlier, child);
                    pack.into_iter().chain(tiles).collect::<Vec<_>>()
                };
                let Some(regions) = self.input_bands(row, col) else {
                    let pass = pass(params, params, true, out.last());
                    out.extend(pass);
                    continue;
                };
                let share = bands_share_packing(self.dy_quads);
                for (i, (rb, cb)) in regions.into_iter().enumerate() {
                    let band = TileParams {
                        out_h: u(rb.count),
                        out_w: u(cb.count),
                        kernel_h: u(rb.taps),
                        kernel_w: u(cb.taps),
                        tap0_h: u(row.tap0 + s.cfg.stride.0 * rb.tap0),
                        tap0_w: u(col.tap0 + s.cfg.stride.1 * cb.tap0),
                        window_y0: u(rb.first + rb.tap0),
                        window_x0: u(cb.first + cb.tap0),
                        store_y0: u(row.first + s.cfg.stride.0 * rb.first),
                        store_x0: u(col.first + s.cfg.stride.1 * cb.first),
                        ..params
                    };
                    let pass = match share {
                        // The first band packs the phase's taps.
                        true => {
                            let band = sharing_packing(band, (row.taps, col.taps), (rb.tap0, cb.tap0));
                            pass(band, params, i == 0, out.last())
                        }
                        false => pass(band, band, true, out.last()),
                    };
                    out.extend(pass);
                }
            }
        }
        out
    }

    /// The weight gradient's parameters over every output pixel.
    fn weight_params(&self) -> TileParams {
        TileParams {
            out_pad: self.weight_pad() as u32,
            chunks: self.chunks as u32,
            chunk_len: self.chunk_len as u32,
            ..self.forward_params()
        }
    }

    /// The passes of the weight gradient: one, or where the forward pass is split into bands,
    /// one per region of [`tap_bands`], each with its partial sums in a region of their own
    /// (consecutive, from the first).
    fn weight_passes(&self) -> Vec<WeightPass> {
        let s = &self.shape;
        let u = |v: usize| v as u32;
        let params = self.weight_params();
        let passes: Vec<TileParams> = match self.forward_bands() {
            None => vec![params],
            Some(bands) => self
                .weight_regions(bands)
                .iter()
                .map(|(row, col)| {
                    // The band's pixels in as many chunks as the whole pass would take (or fewer).
                    let total = s.batch * row.count * col.count;
                    let chunk_len = total.div_ceil(self.chunks);
                    TileParams {
                        chunks: u(total.div_ceil(chunk_len)),
                        chunk_len: u(chunk_len),
                        ..self.band_params(params, row, col)
                    }
                })
                .collect(),
        };
        let mut offset = 0;
        passes
            .into_iter()
            .map(|params| {
                let taps = (params.kernel_h * params.kernel_w) as usize;
                let partials = params.chunks as usize * self.weight_pad() * taps * 4 * self.x_quads;
                let pass = WeightPass { params, offset, partials };
                offset += partials;
                pass
            })
            .collect()
    }

    /// The reduction of the passes' partial sums into dw where they lie where
    /// [`GemmPlan::partial_strides`] finds none: weights whose input channels come in fours and
    /// whose kernel is 3x3 load and store a whole (output channel, input quad) as vec4s.
    fn reduce_entry(&self) -> &'static str {
        let s = &self.shape;
        // Folded columns are unfolded by the general kernel's weight_offset.
        match (s.c_in.is_multiple_of(4) && self.fold.is_none(), s.kernel_h, s.kernel_w) {
            (true, 3, 3) => "reduce_weight_partials_3x3",
            _ => "reduce_weight_partials",
        }
    }

    /// dw (+)= the gradient to the weight, in chunk partial sums added in a fixed order. Reads
    /// the channels-last copy of x that [`GemmPlan::forward`] left in the scratch (a step runs
    /// the forward pass before the backward, and nothing else writes an op's scratch).
    ///
    /// With `unreduced` ([`GemmPlan::unreduced_weight_gradient`]; not accumulating), the
    /// passes' sums go straight into dw in their own layout and nothing reduces them.
    ///
    /// With `dy_copied` (the input gradient ran first, [`GemmPlan::backward_input`]), its copy of
    /// dy serves here too where it holds the whole of dy ([`GemmPlan::dy_frame`]).
    pub fn backward_weight(
        &self,
        gpu: &Gpu,
        [dy, dw]: [&GpuSlice; 2],
        accumulate: bool,
        unreduced: bool,
        dy_copied: bool,
        scratch: &[&GpuSlice],
    ) -> Vec<Dispatch> {
        assert!(
            !unreduced || (!accumulate && self.unreduced_weight_gradient().is_some()),
            "this weight gradient cannot be left unreduced"
        );
        let partials = if unreduced { dw } else { scratch[PARTIALS] };
        let passes = self.weight_passes();
        let frame = self.dy_frame().filter(|_| dy_copied);
        let mut out = Vec::new();
        let dy_last = match frame {
            Some(_) => scratch[DY_LAST_PADDED],
            None => {
                let pixels = self.shape.out_h * self.shape.out_w;
                let buffers = [dy, scratch[DY_LAST]];
                let params = self.weight_params();
                out.push(match pixels.is_multiple_of(4) {
                    // dy through a texture where the device reads streams so.
                    true => {
                        let entries = ["gradient_channels_last_quads", "gradient_channels_last_quads_textured"];
                        let workgroups = grid(scratch[DY_LAST].len() / 16);
                        gpu.dispatch_streaming(None, "conv_tile", entries, &params, &buffers, &[dy], workgroups)
                    }
                    false => {
                        let workgroups = grid(scratch[DY_LAST].len() / 4);
                        gpu.dispatch("conv_tile", "gradient_channels_last", &params, &buffers, workgroups)
                    }
                });
                scratch[DY_LAST]
            }
        };
        let mut bands = [[0; 4]; MAX_WEIGHT_PASSES];
        for (band, pass) in bands.iter_mut().zip(&passes) {
            let p = &pass.params;
            let taps = p.ky0 | p.kernel_h << 8 | p.kx0 << 16 | p.kernel_w << 24;
            *band = [taps, (pass.offset / 4) as u32, p.chunks, 0];
            // A band no tap reaches adds nothing.
            if pass.partials > 0 {
                let region = partials.range(pass.offset, pass.partials);
                let mut params = pass.params;
                if let Some([h, w, top, left]) = frame {
                    // dy's pixels within the input gradient's frame.
                    [params.store_h, params.store_w] = [h, w].map(|v| v as u32);
                    params.store_y0 += top as u32;
                    params.store_x0 += left as u32;
                }
                // Passes write only their partial sums: each reads the textures of x and dy
                // that the one before filled.
                let sums = self.weight_partial_sums(gpu, &params, [scratch[X_LAST], dy_last, &region], out.last());
                out.push(sums);
            }
        }
        if unreduced {
            return out;
        }
        let pass_per_tap = self.pass_per_tap(&passes);
        let mut reduce = TileParams {
            accumulate: accumulate as u32,
            band_count: passes.len() as u32,
            pass_per_tap: pass_per_tap as u32,
            bands,
            ..self.weight_params()
        };
        let invocations = grid(self.shape.c_out * self.x_quads);
        let Some([co, tap, chunk]) = self.partial_strides(&passes, pass_per_tap) else {
            out.push(gpu.dispatch("conv_tile", self.reduce_entry(), &reduce, &[partials, dw], invocations));
            return out;
        };
        [reduce.co_stride, reduce.tap_stride, reduce.chunk_stride] = [co, tap, chunk].map(|v| v as u32);
        reduce.chunks = passes[0].params.chunks;
        // The strided reduction streams through the sums the passes wrote (from the first on),
        // through a texture where the device reads streams so.
        let written = passes.iter().map(|pass| pass.offset + pass.partials).max().unwrap_or(0);
        let entries = match self.shape.kernel_h {
            1 => ["reduce_weight_partials_1x1", "reduce_weight_partials_1x1_textured"],
            _ => ["reduce_weight_partials_3x3_strided", "reduce_weight_partials_3x3_strided_textured"],
        };
        let sums = partials.range(0, written);
        out.push(gpu.dispatch_streaming(None, "conv_tile", entries, &reduce, &[partials, dw], &[&sums], invocations));
        out
    }

    /// Where the input gradient's copy of dy holds all of dy, densely, as the weight gradient
    /// reads it: one copy for every phase ([`GemmPlan::shared_dy_placement`]), dy placed whole
    /// at (top, left) of its frame, with channels in whole weight tiles (the copy's channel
    /// stride is the weight gradient's). That frame's (rows, columns, top, left).
    fn dy_frame(&self) -> Option<[usize; 4]> {
        let s = &self.shape;
        let (top, left) = self.shared_dy_placement()?;
        let (top, left) = (usize::try_from(top).ok()?, usize::try_from(left).ok()?);
        let (h, w) = self.dy_last_size();
        let whole = top + s.out_h <= h && left + s.out_w <= w;
        let channels = 4 * self.dy_quads == self.weight_pad();
        (whole && channels).then_some([h, w, top, left])
    }

    /// Where every phase of the input gradient that some tap reaches places dy alike, (top,
    /// left) of that placement: then [`GemmPlan::backward_input`] copies dy once, into a frame of
    /// [`GemmPlan::dy_last_size`].
    fn shared_dy_placement(&self) -> Option<(i32, i32)> {
        let (rows, cols) = self.input_phases();
        Some((-shared_base(&rows)?, -shared_base(&cols)?))
    }

    /// Where the weight gradient, left as the passes sum it, is one [c_out][tap][input quad]
    /// array of vec4s as large as the weight, every element written by one pass: one chunk,
    /// every tap reached, no padding channels. The vec4s between output channels and between
    /// taps; a consumer that reads that layout spares the reduction
    /// (`modulate_backward_3x3_serial`).
    pub fn unreduced_weight_gradient(&self) -> Option<[usize; 2]> {
        let s = &self.shape;
        let passes = self.weight_passes();
        let full_taps = s.kernel_h * s.kernel_w;
        let [co, tap, _] = self.partial_strides(&passes, self.pass_per_tap(&passes))?;
        let whole = passes.iter().map(|pass| pass.partials).sum::<usize>() == s.c_out * s.c_in * full_taps;
        let reached = passes.iter().all(|pass| pass.partials > 0 && pass.params.chunks == 1);
        (whole && reached && self.weight_pad() == s.c_out && self.taps() == full_taps).then_some([co, tap])
    }

    /// Whether the weight gradient's passes are one per tap of the whole kernel.
    fn pass_per_tap(&self, passes: &[WeightPass]) -> bool {
        let full_taps = self.shape.kernel_h * self.shape.kernel_w;
        passes.len() == full_taps && passes.iter().all(|pass| pass.params.kernel_h * pass.params.kernel_w == 1)
    }

    /// Where each tap of a 1x1 or 3x3 kernel takes its sums from one pass (one pass over the
    /// whole kernel, or one pass of one chunk per tap), the vec4s between output channels, taps
    /// and chunks of those sums: the reduction then finds them with no pass table.
    fn partial_strides(&self, passes: &[WeightPass], pass_per_tap: bool) -> Option<[usize; 3]> {
        let s = &self.shape;
        let kernel = (s.kernel_h, s.kernel_w);
        if !s.c_in.is_multiple_of(4) || self.fold.is_some() || (kernel != (1, 1) && kernel != (3, 3)) {
            return None;
        }
        let taps = |pass: &WeightPass| (pass.params.kernel_h * pass.params.kernel_w) as usize;
        let q = self.x_quads;
        match passes {
            // [chunk][weight_pad][in_quads]
            [pass] if kernel == (1, 1) && taps(pass) == 1 => Some([q, q, self.weight_pad() * q]),
            // [chunk][weight_pad][tap][in_quads]
            [pass] if taps(pass) == 9 => Some([9 * q, q, self.weight_pad() * 9 * q]),
            // Pass t's [weight_pad][in_quads], the passes one after another.
            _ if pass_per_tap && passes.iter().all(|pass| pass.params.chunks == 1) => {
                Some([q, self.weight_pad() * q, 0])
            }
            _ => None,
        }
    }

    /// One pass's partial sums [chunk][weight_pad][used tap][4 x_quads] into `partials`
    /// (`earlier`: as [`tile_dispatches`] takes it).
    fn weight_partial_sums(
        &self,
        gpu: &Gpu,
        params: &TileParams,
        buffers: [&GpuSlice; 3],
        earlier: Option<&Dispatch>,
    ) -> Dispatch {
        let taps_used = (params.kernel_h * params.kernel_w) as usize;
        match self.weight_kernel {
            WeightKernel::WorkgroupTiles => {
                let workgroups = [
                    (taps_used * self.x_quads.div_ceil(SHARED_CHANNELS as usize / 4)) as u32,
                    self.weight_pad().div_ceil(SHARED_CHANNELS as usize) as u32,
                    params.chunks,
                ];
                gpu.dispatch("conv_tile", "conv_shared_weight", params, &buffers, workgroups)
            }
            kernel => {
                let lanes = taps_used * (4 * self.x_quads / self.weight_inputs as usize);
                let workgroups = [
                    lanes.div_ceil(gpu.tile_lanes as usize) as u32,
                    (self.weight_pad() / WEIGHT_TILE_OUT as usize) as u32,
                    params.chunks,
                ];
                let entry = weight_entry(self.weight_inputs);
                match kernel {
                    // x and dy read from textures, as the forward tiles read theirs.
                    WeightKernel::SubgroupRegisters => {
                        let textured = params.reading_textures(gpu);
                        let textures = [buffers[0], buffers[1]];
                        gpu.dispatch_with_textures_after(
                            earlier,
                            "conv_tile_subgroup",
                            entry,
                            &textured,
                            &buffers,
                            &textures,
                            workgroups,
                        )
                    }
                    _ => gpu.dispatch("conv_tile", entry, params, &buffers, workgroups),
                }
            }
        }
    }
}

/// One pass of the weight gradient: its parameters, and where its partial sums lie in the
/// partials scratch (floats).
struct WeightPass {
    params: TileParams,
    offset: usize,
    partials: usize,
}

#[cfg(test)]
mod tests {
    use super::{Band, InputPhase, bands, tap_bands};
    use std::collections::BTreeSet;
    use std::ops::Range;

    /// Every (input row, dy row, tap) term of a strided convolution's input gradient comes from
    /// exactly one phase, and every term a phase computes exists: dx[y] = sum over o, k with
    /// o * stride + k - pad = y of dy[o] * w[k].
    #[test]
    fn phases_cover_every_term_of_the_input_gradient_once() {
        for stride in 1..=4 {
            for kernel in 1..=5 {
                for pad in 0..kernel {
                    for size in 1..=9usize {
                        let Some(out) = (size + 2 * pad).checked_sub(kernel).map(|n| n / stride + 1) else {
                            continue;
                        };
                        let mut want = BTreeSet::new();
                        for o in 0..out {
                            for k in 0..kernel {
                                if let Some(y) = (o * stride + k).checked_sub(pad).filter(|&y| y < size) {
                                    want.insert((y, o, k));
                                }
                            }
                        }
                        let mut got = BTreeSet::new();
                        let phases = InputPhase::along(size, kernel, pad as i32, stride);
                        for ph in &phases {
                            // Bands of the phase's outputs: dy's real rows lie at -base .. out - base.
                            let data = -ph.base as i64..out as i64 - ph.base as i64;
                            for band in bands(ph.outputs, 1, ph.taps, data) {
                                for i in band.first..band.first + band.count {
                                    for j in band.tap0..band.tap0 + band.taps {
                                        let m = i as i32 + ph.base + j as i32;
                                        // The phase's flipped tap tap0 + stride * j is the weight's kernel - 1 - that.
                                        let k = kernel - 1 - (ph.tap0 + stride * j);
                                        assert!((0..out as i32).contains(&m), "a band reads dy's padding");
                                        assert!(got.insert((ph.first + stride * i, m as usize, k)), "a term twice");
                                    }
                                }
                            }
                        }
                        assert_eq!(got, want, "stride {stride}, kernel {kernel}, pad {pad}, size {size}");
                        let positions: usize = phases.iter().map(|ph| ph.outputs).sum();
                        assert_eq!(positions, size, "every input position belongs to one phase");
                    }
                }
            }
        }
    }

    /// A one-axis convolution geometry: stride, taps, the data's range in the padded input,
    /// outputs, and the (output, tap) terms whose input is real.
    type Geometry = (usize, usize, Range<i64>, usize, BTreeSet<(usize, usize)>);

    /// Every small one-axis convolution geometry.
    fn geometries() -> Vec<Geometry> {
        let mut out = Vec::new();
        for stride in 1..=3 {
            for kernel in 1..=5 {
                for pad in 0..kernel {
                    for size in 1..=9usize {
                        let Some(outputs) = (size + 2 * pad).checked_sub(kernel).map(|n| n / stride + 1) else {
                            continue;
                        };
                        let real = |o: usize, k: usize| (o * stride + k).checked_sub(pad).is_some_and(|y| y < size);
                        let terms = (0..outputs)
                            .flat_map(|o| (0..kernel).map(move |k| (o, k)))
                            .filter(|&(o, k)| real(o, k))
                            .collect();
                        out.push((stride, kernel, pad as i64..(pad + size) as i64, outputs, terms));
                    }
                }
            }
        }
        out
    }

    /// The (output, tap) terms `split` reads, each once.
    fn terms_read(split: &[Band]) -> BTreeSet<(usize, usize)> {
        let mut got = BTreeSet::new();
        for band in split {
            for o in band.first..band.first + band.count {
                for k in band.tap0..band.tap0 + band.taps {
                    assert!(got.insert((o, k)), "a term twice");
                }
            }
        }
        got
    }

    /// The forward pass's bands read every (output, tap) pair whose input is real exactly once,
    /// and no padding; every output lies in one band.
    #[test]
    fn forward_bands_read_every_real_input_once() {
        for (stride, kernel, data, outputs, terms) in geometries() {
            let all = bands(outputs, stride, kernel, data.clone());
            assert_eq!(all.iter().map(|b| b.count).sum::<usize>(), outputs, "every output in one band");
            assert_eq!(terms_read(&all), terms, "stride {stride}, kernel {kernel}, data {data:?}");
        }
    }

    /// The weight gradient's tap bands cover the same terms, at most one band per tap.
    #[test]
    fn tap_bands_cover_every_real_term_once() {
        for (stride, kernel, data, outputs, terms) in geometries() {
            let all = tap_bands(outputs, stride, kernel, data.clone());
            assert!(all.len() <= kernel, "at most a band per tap");
            assert_eq!(terms_read(&all), terms, "stride {stride}, kernel {kernel}, data {data:?}");
        }
    }
}
