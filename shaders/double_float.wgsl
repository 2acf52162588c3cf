// Double-float arithmetic and a workgroup sum over it, for reductions whose result is much
// smaller than their terms. Prepended to families that declare `p.one` (a uniform 1.0) and
// run 64-invocation workgroups (src/gpu/shaders.rs).
//
// A value is vec2(hi, lo) with |lo| <= ulp(hi) / 2. Error-free transformations (Knuth's
// two-sum, Dekker's two-product), as in the QD library.

// Shader compilers may simplify (a + b) - a to b, which erases the rounding error these
// transformations exist to capture. Multiplying by a uniform the compiler cannot see is 1.0
// keeps each rounded result as computed.
fn opaque(x: f32) -> f32 {
    return x * p.one;
}

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = s - a;
    return vec2<f32>(s, (a - (s - bb)) + (b - bb));
}

fn quick_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    return vec2<f32>(s, b - (s - a));
}

fn df_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let t = two_sum(a.y, b.y);
    let u = quick_two_sum(s.x, s.y + t.x);
    return quick_two_sum(u.x, u.y + t.y);
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

