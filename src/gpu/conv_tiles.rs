//! Instantiates the `//@template` entry points of `shaders/conv_tile.wgsl` per tile size.
//!
//! A template is an entry point whose name ends in `_C` (forward) or `_I` (weight gradient)
//! and whose body holds `//@` marker lines. Each size gets a copy with the suffix replaced by
//! the size and every marker replaced by straight-line code over named values: software
//! adapters keep a register block only when every access to it is static, and naga has no
//! loop unrolling to make that so.

/// Output channels per forward tile, and the pixels that go with each (512 results: on
/// lavapipe, 1024 run no faster and take LLVM minutes to compile, 256 run slower).
pub const FORWARD_TILES: [(u32, u32); 3] = [(16, 32), (32, 16), (64, 8)];
/// The one tile of the kernel whose lanes take output channels rather than pixels (passes over
/// few pixels, `conv_tile_forward_lanes_32x16`): 16 pixels, shared by the lanes of a workgroup
/// (two broadcast loads per eight lanes), by 32 output channels per lane.
pub const LANES_TILE: (u32, u32) = (32, 16);
/// Input channels per weight-gradient tile (32 output channels each). On lavapipe 8 runs
/// fastest: 16 and 32 keep more results than the caches hold and ran 10-40% slower.
pub const WEIGHT_TILES: [u32; 2] = [4, 8];
/// Pixels a weight-gradient tile takes per iteration of its loop over pixels: software adapters
/// store each running sum under the lane mask once per iteration, a load, blend and store that
/// one multiply-add per iteration would pay in full.
pub const WEIGHT_PIXELS_PER_STEP: u32 = 2;
/// Output channels of every weight-gradient tile (`WEIGHT_TILE_OUT` in the shader).
pub const WEIGHT_TILE_OUT: u32 = 32;
/// Invocations per workgroup of the tile kernels (`TILE_WORKGROUP` in the shader).
pub const TILE_WORKGROUP: u32 = 16;
/// Batch-wide pixels of one workgroup of `conv_shared_forward_T` and the output channels of
/// each of its T weight tiles (`SHARED_PIXELS`, `SHARED_CHANNELS` in the shader).
pub const SHARED_PIXELS: u32 = 128;
pub const SHARED_CHANNELS: u32 = 64;
/// Weight tiles per workgroup of the workgroup-memory forward kernel: one for convolutions of
/// up to 64 outputs, else two (twice the multiply-adds per workgroup-memory load).
pub const SHARED_TILES: [u32; 2] = [1, 2];

/// The workgroup-memory forward entry point for `tiles` weight tiles per workgroup.
pub fn shared_entry(tiles: u32) -> &'static str {
    match tiles {
        1 => "conv_shared_forward_1",
        2 => "conv_shared_forward_2",
        _ => panic!("no workgroup-memory forward kernel of {tiles} tiles"),
    }
}

/// The forward entry point for tiles of `channels` output channels x `pixels` pixels, with
/// the weights in uniform blocks or (`storage`) in one storage buffer.
pub fn forward_entry(channels: u32, pixels: u32, storage: bool) -> &'static str {
    match (channels, pixels, storage) {
        (16, 32, false) => "conv_tile_forward_16x32",
        (32, 16, false) => "conv_tile_forward_32x16",
        (64, 8, false) => "conv_tile_forward_64x8",
        (16, 32, true) => "conv_tile_forward_storage_16x32",
        (32, 16, true) => "conv_tile_forward_storage_32x16",
        (64, 8, true) => "conv_tile_forward_storage_64x8",
        _ => panic!("no forward tile of {channels} channels x {pixels} pixels"),
    }
}

/// The storage-weights forward entry point for tiles of `channels` x `pixels` that store each
/// channel's four pixels from a multiple of four as one vec4 ([`Forward::quads`]).
pub fn forward_quads_entry(channels: u32, pixels: u32) -> &'static str {
    match (channels, pixels) {
        (16, 32) => "conv_tile_forward_storage_16x32_quads",
        (32, 16) => "conv_tile_forward_storage_32x16_quads",
        (64, 8) => "conv_tile_forward_storage_64x8_quads",
        _ => panic!("no quad-storing forward tile of {channels} channels x {pixels} pixels"),
    }
}

/// The subgroup storage tile that runs `pass` of a KernelDNA child over its parent's packing
/// ([`Forward::child`]), storing pixel quads or not.
pub fn forward_child_entry(channels: u32, pixels: u32, quads: bool, pass: ChildPass) -> &'static str {
    use ChildPass::{Forward, InputGradient};
    match (channels, pixels, quads, pass) {
        (16, 32, false, Forward) => "conv_tile_forward_storage_16x32_child",
        (32, 16, false, Forward) => "conv_tile_forward_storage_32x16_child",
        (64, 8, false, Forward) => "conv_tile_forward_storage_64x8_child",
        (16, 32, true, Forward) => "conv_tile_forward_storage_16x32_quads_child",
        (32, 16, true, Forward) => "conv_tile_forward_storage_32x16_quads_child",
        (64, 8, true, Forward) => "conv_tile_forward_storage_64x8_quads_child",
        (16, 32, false, InputGradient) => "conv_tile_forward_storage_16x32_child_dx",
        (32, 16, false, InputGradient) => "conv_tile_forward_storage_32x16_child_dx",
        (64, 8, false, InputGradient) => "conv_tile_forward_storage_64x8_child_dx",
        (16, 32, true, InputGradient) => "conv_tile_forward_storage_16x32_quads_child_dx",
        (32, 16, true, InputGradient) => "conv_tile_forward_storage_32x16_quads_child_dx",
        (64, 8, true, InputGradient) => "conv_tile_forward_storage_64x8_quads_child_dx",
        _ => panic!("no child forward tile of {channels} channels x {pixels} pixels"),
    }
}

/// The entry point whose lanes take output channels ([`LANES_TILE`]).
pub const LANES_ENTRY: &str = "conv_tile_forward_lanes_32x16";

/// Its twin that runs `pass` of a KernelDNA child over its parent's packing.
pub fn lanes_child_entry(pass: ChildPass) -> &'static str {
    match pass {
        ChildPass::Forward => "conv_tile_forward_lanes_32x16_child",
        ChildPass::InputGradient => "conv_tile_forward_lanes_32x16_child_dx",
    }
}

/// The weight-gradient entry point for tiles of `inputs` input channels.
pub fn weight_entry(inputs: u32) -> &'static str {
    match inputs {
        4 => "conv_tile_weight_4",
        8 => "conv_tile_weight_8",
        _ => panic!("no weight-gradient tile of {inputs} input channels"),
    }
}

/// `source` with each template replaced by its instances; with `subgroups`, the kernels that
/// read values shared by a whole subgroup load them once per eight lanes and broadcast them
/// (for the family conv_tile_subgroup, compiled only where the adapter has subgroups of at
/// least eight lanes).
pub fn expand(source: &str, subgroups: bool) -> String {
    let mut out = String::with_capacity(source.len() * 8);
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line.trim().strip_prefix("//@template ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "//@end").collect();
        match kind {
            "forward" | "forward_storage" => {
                let storage = kind == "forward_storage";
                let weights = match (storage, subgroups) {
                    (true, true) => "texel_w",
                    (true, false) => "ts_w",
                    (false, _) => "tf_w",
                };
                let broadcast = storage && subgroups;
                for (channels, pixels) in FORWARD_TILES {
                    let tile =
                        Forward { channels, pixels, weights, broadcast, lanes: false, quads: false, child: None };
                    instantiate(&mut out, &body, "_C(", &format!("{channels}x{pixels}"), &tile);
                    if storage {
                        let tile = Forward { quads: true, ..tile };
                        instantiate(&mut out, &body, "_C(", &format!("{channels}x{pixels}_quads"), &tile);
                    }
                    // The subgroup tiles' twins that run a KernelDNA child over its parent's packing.
                    if broadcast {
                        for pass in [ChildPass::Forward, ChildPass::InputGradient] {
                            for quads in [false, true] {
                                let tile = Forward { child: Some(pass), quads, ..tile };
                                let size =
                                    format!("{channels}x{pixels}{}{}", ["", "_quads"][quads as usize], pass.suffix());
                                instantiate(&mut out, &body, "_C(", &size, &tile);
                            }
                        }
                    }
                }
            }
            "forward_lanes" => {
                let (channels, pixels) = LANES_TILE;
                let weights = if subgroups { "texel_w" } else { "ts_w" };
                let broadcast = subgroups;
                let tile = Forward { channels, pixels, weights, broadcast, lanes: true, quads: false, child: None };
                instantiate(&mut out, &body, "_C(", &format!("{channels}x{pixels}"), &tile);
                if subgroups {
                    for pass in [ChildPass::Forward, ChildPass::InputGradient] {
                        let tile = Forward { child: Some(pass), ..tile };
                        instantiate(&mut out, &body, "_C(", &format!("{channels}x{pixels}{}", pass.suffix()), &tile);
                    }
                }
            }
            "weight" => {
                for inputs in WEIGHT_TILES {
                    let tile = Weight { inputs, broadcast: subgroups };
                    instantiate(&mut out, &body, "_I(", &inputs.to_string(), &tile);
                }
            }
            "shared" => {
                for tiles in SHARED_TILES {
                    instantiate(&mut out, &body, "_T(", &tiles.to_string(), &Shared { tiles });
                }
            }
            other => panic!("conv_tile.wgsl: unknown template {other:?}"),
        }
    }
    out
}

/// The code a template's markers stand for, for one tile size.
trait Tile {
    fn marker(&self, name: &str) -> Vec<String>;
}

fn instantiate(out: &mut String, body: &[&str], suffix: &str, size: &str, tile: &dyn Tile) {
    for line in body {
        let trimmed = line.trim();
        if let Some(marker) = trimmed.strip_prefix("//@") {
            let indent = &line[..line.len() - line.trim_start().len()];
            for code in tile.marker(marker) {
                out.push_str(indent);
                out.push_str(&code);
                out.push('\n');
            }
        } else {
            out.push_str(&line.replace(suffix, &format!("_{size}(")));
            out.push('\n');
        }
    }
}

/// `channels` output channels x `pixels` batch-wide pixels; results `a{pixel}_{quad}` (vec4
/// over four output channels), a step's weights `w{input lane}_{quad}`, its inputs `x{pixel}`.
struct Forward {
    channels: u32,
    pixels: u32,
    /// Where the weights come from: a buffer's name in the shader, or `texel_w` (a texture).
    weights: &'static str,
    /// Whether a subgroup shares loads ([`expand`]): the weights, or with `lanes` the inputs.
    /// Such kernels read the input copy and the weights as textures (`texel_x`, `texel_w`).
    broadcast: bool,
    /// Whether lanes take output channels and share their pixels (else the reverse).
    lanes: bool,
    /// Whether the tile's pixels come in fours that lie side by side in the output, so that
    /// it loads and stores each channel's four as one vec4 (`tf_y4`): a quarter of the stores
    /// of one value each, which software adapters pay per lane (the host checks the layout).
    quads: bool,
    /// The pass of a KernelDNA child the tile runs over its parent's packing, if it does
    /// (subgroup tiles only): each loaded weight vec4 times its tap's spatial factor (`cs`, per
    /// tap), then its filter factors (per output channel in a forward pass, `cf*`, found once;
    /// per input lane in an input gradient, `cb`, per step).
    child: Option<ChildPass>,
}

/// Which pass of a KernelDNA child a `_child` tile runs ([`Forward::child`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ChildPass {
    Forward,
    InputGradient,
}

impl ChildPass {
    /// The entry point name's suffix.
    fn suffix(self) -> &'static str {
        match self {
            ChildPass::Forward => "_child",
            ChildPass::InputGradient => "_child_dx",
        }
    }
}

/// The component of a vec4 that holds input lane `k`.
const LANE_COMPONENTS: [&str; 4] = ["x", "y", "z", "w"];

impl Forward {
    /// Of the weight vec4s a lane loads for its subgroup (lane m of group g loads name 8 g + m
    /// of the step's 4 x quads, input lane by channel quad), how many output channel quads a
    /// lane meets: the groups' filter factors repeat after as many.
    fn lane_channel_quads(&self) -> u32 {
        (self.channels / 4 / 8).max(1)
    }

    /// The `_child` tiles' filter factors found once per invocation: a forward pass's, of each
    /// weight vec4 the invocation loads.
    fn child_factors(&self) -> Vec<String> {
        let quads = self.channels / 4;
        match (self.child, self.lanes) {
            (Some(ChildPass::Forward), true) => {
                // Each lane loads its own tile's vec4s: name w{k}_{j}, output channel quad j.
                (0..quads).map(|j| format!("let cf{j} = tile_filter_factors(c0 + {}u, 1u);", 4 * j)).collect()
            }
            (Some(ChildPass::Forward), false) => (0..self.lane_channel_quads())
                .map(|g| {
                    let quad = format!("(({}u + (subgroup_lane & 7u)) % {quads}u)", 8 * g);
                    format!("let cf{g} = tile_filter_factors(c0 + 4u * {quad}, 1u);")
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A loaded weight vec4 `value` with a child's factors applied: `index` is its group of
    /// eight (broadcast loads) or its name's index (a lane's own loads).
    fn modulated(&self, value: String, index: usize) -> String {
        let quads = (self.channels / 4) as usize;
        let factor = match (self.child, self.lanes) {
            (Some(ChildPass::Forward), true) => format!("cf{}", index % quads),
            (Some(ChildPass::Forward), false) => format!("cf{}", index % self.lane_channel_quads() as usize),
            // A name's input lane is index / quads; a group's lanes share theirs where a group
            // of eight lies within one input lane's quads.
            (_, true) => format!("cb.{}", LANE_COMPONENTS[index / quads]),
            (_, false) if quads.is_multiple_of(8) => format!("cb.{}", LANE_COMPONENTS[8 * index / quads]),
            (_, false) => format!("lane_factor(cb, ({}u + (subgroup_lane & 7u)) / {quads}u)", 8 * index),
        };
        format!("(({value}) * cs) * {factor}")
    }
}

/// The entry point parameter that names the invocation's subgroup lane, when broadcasting.
fn lane_parameter(broadcast: bool) -> Vec<String> {
    if broadcast { vec!["@builtin(subgroup_invocation_id) subgroup_lane: u32,".into()] } else { vec![] }
}

/// `values` shared by every lane of a subgroup: `names[i] = wrap(source[first + i])`, loaded as
/// one vec4 per lane for each eight values and broadcast (`names.len()` a multiple of eight), or
/// loaded directly; `wrap` makes an expression of a loaded value and its group of eight (when
/// broadcast) or its index.
fn shared_loads(
    names: &[String],
    source: &str,
    first: &str,
    broadcast: bool,
    wrap: &dyn Fn(String, usize) -> String,
) -> Vec<String> {
    if !broadcast {
        return names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("let {name} = {};", wrap(load(source, &format!("{first} + {i}u")), i)))
            .collect();
    }
    assert!(names.len().is_multiple_of(8), "broadcast loads come in eights");
    let mut code = Vec::new();
    for (g, group) in names.chunks(8).enumerate() {
        let lanes = wrap(load(source, &format!("{first} + {}u + (subgroup_lane & 7u)", 8 * g)), g);
        code.push(format!("let {}_lanes = {lanes};", group[0]));
        code.push(
            group
                .iter()
                .enumerate()
                .map(|(m, name)| format!("let {name} = subgroupBroadcast({}_lanes, {m}u);", group[0]))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    code
}

/// Element `index` of `source`: a buffer, or a function that fetches a texel (`texel_*`).
fn load(source: &str, index: &str) -> String {
    match source.starts_with("texel_") {
        true => format!("{source}({index})"),
        false => format!("{source}[{index}]"),
    }
}

impl Tile for Forward {
    fn marker(&self, name: &str) -> Vec<String> {
        let quads = self.channels / 4;
        let mut code = Vec::new();
        match name {
            "sizes" => code.push(format!("const P: u32 = {}u; const C: u32 = {}u;", self.pixels, self.channels)),
            "lane" => code = lane_parameter(self.broadcast),
            "tap" if self.child.is_some() => code.push("let cs = tile_spatial_factor(tap);".into()),
            "tap" => {}
            "pixels" if self.lanes && self.broadcast => {
                // Lane m of each eight loads pixels m, m + 8, ... for the others.
                code.extend(
                    (0..self.pixels / 8)
                        .map(|g| format!("let lb{g} = window(min(q0 + {}u + (subgroup_lane & 7u), last));", 8 * g)),
                );
            }
            "pixels" => {
                code.extend((0..self.pixels).map(|i| format!("let b{i} = window(min(q0 + {i}u, last));")));
            }
            "declare" if self.quads => {
                // Each quad's place in the output; a quad's start for all its pixels.
                code.extend((0..self.pixels / 4).map(|g| format!("let o{g} = output_at(q0 + {}u);", 4 * g)));
                for g in 0..self.pixels / 4 {
                    for j in 0..quads {
                        code.push(format!("let s{g}_{j} = initial_forward_quads(o{g}, c0 + {}u);", 4 * j));
                        code.push(
                            (0..4)
                                .map(|m| format!("var a{}_{j} = s{g}_{j}[{m}];", 4 * g + m))
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                    }
                }
            }
            "declare" => {
                // Each pixel's place in the output, found once for all its loads and stores.
                code.extend((0..self.pixels).map(|i| format!("let o{i} = output_at(q0 + {i}u);")));
                for i in 0..self.pixels {
                    code.push(
                        (0..quads)
                            .map(|j| format!("var a{i}_{j} = initial_forward(o{i}, c0 + {}u);", 4 * j))
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                }
            }
            "step" => {
                let names: Vec<String> = (0..4).flat_map(|k| (0..quads).map(move |j| format!("w{k}_{j}"))).collect();
                if self.child == Some(ChildPass::InputGradient) {
                    code.push("let cb = tile_filter_factors(4u * quad, 2u);".into());
                }
                let wrap = |value: String, index: usize| match self.child {
                    Some(_) => self.modulated(value, index),
                    None => value,
                };
                code.extend(shared_loads(&names, self.weights, "w", self.broadcast && !self.lanes, &wrap));
                if self.lanes && self.broadcast {
                    for g in 0..self.pixels / 8 {
                        code.push(format!("let xl{g} = texel_x(lb{g} + off);"));
                        code.extend((0..8).map(|m| format!("let x{} = subgroupBroadcast(xl{g}, {m}u);", 8 * g + m)));
                    }
                } else if self.broadcast {
                    code.extend((0..self.pixels).map(|i| format!("let x{i} = texel_x(b{i} + off);")));
                } else {
                    code.extend((0..self.pixels).map(|i| format!("let x{i} = tf_x[b{i} + off];")));
                }
                for i in 0..self.pixels {
                    for j in 0..quads {
                        code.push(format!(
                            "a{i}_{j} += x{i}.x * w0_{j}; a{i}_{j} += x{i}.y * w1_{j}; a{i}_{j} += x{i}.z * w2_{j}; a{i}_{j} += x{i}.w * w3_{j};"
                        ));
                    }
                }
            }
            "store" if self.quads => {
                for g in 0..self.pixels / 4 {
                    for j in 0..quads {
                        let [a, b, c, d] = [0, 1, 2, 3].map(|m| format!("a{}_{j}", 4 * g + m));
                        code.push(format!(
                            "store_forward_quads(o{g}, c0 + {}u, mat4x4<f32>({a}, {b}, {c}, {d}));",
                            4 * j
                        ));
                    }
                }
            }
            "store" => {
                for i in 0..self.pixels {
                    for j in 0..quads {
                        code.push(format!("store_forward(o{i}, c0 + {}u, a{i}_{j});", 4 * j));
                    }
                }
            }
            other => panic!("conv_tile.wgsl: unknown forward marker {other:?}"),
        }
        if name == "declare" {
            code.extend(self.child_factors());
        }
        code
    }
}

/// 32 output channels x `inputs` input channels of one tap; results `a{out quad}_{in quad}`
/// (column k: output channel 4 * out quad + k over four input channels).
struct Weight {
    inputs: u32,
    /// Whether a subgroup shares its dy loads ([`expand`]).
    broadcast: bool,
}

impl Tile for Weight {
    fn marker(&self, name: &str) -> Vec<String> {
        let outs = WEIGHT_TILE_OUT / 4;
        let ins = self.inputs / 4;
        let mut code = Vec::new();
        match name {
            "sizes" => code.push(format!(
                "const I: u32 = {}u; const PIXELS_PER_STEP: u32 = {WEIGHT_PIXELS_PER_STEP}u;",
                self.inputs
            )),
            "lane" => code = lane_parameter(self.broadcast),
            "declare" => {
                for j in 0..outs {
                    code.push((0..ins).map(|i| format!("var a{j}_{i} = mat4x4<f32>();")).collect::<Vec<_>>().join(" "));
                }
            }
            "step" => {
                // With subgroups, x and dy come from textures (as the forward tiles' operands).
                let (dy, x) = if self.broadcast { ("texel_w", "texel_x") } else { ("tw_dy", "tw_x") };
                for u in 0..WEIGHT_PIXELS_PER_STEP {
                    // Pixel u of the step. Past the chunk's end (the first never is) its x loads
                    // as -0.0 and its dy as 0.0, so that it adds -0.0, which changes no sum.
                    let masked = |value: String, zero: &str| match u {
                        0 => value,
                        _ => format!("select(vec4<f32>({zero}), {value}, live{u})"),
                    };
                    if u > 0 {
                        code.push(format!("let live{u} = q + {u}u < end;"));
                    }
                    code.push(format!("let dq{u} = (walk.dp * p.out_pad + c0) / 4u; let xq{u} = walk.xq;"));
                    code.push("next_pixel(&walk);".into());
                    let names: Vec<String> = (0..outs).map(|j| format!("d{j}_{u}")).collect();
                    code.extend(shared_loads(&names, dy, &format!("dq{u}"), self.broadcast, &|v, _| masked(v, "0.0")));
                    for i in 0..ins {
                        code.push(format!("let x{i}_{u} = {};", masked(load(x, &format!("xq{u} + {i}u")), "-0.0")));
                    }
                }
                // Each result takes the step's pixels in order.
                for j in 0..outs {
                    for i in 0..ins {
                        code.push(
                            (0..WEIGHT_PIXELS_PER_STEP)
                                .map(|u| format!("a{j}_{i} += outer(x{i}_{u}, d{j}_{u});"))
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                    }
                }
            }
            "store" => {
                for j in 0..outs {
                    for i in 0..ins {
                        code.push(format!(
                            "store_weight_partial(chunk, tap, c0 + {}u, quad0 + {i}u, a{j}_{i});",
                            4 * j
                        ));
                    }
                }
            }
            other => panic!("conv_tile.wgsl: unknown weight marker {other:?}"),
        }
        code
    }
}

/// The workgroup-memory forward kernel with `tiles` weight tiles: results `a{tile}_{i}` (pixel
/// tp + 16 i, four channels of the tile), a step's weights `w{tile}_{input lane}`.
struct Shared {
    tiles: u32,
}

impl Tile for Shared {
    fn marker(&self, name: &str) -> Vec<String> {
        let mut code = Vec::new();
        match name {
            "sizes" => code.push(format!("const T: u32 = {}u;", self.tiles)),
            "declare" => {
                code.extend((0..8).map(|i| format!("let o{i} = output_at(q + {}u);", 16 * i)));
                for t in 0..self.tiles {
                    code.extend((0..8).map(|i| format!("var a{t}_{i} = initial_forward(o{i}, c0 + {}u);", 64 * t)));
                }
            }
            "step" => {
                for t in 0..self.tiles {
                    code.extend((0..4).map(|l| {
                        format!("let w{t}_{l} = shared_w[k * {}u + {}u + cq];", 64 * self.tiles, 64 * t + 16 * l)
                    }));
                }
                for i in 0..8 {
                    code.push(format!("let x{i} = shared_x[k * SHARED_PIXELS + tp + {}u];", 16 * i));
                    for t in 0..self.tiles {
                        code.push(format!(
                            "a{t}_{i} += x{i}.x * w{t}_0; a{t}_{i} += x{i}.y * w{t}_1; a{t}_{i} += x{i}.z * w{t}_2; a{t}_{i} += x{i}.w * w{t}_3;"
                        ));
                    }
                }
            }
            "store" => {
                for t in 0..self.tiles {
                    code.extend((0..8).map(|i| format!("store_forward(o{i}, c0 + {}u, a{t}_{i});", 64 * t)));
                }
            }
            other => panic!("conv_tile.wgsl: unknown shared marker {other:?}"),
        }
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_becomes_an_entry_point_without_markers() {
        let src = expand(include_str!("../../shaders/conv_tile.wgsl"), false);
        for (c, p) in FORWARD_TILES {
            assert!(src.contains(&format!("fn {}(", forward_entry(c, p, false))));
            assert!(src.contains(&format!("fn {}(", forward_entry(c, p, true))));
            assert!(src.contains(&format!("fn {}(", forward_quads_entry(c, p))));
        }
        for i in WEIGHT_TILES {
            assert!(src.contains(&format!("fn {}(", weight_entry(i))));
        }
        for t in SHARED_TILES {
            assert!(src.contains(&format!("fn {}(", shared_entry(t))));
        }
        assert!(src.contains(&format!("fn {LANES_ENTRY}(")));
        assert!(!src.contains("//@"), "a marker was left in the expanded source");
        assert!(!src.contains("_C(") && !src.contains("_I(") && !src.contains("_T("));
    }
}
