//! The executor trains a small KernelDNA-style network: a parent conv shared by two routed
//! children, BatchNorm, a classifier. One submission per step, no allocation after the first
//! step, and bitwise-repeatable results.

mod common;

use std::sync::Arc;

use common::{randn, rng, to_f32};
use kdna::gpu::Gpu;
use kdna::graph::{Executor, Graph, Phase, Plan, Role, StepStats, TensorId};
use kdna::models::layers::{self, ConvInit};
use kdna::ops::conv2d::Conv2dConfig;
use kdna::ops::sgd::Sgd;

const BATCH: usize = 8;
const CLASSES: usize = 4;

struct Net {
    graph: Graph,
    images: TensorId,
    labels: TensorId,
    logits: TensorId,
    loss: TensorId,
}

fn kdna_net() -> Net {
    kdna_net_with(8, 1)
}

/// The network with `width` channels after a stem of stride `stem_stride`.
fn kdna_net_with(width: usize, stem_stride: usize) -> Net {
    let mut g = Graph::new();
    let images = g.input("images", &[BATCH, 3, 9, 9]);
    let labels = g.labels("labels", BATCH);
    let same = Conv2dConfig::new(1, 1);
    let stem = Conv2dConfig::new(stem_stride, 1);
    let x = layers::conv2d(&mut g, images, "stem", width, 3, stem, false, ConvInit::KaimingFanOut).unwrap();
    let x = layers::batchnorm(&mut g, x, "stem_bn").unwrap();
    let mut x = g.relu(x);
    // The parent conv, used itself and through two children.
    let parent = g.param("parent.weight", &[width, width, 3, 3]).unwrap();
    let spatial = g.param("static_spatial_attn", &[2, 1, 1, 3, 3]).unwrap();
    let filter = g.param("static_filter_attn", &[2, width, 1, 1, 1]).unwrap();
    let kids = g.modulate(parent, Some(spatial), filter, 0, 2).unwrap();
    for (i, &kid) in kids.iter().enumerate() {
        let routed = layers::router(&mut g, x, &format!("se.{i}"), 4, ConvInit::KaimingFanOut).unwrap();
        let y = g.conv2d(routed, kid, None, same).unwrap();
        let y = layers::batchnorm(&mut g, y, &format!("bns.{i}")).unwrap();
        let y = g.relu(y);
        x = g.add(y, x).unwrap();
    }
    let y = g.conv2d(x, parent, None, same).unwrap();
    let y = layers::batchnorm(&mut g, y, "parent_bn").unwrap();
    let x = g.relu(y);
    let pooled = g.global_avgpool(x).unwrap();
    let fc = g.param("fc.weight", &[CLASSES, width]).unwrap();
    let fc_bias = g.param("fc.bias", &[CLASSES]).unwrap();
    let logits = g.linear(pooled, fc, Some(fc_bias)).unwrap();
    let loss = g.cross_entropy(logits, labels, 0.0).unwrap();
    Net { graph: g, images, labels, logits, loss }
}

/// Kaiming-style weights, unit BatchNorm, zero attentions: the same values for a given seed.
fn initialise(exe: &Executor, g: &Graph, seed: u64) {
    let mut r = rng(seed);
    for (i, t) in g.tensors.iter().enumerate() {
        let n = t.numel();
        let values: Vec<f64> = match t.role {
            Role::Param if t.name.contains("attn") || t.name.ends_with(".bias") => vec![0.0; n],
            Role::Param if t.shape.len() == 1 => vec![1.0; n],
            Role::Param => {
                let fan_in: usize = t.shape[1..].iter().product();
                randn(&mut r, n).iter().map(|v| v * (2.0 / fan_in as f64).sqrt()).collect()
            }
            Role::State if t.name.ends_with("running_var") => vec![1.0; n],
            Role::State => vec![0.0; n],
            _ => continue,
        };
        exe.write(TensorId(i), &to_f32(&values)).unwrap();
    }
}

fn batch(exe: &Executor, net: &Net) {
    let mut r = rng(7);
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % CLASSES as u32).collect();
    // Each class has its own mean image plus noise, so the labels are learnable.
    let means: Vec<Vec<f64>> = (0..CLASSES).map(|_| randn(&mut r, 3 * 81)).collect();
    let images: Vec<f64> = labels
        .iter()
        .flat_map(|&l| {
            means[l as usize].iter().zip(randn(&mut r, 3 * 81)).map(|(m, n)| m + 0.5 * n).collect::<Vec<_>>()
        })
        .collect();
    exe.write(net.images, &to_f32(&images)).unwrap();
    exe.write_labels(net.labels, &labels).unwrap();
}

fn trainer(gpu: Arc<Gpu>, net: &Net) -> Executor {
    let sgd = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let exe = Executor::new(gpu, &net.graph, Plan::train(net.loss, sgd)).unwrap();
    initialise(&exe, &net.graph, 3);
    batch(&exe, net);
    exe
}

fn train(exe: &mut Executor, steps: usize) -> Vec<StepStats> {
    let mut stats = Vec::new();
    for _ in 0..steps {
        exe.step().unwrap();
        stats.extend(exe.poll_stats().unwrap());
    }
    stats.extend(exe.finish().unwrap());
    stats
}

#[test]
fn a_kernel_dna_net_learns_a_fixed_batch_with_one_submit_per_step() {
    let gpu = Arc::new(Gpu::new(None).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e:#}")));
    let net = kdna_net();
    let mut exe = trainer(gpu.clone(), &net);
    exe.step().unwrap();
    let first = exe.finish().unwrap();
    let (buffers, submissions) = (gpu.buffers_created(), gpu.submissions());
    let mut stats = first.clone();
    stats.extend(train(&mut exe, 79));
    assert_eq!(gpu.buffers_created(), buffers, "buffers were created after the first step");
    assert_eq!(gpu.submissions() - submissions, 79, "one submission per step");
    assert_eq!(
        stats.iter().map(|s| s.step).collect::<Vec<_>>(),
        (0..80).collect::<Vec<_>>(),
        "every step reported once, in order"
    );
    let start = stats[0].loss;
    let end = stats.last().unwrap();
    assert!(start.is_finite() && start > 0.5, "initial loss {start}");
    assert!(end.loss < start / 10.0, "loss went from {start} to {} in 80 steps", end.loss);
    assert_eq!(end.correct, BATCH as f32, "the fixed batch is classified right");

    // The coarse profile times every dispatch of a step once.
    let (forward, backward, optimizer) = exe.dispatch_counts();
    let profile = exe.profile().unwrap();
    assert_eq!(profile.len(), forward + backward + optimizer);
    assert!(profile.iter().any(|d| d.kernel == "sgd_step" && d.phase == Phase::Optimizer));
    // In run order, each dispatch named by its node: forward dispatches first, then backward.
    let phases: Vec<Phase> = profile.iter().map(|d| d.phase).collect();
    let first_backward = phases.iter().position(|&p| p == Phase::Backward).unwrap();
    assert!(phases[..first_backward].iter().all(|&p| p == Phase::Forward || p == Phase::Prepare));
    assert!(phases[first_backward..].iter().all(|&p| p == Phase::Backward || p == Phase::Optimizer));
    let node = &profile.iter().find(|d| d.phase == Phase::Backward).unwrap().node;
    assert!(node.starts_with("cross_entropy"), "the backward pass starts at the loss, not {node:?}");
    assert!(profile.iter().all(|d| d.workgroups.iter().all(|&n| n > 0)));
}

#[test]
fn training_is_bitwise_repeatable() {
    let net = kdna_net();
    let run = || {
        let mut exe = trainer(common::gpu(), &net);
        let losses: Vec<u32> = train(&mut exe, 6).iter().map(|s| s.loss.to_bits()).collect();
        let parent = exe.read(net.graph.find("parent.weight").unwrap()).unwrap();
        (losses, parent.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0, "loss sequences differ");
    assert_eq!(a.1, b.1, "trained parent kernels differ");
}

/// Convolutions that pack their children straight from the parent (or run them over the
/// parent's own packings), gate their input as they copy it and leave the children's weight
/// gradients unreduced for the modulation (the default) train to the same bits as a modulation and routers that store children and gated
/// inputs for the convolutions to load, and reductions that store the children's gradients.
#[test]
fn fusing_children_and_gates_into_their_convolutions_changes_no_bit() {
    let gpu = common::gpu();
    // 32 channels on 5x5 maps: the children's weight gradients fill whole tiles of output
    // channels in one chunk, so they can stay unreduced.
    let net = kdna_net_with(32, 2);
    let (packed, children) = kdna::graph::fuse::pack_children(&net.graph, &gpu, &[]);
    assert_eq!(children.len(), 2, "both children should be packed by their convolutions");
    let (gated, gated_inputs) = kdna::graph::fuse::gate_in_copies(&packed, &[]);
    assert_eq!(gated_inputs.len(), 2, "both routers' gates should be applied in their convolutions' copies");
    let (unreduced_graph, unreduced) = kdna::graph::fuse::unreduced_child_gradients(&gated, &gpu, &[]);
    assert_eq!(unreduced, children, "both children's gradients should stay unreduced");
    let own = kdna::graph::fuse::unreduced_parent_gradients(&unreduced_graph, &gpu, &[]);
    let buffer = own.find("parent.weight.unreduced_grad");
    assert!(buffer.is_some(), "the parent's own conv should leave its gradient unreduced");
    // Where the tiles read through subgroups (lavapipe), the children run over the parent's
    // packings, which its own conv packs: the children are not packed at all.
    let shared = kdna::graph::fuse::share_parent_packings(&gated, &gpu).find("parent.weight.packed").is_some();
    assert_eq!(shared, gpu.subgroups, "the children should run over the parent's packings where tiles use subgroups");
    let sgd = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let run = |fuse: bool| {
        let plan = Plan { fuse, ..Plan::train(net.loss, sgd) };
        let mut exe = Executor::new(gpu.clone(), &net.graph, plan).unwrap();
        initialise(&exe, &net.graph, 3);
        batch(&exe, &net);
        let dispatches = exe.dispatch_counts().0;
        let losses: Vec<u32> = train(&mut exe, 6).iter().map(|s| s.loss.to_bits()).collect();
        let read = |name: &str| exe.read(net.graph.find(name).unwrap()).unwrap();
        let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let trained = ["parent.weight", "static_spatial_attn", "static_filter_attn"].map(|n| bits(read(n)));
        let router = "se.0.fc2.weight";
        let trained = [trained.to_vec(), vec![bits(read(router))]].concat();
        let grad = exe.read_grad(children[1]);
        (dispatches, losses, trained, exe.read(children[0]), exe.read(gated_inputs[1]), grad)
    };
    let (fused, plain) = (run(true), run(false));
    let spared = 4 + 2 * shared as usize;
    let gone =
        "the two children's modulations (and packings, where shared) and the two gates' dispatches should be gone";
    assert_eq!(fused.0 + spared, plain.0, "{gone}");
    assert_eq!(fused.1, plain.1, "loss sequences differ");
    assert_eq!(fused.2, plain.2, "trained parent, attentions or router differ");
    for err in [fused.3.expect_err("a packed child"), fused.4.expect_err("a gated input")] {
        assert!(format!("{err:#}").contains("never stored"), "{err:#}");
    }
    let err = fused.5.expect_err("an unreduced gradient");
    assert!(format!("{err:#}").contains("unreduced"), "{err:#}");
    assert!(plain.3.is_ok() && plain.4.is_ok() && plain.5.is_ok(), "stored tensors and gradients read back");
    // The graph the executor plans: each child's conv reads its input, the child (for its
    // gradient), the parent and both attentions, the router's input and gate.
    let convs = gated.nodes.iter().filter(|n| n.op.name() == "conv2d" && children.contains(&n.inputs[1]));
    assert_eq!(convs.map(|n| n.inputs.len()).collect::<Vec<_>>(), [7, 7]);
}

/// Eval executors prepare child kernels and packed conv weights once per change of the
/// parameters: one over shared weights sees every training step, and a parameter written
/// through it takes effect on its next run.
#[test]
fn prepared_weights_follow_every_change_of_the_parameters() {
    let gpu = common::gpu();
    let net = kdna_net();
    let mut trainer = trainer(gpu.clone(), &net);
    let eval = |weights| {
        let exe = Executor::with_weights(gpu.clone(), &net.graph, Plan::eval(), weights).unwrap();
        batch(&exe, &net);
        exe
    };
    let logits = |exe: &mut Executor| {
        exe.run().unwrap();
        exe.read(net.logits).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let mut watcher = eval(trainer.weights().clone());
    let (after_change, steady) = (watcher.dispatch_counts().0, watcher.steady_dispatch_counts().0);
    assert!(steady < after_change, "nothing prepared: {steady} of {after_change} forward dispatches every run");
    let before = logits(&mut watcher);
    assert_eq!(logits(&mut watcher), before, "a second run over the same weights differs");

    train(&mut trainer, 2);
    let trained = logits(&mut watcher);
    assert_ne!(trained, before, "the eval executor did not see the training steps");
    assert_eq!(trained, logits(&mut eval(trainer.weights().clone())), "stale prepared weights after training");

    // Halving the stem and the parent through the eval executor itself.
    for name in ["stem.weight", "parent.weight"] {
        let t = net.graph.find(name).unwrap();
        let halved: Vec<f32> = watcher.read(t).unwrap().iter().map(|v| v * 0.5).collect();
        watcher.write(t, &halved).unwrap();
    }
    let written = logits(&mut watcher);
    assert_ne!(written, trained, "the written parameters did not take effect");
    assert_eq!(written, logits(&mut eval(trainer.weights().clone())), "stale prepared weights after a write");
}
