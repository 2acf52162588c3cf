// Softmax cross-entropy, mean over the batch, with optional label smoothing, as
// torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps):
//     loss_n = (1 - eps) * -log p[n, label] + eps / C * sum_c -log p[n, c]

struct LossParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: LossParams;

@group(0) @binding(1) var<storage, read> fwd_logits: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> fwd_per_sample: array<f32>;   // [batch, 2]: loss, correct

fn log_sum_exp(row: u32) -> f32 {
    var top = fwd_logits[row * p.classes];
    for (var c = 1u; c < p.classes; c++) {
        top = max(top, fwd_logits[row * p.classes + c]);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        sum += exp(fwd_logits[row * p.classes + c] - top);
    }
    return top + log(sum);
}

// Invocations: batch.
@compute @workgroup_size(64)
fn cross_entropy_per_sample(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = flat_index(gid, nwg);
    if (n >= p.batch) { return; }
    let lse = log_sum_exp(n);
    let label = fwd_labels[n];
    var sum_logits = 0.0;
    var best = 0u;
    for (var c = 0u; c < p.classes; c++) {
        let v = fwd_logits[n * p.classes + c];
        sum_logits += v;
        if (v > fwd_logits[n * p.classes + best]) { best = c; }
    }
    let nll = lse - fwd_logits[n * p.classes + label];
    let uniform_nll = lse - sum_logits / f32(p.classes);
    fwd_per_sample[2u * n] = (1.0 - p.smoothing) * nll + p.smoothing * uniform_nll;
    fwd_per_sample[2u * n + 1u] = select(0.0, 1.0, best == label);
}

@group(0) @binding(1) var<storage, read> red_per_sample: array<f32>;
@group(0) @binding(2) var<storage, read_write> red_out: array<f32>;     // [2]: mean loss, correct count

// One invocation sums in sample order, so the loss is the same bits every run.
@compute @workgroup_size(1)
fn cross_entropy_reduce() {
    var loss = 0.0;
    var correct = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        loss += red_per_sample[2u * n];
        correct += red_per_sample[2u * n + 1u];
    }
    red_out[0] = loss / f32(p.batch);
    red_out[1] = correct;
}

@group(0) @binding(1) var<storage, read> bwd_logits: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_labels: array<u32>;
@group(0) @binding(3) var<storage, read> bwd_dloss: array<f32>;
@group(0) @binding(4) var<storage, read_write> bwd_dlogits: array<f32>;

// dlogits[n, c] = dloss * (softmax[n, c] - target[n, c]) / batch,
// target = (1 - eps) * onehot(label) + eps / C. Invocations: batch x classes.
@compute @workgroup_size(64)
fn cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.classes) { return; }
    let n = i / p.classes;
    let c = i % p.classes;
    var top = bwd_logits[n * p.classes];
    for (var k = 1u; k < p.classes; k++) {
        top = max(top, bwd_logits[n * p.classes + k]);
    }
    var sum = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        sum += exp(bwd_logits[n * p.classes + k] - top);
    }
    let prob = exp(bwd_logits[i] - top) / sum;
    let wanted = (1.0 - p.smoothing) * select(0.0, 1.0, c == bwd_labels[n]) + p.smoothing / f32(p.classes);
    let g = bwd_dloss[0] * (prob - wanted) / f32(p.batch);
    bwd_dlogits[i] = accumulated(bwd_dlogits[i], g, p.accumulate);
}
