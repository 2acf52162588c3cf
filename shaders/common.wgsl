// Prepended to every kernel file (see src/gpu/shaders.rs).

// One-dimensional kernels run 64 invocations per workgroup over a grid folded into x and y,
// since one grid dimension is limited to 65535 workgroups (src/gpu/kernel.rs `grid`).
const WORKGROUP: u32 = 64u;

// What the kernels that store a layer's outputs add and apply as they store each value
// (src/gpu/entry.rs `Stores`): pipeline constants, not parameters, so that each set compiles
// a pipeline of its own in which the branches on them fold away. Software adapters run both
// sides of a branch on a uniform value under a lane mask.
//
// The output activation (src/gpu/entry.rs `OutputActivation`): 0 none, 1 relu, 2 relu6,
// 3 sigmoid, 4 GELU, computed as activation.wgsl computes them, so fusing changes no bit.
override STORED_ACTIVATION: u32 = 0u;
// Whether a bias, and a residual, are added (read by the convolution tiles' stores).
override STORES_BIAS: bool = false;
override STORES_RESIDUAL: bool = false;

fn stored_activation(v: f32) -> f32 {
    switch STORED_ACTIVATION {
        case 1u: { return max(v, 0.0); }
        case 2u: { return clamp(v, 0.0, 6.0); }
        case 3u: { return 1.0 / (1.0 + exp_accurate(-v)); }
        case 4u: { return v * normal_cdf(v); }
        default: { return v; }
    }
}

// stored_activation on four values.
fn stored_activation4(v: vec4<f32>) -> vec4<f32> {
    switch STORED_ACTIVATION {
        case 1u: { return max(v, vec4<f32>(0.0)); }
        case 2u: { return clamp(v, vec4<f32>(0.0), vec4<f32>(6.0)); }
        case 3u, 4u: { return vec4<f32>(stored_activation(v.x), stored_activation(v.y), stored_activation(v.z), stored_activation(v.w)); }
        default: { return v; }
    }
}

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * WORKGROUP;
}

// Vec4 i of a buffer copied into the rows of a texture (src/gpu/kernel.rs
// `Gpu::dispatch_with_textures`, rows a power of two wide): kernels that stream through
// buffers read them so on software adapters, which gather a texel fetch's lanes in registers
// where a storage load whose address differs per lane loops over the lanes through memory.
// The row width is found by shifts: a division per lane is eight scalar divisions there.
fn buffer_texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    let shift = countTrailingZeros(textureDimensions(t).x);
    return textureLoad(t, vec2<u32>(i & ((1u << shift) - 1u), i >> shift), 0);
}

// Gradients either overwrite their buffer (first contributor) or add to it (a tensor used by
// several ops, such as a shared parent kernel). The executor fixes the order, so results are
// deterministic without atomics.
fn accumulated(old: f32, value: f32, accumulate: u32) -> f32 {
    return select(value, old + value, accumulate != 0u);
}

// e^x to about 1 ulp. Drivers may implement the builtin exp() to within 3 + 2|x| ulp (some
// software rasterisers do), and the router's gates need better: a gate's error passes into
// every later activation and a BatchNorm over a nearly constant channel amplifies it.
// Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, then a degree-7 Taylor polynomial.
fn exp_accurate(x: f32) -> f32 {
    let xc = clamp(x, -87.0, 88.0);
    let k = round(xc * 1.442695041);
    let r = (xc - k * 0.693145752) - k * 1.42860677e-6;
    var q = 1.0 / 5040.0;
    q = fma(q, r, 1.0 / 720.0);
    q = fma(q, r, 1.0 / 120.0);
    q = fma(q, r, 1.0 / 24.0);
    q = fma(q, r, 1.0 / 6.0);
    q = fma(q, r, 0.5);
    q = fma(q, r, 1.0);
    q = fma(q, r, 1.0);
    return ldexp(q, i32(k));
}

// sum + a.x b.x + a.y b.y + a.z b.z + a.w b.w, added in that order (a dot product whose terms
// add as a scalar loop over them would add them).
fn add_products(sum: f32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    var s = sum;
    s += a.x * b.x;
    s += a.y * b.y;
    s += a.z * b.z;
    s += a.w * b.w;
    return s;
}

// erfc(z) for z >= 0 with a relative error below 1.2e-7 (the Chebyshev fit of Numerical Recipes'
// erfcc), so the normal distribution's tails keep their precision where 1 + erf(x) would cancel.
fn erfc_positive(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    var q = 0.17087277;
    q = fma(q, t, -0.82215223);
    q = fma(q, t, 1.48851587);
    q = fma(q, t, -1.13520398);
    q = fma(q, t, 0.27886807);
    q = fma(q, t, -0.18628806);
    q = fma(q, t, 0.09678418);
    q = fma(q, t, 0.37409196);
    q = fma(q, t, 1.00002368);
    q = fma(q, t, -1.26551223);
    return t * exp_accurate(q - z * z);
}

// Phi(x), the standard normal distribution: erfc(-x / sqrt 2) / 2.
fn normal_cdf(x: f32) -> f32 {
    let tail = 0.5 * erfc_positive(abs(x) * 0.70710678);
    return select(tail, 1.0 - tail, x > 0.0);
}
