//! PyTorch ground truth (tests/fixtures, written by the reference implementation of the
//! KernelDNA modules) on the GPU, within the fixtures' tolerance:
//! max|got - want| <= 1e-4 * max(1, max|want|) per tensor.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{assert_close, gpu, gradient_plan, to_f64};
use kdna::graph::{Executor, Graph, Plan, Role, TensorId};
use kdna::io::{HostTensor, load_safetensors};
use kdna::models::convnext::{self, BlockInit};
use kdna::models::layers::{self, ConvInit};
use kdna::models::{mobilenet, resnet};
use kdna::ops::Mode;
use kdna::ops::adamw::AdamW;
use kdna::ops::conv2d::Conv2dConfig;
use kdna::ops::sgd::Sgd;

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> BTreeMap<String, HostTensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.safetensors"));
    load_safetensors(&path).unwrap()
}

fn want(f: &BTreeMap<String, HostTensor>, key: &str) -> Vec<f64> {
    to_f64(&f.get(key).unwrap_or_else(|| panic!("fixture has no {key:?}")).data)
}

/// Runs a block fixture: `build` adds the module to a graph with the fixture's state-dict
/// names, from input `x` to the returned output. Checks the eval output, then a train-mode
/// step: output, gradients to the input and every parameter, and running statistics after.
fn check_block(name: &str, build: impl Fn(&mut Graph, TensorId) -> TensorId) {
    let f = fixture(name);
    let mut g = Graph::new();
    let x = g.input("input", &f["input"].shape);
    let y = build(&mut g, x);
    assert_eq!(g.shape(y), f["output.train"].shape.as_slice(), "{name}: output shape");

    // Every trained parameter of the module is in the graph, and nothing else is.
    let mut params: Vec<String> = g.params().map(|(_, t)| t.name.clone()).collect();
    let mut expected: Vec<String> =
        f.keys().filter_map(|k| k.strip_prefix("grad.")).filter(|k| *k != "input").map(String::from).collect();
    params.sort();
    expected.sort();
    assert_eq!(params, expected, "{name}: parameters");

    let gpu = gpu();
    let eval = Executor::new(gpu.clone(), &g, Plan::eval()).unwrap();
    for t in &g.tensors {
        if matches!(t.role, Role::Param | Role::State) {
            let id = g.find(&t.name).unwrap();
            eval.write(id, &f[&t.name].data).unwrap();
        }
    }
    eval.write(x, &f["input"].data).unwrap();
    let mut eval = eval;
    eval.run().unwrap();
    assert_close(&format!("{name} output.eval"), &to_f64(&eval.read(y).unwrap()), &want(&f, "output.eval"), TOL);

    let plan = gradient_plan(Mode::Train, vec![y], true);
    let mut train = Executor::with_weights(gpu, &g, plan, Arc::clone(eval.weights())).unwrap();
    train.write(x, &f["input"].data).unwrap();
    train.write_grad(y, &f["grad_output"].data).unwrap();
    train.run().unwrap();
    assert_close(&format!("{name} output.train"), &to_f64(&train.read(y).unwrap()), &want(&f, "output.train"), TOL);
    assert_close(&format!("{name} grad.input"), &to_f64(&train.read_grad(x).unwrap()), &want(&f, "grad.input"), TOL);
    for (id, t) in g.params() {
        let key = format!("grad.{}", t.name);
        assert_close(&format!("{name} {key}"), &to_f64(&train.read_grad(id).unwrap()), &want(&f, &key), TOL);
    }
    for t in g.tensors.iter().filter(|t| t.role == Role::State) {
        let key = format!("running_after.{}", t.name);
        let got = to_f64(&train.read(g.find(&t.name).unwrap()).unwrap());
        assert_close(&format!("{name} {key}"), &got, &want(&f, &key), TOL);
    }
}

#[test]
fn modulation_golden() {
    let f = fixture("modulation");
    let mut g = Graph::new();
    let parent = g.param("parent", &f["parent"].shape).unwrap();
    let spatial = g.param("static_spatial_attn", &f["static_spatial_attn"].shape).unwrap();
    let filter = g.param("static_filter_attn", &f["static_filter_attn"].shape).unwrap();
    let kids = g.modulate(parent, Some(spatial), filter, 0, 3).unwrap();
    let plan = gradient_plan(Mode::Train, kids.clone(), false);
    let mut exe = Executor::new(gpu(), &g, plan).unwrap();
    for (t, key) in [(parent, "parent"), (spatial, "static_spatial_attn"), (filter, "static_filter_attn")] {
        exe.write(t, &f[key].data).unwrap();
    }
    let per_child = f["parent"].numel();
    for (k, &kid) in kids.iter().enumerate() {
        exe.write_grad(kid, &f["grad_output"].data[k * per_child..(k + 1) * per_child]).unwrap();
    }
    exe.run().unwrap();
    let children: Vec<f64> = kids.iter().flat_map(|&k| to_f64(&exe.read(k).unwrap())).collect();
    assert_close("children", &children, &want(&f, "children"), TOL);
    for (t, key) in [(parent, "parent"), (spatial, "static_spatial_attn"), (filter, "static_filter_attn")] {
        assert_close(
            &format!("grad.{key}"),
            &to_f64(&exe.read_grad(t).unwrap()),
            &want(&f, &format!("grad.{key}")),
            TOL,
        );
    }
}

#[test]
fn router_golden() {
    check_block("se", |g, x| layers::router(g, x, "se", 4, ConvInit::TorchDefault).unwrap());
}

#[test]
fn routed_child_conv_golden() {
    check_block("child_conv", |g, x| {
        let parent = g.param("parent.weight", &[12, 8, 3, 3]).unwrap();
        let spatial = g.param("static_spatial_attn", &[1, 1, 3, 3]).unwrap();
        let filter = g.param("static_filter_attn", &[12, 1, 1, 1]).unwrap();
        // A single child: the attention tensors have no child dimension here, one row.
        let child = g.modulate(parent, Some(spatial), filter, 0, 1).unwrap()[0];
        let routed = layers::router(g, x, "se.se", 4, ConvInit::TorchDefault).unwrap();
        g.conv2d(routed, child, None, Conv2dConfig::new(1, 1)).unwrap()
    });
}

#[test]
fn sgd_golden() {
    let f = fixture("sgd");
    let gpu = gpu();
    let opt = Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let param = gpu.upload("param", &f["param.0"].data);
    let grad = gpu.storage("grad", param.len());
    let velocity = gpu.storage("velocity", param.len());
    for step in 0..3 {
        gpu.write(&grad, &f[&format!("grad.{step}")].data);
        let dispatches: Vec<_> =
            opt.dispatches(&gpu, &param, &grad, &velocity, step == 0).into_iter().map(|(d, _)| d).collect();
        gpu.run(&dispatches);
        let key = format!("param.{}", step + 1);
        assert_close(&key, &to_f64(&gpu.read(&param).unwrap()), &want(&f, &key), TOL);
    }
}

#[test]
fn adamw_golden() {
    // torch.optim.AdamW(lr=4e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), 3 steps.
    let f = fixture("adamw");
    let gpu = gpu();
    let opt = AdamW::default();
    let param = gpu.upload("param", &f["param.0"].data);
    let grad = gpu.storage("grad", param.len());
    let (exp_avg, exp_avg_sq) = (gpu.storage("exp_avg", param.len()), gpu.storage("exp_avg_sq", param.len()));
    let mut host = to_f64(&f["param.0"].data);
    let (mut m, mut v) = (vec![0.0; host.len()], vec![0.0; host.len()]);
    for step in 0..3 {
        let g = &f[&format!("grad.{step}")].data;
        gpu.write(&grad, g);
        gpu.run(&[opt.dispatch(&gpu, [&param, &grad, &exp_avg, &exp_avg_sq], step + 1)]);
        let key = format!("param.{}", step + 1);
        // Updates are ~4e-3: a tolerance far below them (torch and the kernel both compute in
        // f32, in the same order).
        assert_close(&key, &to_f64(&gpu.read(&param).unwrap()), &want(&f, &key), 1e-6);
        // The reference agrees with torch too.
        kdna::reference::adamw::step(&opt, &mut host, &to_f64(g), &mut m, &mut v, step + 1);
        assert_close(&format!("reference {key}"), &host, &want(&f, &key), 1e-6);
    }
}

#[test]
fn cross_entropy_golden() {
    let f = fixture("cross_entropy");
    for tag in ["0.0", "0.1"] {
        let mut g = Graph::new();
        let logits = g.input("logits", &f["logits"].shape);
        let labels = g.labels("labels", f["labels"].numel());
        let loss = g.cross_entropy(logits, labels, tag.parse().unwrap()).unwrap();
        let plan = gradient_plan(Mode::Train, vec![loss], true);
        let mut exe = Executor::new(gpu(), &g, plan).unwrap();
        exe.write(logits, &f["logits"].data).unwrap();
        let label_values: Vec<u32> = f["labels"].data.iter().map(|&l| l as u32).collect();
        exe.write_labels(labels, &label_values).unwrap();
        exe.run().unwrap();
        let got = to_f64(&exe.read(loss).unwrap());
        assert_close(&format!("loss, smoothing {tag}"), &got[..1], &want(&f, &format!("loss.smoothing{tag}")), TOL);
        let grad = to_f64(&exe.read_grad(logits).unwrap());
        assert_close(&format!("grad, smoothing {tag}"), &grad, &want(&f, &format!("grad.smoothing{tag}")), TOL);
    }
}

#[test]
fn convnext_block_golden() {
    // torchvision's CNBlock at dim 8, layer scale 0.5, stochastic depth off, on 9x9 maps.
    check_block("convnext_block", |g, x| convnext::cn_block(g, x, "", 0.5, 0.0, BlockInit::Torchvision).unwrap());
}

#[test]
fn convnext_stage3_golden() {
    // kdna's KernelDNA ConvNeXt stage 3 at dim 8 with 2 kid/parent pairs.
    check_block("convnext_stage3", |g, x| convnext::convnext_stage3(g, x, "", 2, &[]).unwrap());
}

#[test]
fn convnext_stage4_golden() {
    check_block("convnext_stage4", |g, x| convnext::convnext_stage4(g, x, "", 1, &[]).unwrap());
}

#[test]
fn resnet18_stage_golden() {
    check_block("resnet18_stage", |g, x| resnet::resnet18_stage(g, x, "", 16, 2).unwrap());
}

/// At 32 planes on 3x3 maps the training plan fuses all it can into the children's
/// convolutions (src/graph/fuse.rs): children packed from their parent, gates applied in the
/// input copies, children's weight gradients left unreduced for the modulation.
#[test]
fn resnet18_stage_wide_golden() {
    let build = |g: &mut Graph, x| resnet::resnet18_stage(g, x, "", 32, 2).unwrap();
    let mut g = Graph::new();
    let x = g.input("input", &[4, 16, 6, 6]);
    build(&mut g, x);
    let fused = kdna::graph::fuse::fuse(&g, &gpu(), &[], false);
    assert_eq!(fused.unreduced_grads.len(), 3, "every child's gradient should stay unreduced");
    assert_eq!(fused.unstored.len(), 6, "three children and three gated inputs should go unstored");
    let own = fused.graph.tensors.iter().filter(|t| t.name.ends_with(".unreduced_grad")).count();
    assert_eq!(own, 2, "both parents' own convs should leave their gradients unreduced");
    check_block("resnet18_stage_wide", build);
}

#[test]
fn resnet50_stage3_golden() {
    check_block("resnet50_stage3", |g, x| resnet::resnet50_stage3(g, x, "", 8, 3).unwrap());
}

#[test]
fn resnet50_stage4_golden() {
    check_block("resnet50_stage4", |g, x| resnet::resnet50_stage4(g, x, "", 8, 1).unwrap());
}

#[test]
fn mobilenetv2_cluster_golden() {
    check_block("mobilenetv2_cluster", |g, x| mobilenet::mobilenet_cluster(g, x, "", 16, 2, 2).unwrap());
}
