//! Adapter discovery and choice: which GPU (or software rasteriser) kdna runs on.

use anyhow::{Result, bail};

/// What kdna needs to know about an adapter, for `kdna devices` and for kernel choice.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
    pub timestamps: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// The fewest lanes a subgroup may have (0 without subgroups).
    pub subgroup_min_size: u32,
    pub max_storage_buffer_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
}

impl AdapterSummary {
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        AdapterSummary {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver,
            driver_info: info.driver_info,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: if features.contains(wgpu::Features::SUBGROUP) { info.subgroup_min_size } else { 0 },
            max_storage_buffer_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        }
    }
}

/// Help shown whenever no adapter can be found.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. Install a GPU driver with Vulkan support, \
or Mesa's software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`). \
`WGPU_BACKEND` (vulkan, metal, dx12, gl) limits the backends searched.";

pub fn instance() -> wgpu::Instance {
    // `with_env` honours WGPU_BACKEND and the other WGPU_* instance variables.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env())
}

/// Every adapter the instance can see, in wgpu's order.
pub fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Rank used to pick the default adapter: real GPUs first, then the fastest backend for them.
/// Vulkan ranks above GL because GL compute is slower and lacks timestamps (and on NVIDIA
/// Vulkan is the supported path).
fn preference(s: &AdapterSummary) -> (u8, u8) {
    let device = match s.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match s.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal => 0,
        wgpu::Backend::Dx12 => 1,
        wgpu::Backend::Gl => 2,
        _ => 3,
    };
    (device, backend)
}

/// Advice for a user whose adapter is a software rasteriser reached through OpenGL: on a
/// machine without a GPU that means Mesa's software Vulkan driver is missing, and kdna runs
/// on llvmpipe's GL path instead, without subgroups (slower kernels) and with GL's limits.
pub fn advice(chosen: &AdapterSummary) -> Option<String> {
    (chosen.device_type == wgpu::DeviceType::Cpu && chosen.backend == wgpu::Backend::Gl).then(|| {
        format!(
            "{} runs through OpenGL, where kdna's kernels run slower (no subgroups); Mesa's software \
             Vulkan driver runs them faster (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`)",
            chosen.name
        )
    })
}

/// Picks an adapter: the first whose name contains `filter` (case-insensitive) when given
/// (the `--adapter` flag, else `WGPU_ADAPTER_NAME`), otherwise the best by [`preference`].
pub fn choose(adapters: Vec<wgpu::Adapter>, filter: Option<&str>) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        bail!("{NO_ADAPTER_HELP}");
    }
    let env_filter = std::env::var("WGPU_ADAPTER_NAME").ok();
    let filter = filter.map(str::to_owned).or(env_filter);
    let mut ranked: Vec<(AdapterSummary, wgpu::Adapter)> =
        adapters.into_iter().map(|a| (AdapterSummary::of(&a), a)).collect();
    ranked.sort_by_key(|(s, _)| preference(s));
    match filter {
        Some(f) => {
            let needle = f.to_lowercase();
            let names: Vec<String> = ranked.iter().map(|(s, _)| format!("{} ({:?})", s.name, s.backend)).collect();
            ranked.into_iter().find(|(s, _)| s.name.to_lowercase().contains(&needle)).map(|(_, a)| a).ok_or_else(|| {
                anyhow::anyhow!(
                    "no adapter name contains {f:?} (from --adapter or WGPU_ADAPTER_NAME); \
                         available: {}",
                    names.join(", ")
                )
            })
        }
        None => Ok(ranked.into_iter().next().expect("non-empty").1),
    }
}

/// Worker threads beyond one per CPU core that kdna asks of Mesa's software drivers (llvmpipe,
/// lavapipe) when `LP_NUM_THREADS` is not set. Their default is one per core, beside which run
/// the driver's queue thread and kdna's own. On a 2-core machine a KernelDNA-ResNet18 training
/// step then took 0.49 s on average and up to 0.62 s, in runs of slow steps; with four workers,
/// 0.44 s and at most 0.47 s (eval 3% slower; six: 0.44 s, eight: 0.46 s). Results do not
/// depend on it: each workgroup computes alone, in a fixed order.
pub const SOFTWARE_EXTRA_THREADS: usize = 2;

/// The vector width, in bits, that kdna asks of the software drivers where the CPU has
/// AVX-512F and `LP_NATIVE_VECTOR_WIDTH` is not set (their default is 256). A workgroup's lanes
/// then run sixteen to a vector: a KernelDNA-ResNet18 training step on a 2-core AMD EPYC took
/// 0.344 s against 0.395 s (the forward tiles 107 -> 68 ms, with the weight-gradient tiles'
/// workgroups widened to match, `Gpu::tile_lanes`), and its eval ran 25% more images a second.
/// Results do not depend on it: each invocation's arithmetic is the same.
pub const SOFTWARE_WIDE_VECTOR_BITS: u32 = 512;

/// Mesa's shader cache keys compiled shaders by the CPU's features, not by the vector width
/// they were compiled for, so a cache filled at one width would hand its shaders to the other.
/// Where kdna picks the width itself it keeps that width's shaders here, under the user's cache
/// directory (`$XDG_CACHE_HOME`, else `~/.cache`), unless `MESA_SHADER_CACHE_DIR` is set.
pub const WIDE_VECTOR_SHADER_CACHE: &str = "kdna/lavapipe-512-bit";

/// Sets the software drivers' options that kdna tunes, each unless the user set it:
/// `LP_NUM_THREADS` to one worker per core plus [`SOFTWARE_EXTRA_THREADS`], and on CPUs with
/// AVX-512F `LP_NATIVE_VECTOR_WIDTH` to [`SOFTWARE_WIDE_VECTOR_BITS`] (with Mesa's shader cache
/// in [`WIDE_VECTOR_SHADER_CACHE`]). It must come before the first adapter is created, which
/// reads them.
///
/// # Safety
/// It sets environment variables: call it before the process starts other threads, as the
/// first thing `main` does.
pub unsafe fn set_software_driver_options() {
    let set = |name: &str, value: &std::ffi::OsStr| {
        // SAFETY: the caller guarantees that no other thread runs yet.
        unsafe { std::env::set_var(name, value) }
    };
    let mut wide = Vec::new();
    if std::env::var_os("LP_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set("LP_NUM_THREADS", (cores + SOFTWARE_EXTRA_THREADS).to_string().as_ref());
    }
    if std::env::var_os("LP_NATIVE_VECTOR_WIDTH").is_none() && has_avx512f() {
        set("LP_NATIVE_VECTOR_WIDTH", SOFTWARE_WIDE_VECTOR_BITS.to_string().as_ref());
        wide.push("LP_NATIVE_VECTOR_WIDTH");
        let cache_home = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache")));
        let user_chose = ["MESA_SHADER_CACHE_DIR", "MESA_GLSL_CACHE_DIR"].iter().any(|v| std::env::var_os(v).is_some());
        if let (false, Some(cache_home)) = (user_chose, cache_home) {
            let dir = cache_home.join(WIDE_VECTOR_SHADER_CACHE);
            // Mesa makes the last directory only. Should this fail, it says so and runs
            // without a cache: slower to start, never with shaders of the other width.
            let _ = std::fs::create_dir_all(&dir);
            set("MESA_SHADER_CACHE_DIR", dir.as_os_str());
            wide.push("MESA_SHADER_CACHE_DIR");
        }
    }
    let _ = WIDE_VECTOR_VARIABLES.set(wide);
}

static WIDE_VECTOR_VARIABLES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();

/// The variables [`set_software_driver_options`] set for 512-bit vectors, for the processes
/// kdna starts that draw to go without: at that width llvmpipe runs compute kernels correctly
/// but its drawing crashed (the viewer's tests, in a segmentation fault).
pub fn wide_vector_variables() -> &'static [&'static str] {
    WIDE_VECTOR_VARIABLES.get().map_or(&[], Vec::as_slice)
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(device_type: wgpu::DeviceType, backend: wgpu::Backend) -> AdapterSummary {
        AdapterSummary {
            name: "llvmpipe".into(),
            backend,
            device_type,
            driver: String::new(),
            driver_info: String::new(),
            timestamps: false,
            shader_f16: false,
            subgroups: false,
            subgroup_min_size: 0,
            max_storage_buffer_binding: 0,
            max_buffer_size: 0,
            max_workgroup_storage: 0,
            max_invocations_per_workgroup: 0,
        }
    }

    #[test]
    fn only_a_software_adapter_through_gl_gets_advice() {
        use wgpu::{Backend, DeviceType};
        let advised = |t, b| advice(&summary(t, b)).is_some();
        assert!(advised(DeviceType::Cpu, Backend::Gl));
        assert!(advice(&summary(DeviceType::Cpu, Backend::Gl)).unwrap().contains("mesa-vulkan-drivers"));
        assert!(!advised(DeviceType::Cpu, Backend::Vulkan));
        assert!(!advised(DeviceType::DiscreteGpu, Backend::Gl));
        assert!(!advised(DeviceType::IntegratedGpu, Backend::Vulkan));
    }
}
