//! The WGSL sources, compiled into the binary. `shaders/common.wgsl` is prepended to each.

const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// Double-float arithmetic, for the families with reductions that cancel.
const DOUBLE_FLOAT: &str = include_str!("../../shaders/double_float.wgsl");
/// What the convolution families share (parameter struct, pixel tiles).
const CONV_COMMON: &str = include_str!("../../shaders/conv_common.wgsl");
/// The row kernels of small fully connected layers, whose forms over subgroups build on them.
const LINEAR: &str = include_str!("../../shaders/linear.wgsl");

/// What a family needs prepended besides common.wgsl.
fn preludes(family: &str) -> &'static [&'static str] {
    match family {
        "modulate" | "norm" => &[DOUBLE_FLOAT],
        "conv" | "depthwise" => &[CONV_COMMON],
        "linear_subgroup" => &[LINEAR],
        _ => &[],
    }
}

/// Every kernel family: (name, source without the common prelude).
pub const FAMILIES: &[(&str, &str)] = &[
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("conv", include_str!("../../shaders/conv.wgsl")),
    ("conv_tile", include_str!("../../shaders/conv_tile.wgsl")),
    // The same kernels where weights shared by a subgroup are loaded once per subgroup.
    ("conv_tile_subgroup", include_str!("../../shaders/conv_tile.wgsl")),
    ("depthwise", include_str!("../../shaders/depthwise.wgsl")),
    ("layer_scale", include_str!("../../shaders/layer_scale.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("linear", LINEAR),
    // Its kernels where a subgroup shares the loads of the rows its lanes all read.
    ("linear_subgroup", include_str!("../../shaders/linear_subgroup.wgsl")),
    ("loss", include_str!("../../shaders/loss.wgsl")),
    ("modulate", include_str!("../../shaders/modulate.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("router", include_str!("../../shaders/router.wgsl")),
    // A router's whole gate in one dispatch, for adapters with subgroups.
    ("router_subgroup", include_str!("../../shaders/router_subgroup.wgsl")),
];

/// The full source of a kernel family, preludes included.
pub fn source(family: &str) -> String {
    let (_, body) =
        FAMILIES.iter().find(|(name, _)| *name == family).unwrap_or_else(|| panic!("no shader family {family:?}"));
    // conv_tile's entry points are templates, instantiated per tile size.
    // (naga takes subgroup operations without WGSL's `enable subgroups`, and rejects it.)
    let body = match family {
        "conv_tile" => super::conv_tiles::expand(body, false),
        "conv_tile_subgroup" => super::conv_tiles::expand(body, true),
        _ => body.to_string(),
    };
    format!("{COMMON}\n{}\n{body}", preludes(family).join("\n"))
}

/// Parses and validates a family with naga, as wgpu will; returns naga's readable report.
pub fn validate(family: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let src = source(family);
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::SUBGROUP)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string(&src))?;
    Ok((module, info))
}

/// What one entry point of a family reads, found from the family parsed and validated once.
pub struct EntryUse {
    /// The bindings of group 0 that the entry actually uses, ascending.
    ///
    /// Kernels of one family share a parameter struct and declare their buffers side by side;
    /// an entry point may leave some of its conventional buffers unread (the parent-gradient
    /// kernel needs no parent values). wgpu derives each pipeline's layout from what the entry
    /// uses, so the bind group must hold exactly these bindings.
    pub bindings: Vec<u32>,
    /// Those of them it writes (storage buffers it may store to), ascending.
    pub written: Vec<u32>,
    /// Whether the entry reads any of [`STORE_CONSTANTS`] (in its own body or in a function it
    /// calls): what is left of them once the module is compacted to that entry alone.
    pub reads_store_constants: bool,
    /// Whether its workgroups are [`TILE_LANES`] invocations (the pipeline constant survives
    /// the compaction to this entry alone).
    pub sized_by_tile_lanes: bool,
}

/// The pipeline constant of the conv tiles whose workgroups are one vector of a software
/// adapter ([`super::Gpu::tile_lanes`]), as `shaders/conv_tile.wgsl` declares it.
pub const TILE_LANES: &str = "TILE_LANES";

/// The pipeline constants of [`super::Stores`], as `shaders/common.wgsl` declares them.
pub const STORE_CONSTANTS: [&str; 3] = ["STORED_ACTIVATION", "STORES_BIAS", "STORES_RESIDUAL"];

/// What `entry` of `family` reads ([`EntryUse`]).
pub fn entry_use(family: &str, entry: &str) -> EntryUse {
    let (mut module, info) = validate(family).unwrap_or_else(|report| panic!("{family}.wgsl is invalid:\n{report}"));
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .unwrap_or_else(|| panic!("{family}.wgsl has no entry point {entry:?}"));
    let uses = info.get_entry_point(index);
    // The bindings of the globals the entry uses as `used` says, ascending.
    let bindings_where = |used: fn(naga::valid::GlobalUse) -> bool| {
        let mut bindings: Vec<u32> = module
            .global_variables
            .iter()
            .filter(|(handle, _)| used(uses[*handle]))
            .filter_map(|(_, var)| var.binding.as_ref().map(|b| b.binding))
            .collect();
        bindings.sort_unstable();
        bindings
    };
    let bindings = bindings_where(|u| !u.is_empty());
    let written = bindings_where(|u| u.contains(naga::valid::GlobalUse::WRITE));
    module.entry_points.retain(|e| e.name == entry);
    naga::compact::compact(&mut module, naga::compact::KeepUnused::No);
    let reads_store_constants =
        module.overrides.iter().any(|(_, o)| o.name.as_deref().is_some_and(|name| STORE_CONSTANTS.contains(&name)));
    let sized_by_tile_lanes = module.overrides.iter().any(|(_, o)| o.name.as_deref() == Some(TILE_LANES));
    EntryUse { bindings, written, reads_store_constants, sized_by_tile_lanes }
}
