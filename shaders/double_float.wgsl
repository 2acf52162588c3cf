// Double-float arithmetic and a workgroup sum over it, for reductions whose result is much
// smaller than their terms. Prepended to families that declare `p.one` (a uniform 1.0) and
// run 64-invocation workgroups (src/gpu/shaders.rs).
//
// A value is vec2(hi, lo) with |lo| <= ulp(hi) / 2. Error-free transformations (Knuth's
// two-sum, Dekker's two-product), as in the QD library.

// Shader compilers may simplify (a + b) - a to b, regroup sums or factor a common multiplier
// out of x * c - y * c, which erases the rounding errors these transformations exist to
// capture, and WGSL cannot mark an operation exact. `opaque` passes a rounded result through
// an integer operation the compiler cannot see is a no-op (an exclusive or with bits of a
// uniform that cancel), so no floating-point rule reaches across it; every intermediate whose
// rounding matters goes through it. (Multiplying by a uniform 1.0 did not suffice: with it,
// NVIDIA's compiler lost the precision these sums exist for, and lavapipe's did too once both
// operands of a difference were multiplied.)
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ (bitcast<u32>(p.one) ^ 0x3f800000u));
}

fn opaque4(x: vec4<f32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(x) ^ vec4<u32>(bitcast<u32>(p.one) ^ 0x3f800000u));
}

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    let a_err = opaque(a - opaque(s - bb));
    return vec2<f32>(s, a_err + opaque(b - bb));
}

fn quick_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    return vec2<f32>(s, b - opaque(s - a));
}

fn df_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let t = two_sum(a.y, b.y);
    let u = quick_two_sum(s.x, s.y + t.x);
    return quick_two_sum(u.x, u.y + t.y);
}

// df_add(a, df(b)): a zero low part's two-sum and the renormalisation after it change nothing
// (but the sign of a zero low part), so this is the same sum in half the operations.
fn df_add_f32(a: vec2<f32>, b: f32) -> vec2<f32> {
    let s = two_sum(a.x, b);
    return quick_two_sum(s.x, s.y + a.y);
}

fn df_neg(a: vec2<f32>) -> vec2<f32> {
    return -a;
}

// Veltkamp's split of a into two 12-bit halves, so that products of halves are exact.
fn split(a: f32) -> vec2<f32> {
    let t = opaque(4097.0 * a);
    let hi = opaque(t - opaque(t - a));
    return vec2<f32>(hi, a - hi);
}

// Dekker's exact product a * b = p + err. (fma would be shorter, but WGSL lets a driver
// compute fma with two roundings.)
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = opaque(a * b);
    let x = split(a);
    let y = split(b);
    let err = opaque(opaque(opaque(x.x * y.x - p) + x.x * y.y) + x.y * y.x) + x.y * y.y;
    return vec2<f32>(p, err);
}

fn df_mul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let p = two_prod(a.x, b.x);
    return quick_two_sum(p.x, p.y + (a.x * b.y + a.y * b.x));
}

// df_mul(df(a), b), without the zero low part's product.
fn df_mul_f32(a: f32, b: vec2<f32>) -> vec2<f32> {
    let p = two_prod(a, b.x);
    return quick_two_sum(p.x, p.y + a * b.y);
}

fn df_div(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let q1 = a.x / b.x;
    let r = df_add(a, df_neg(df_mul(vec2<f32>(q1, 0.0), b)));
    let q2 = r.x / b.x;
    let r2 = df_add(r, df_neg(df_mul(vec2<f32>(q2, 0.0), b)));
    return df_add(quick_two_sum(q1, q2), vec2<f32>(r2.x / b.x, 0.0));
}

fn df(a: f32) -> vec2<f32> {
    return vec2<f32>(a, 0.0);
}

const REDUCE: u32 = 64u;
var<workgroup> partial: array<vec2<f32>, REDUCE>;

// Sums `value` over the workgroup in a fixed tree order; every invocation gets the total.
fn workgroup_sum(lane: u32, value: vec2<f32>) -> vec2<f32> {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = REDUCE / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] = df_add(partial[lane], partial[lane + stride]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

