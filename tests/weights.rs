//! Weights in and out: initialisation, safetensors state dicts with PyTorch names, and the
//! errors a wrong file gets.

mod common;

use std::sync::Arc;

use common::{gpu, gradient_plan};
use kdna::graph::{Executor, Graph, Plan, Weights};
use kdna::io::StateDict;
use kdna::models::{Arch, ModelSpec, build};

fn resnet18() -> kdna::models::Network {
    build(ModelSpec { arch: Arch::ResNet18, kdna: true, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap()
}

fn std_dev(v: &[f32]) -> f64 {
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn initialisation_follows_torch_and_round_trips_through_a_file() {
    let gpu = gpu();
    let net = resnet18();
    let weights = Weights::new(&gpu, &net.graph);
    weights.initialise(&gpu, &net.graph, 1);
    let dict = weights.export(&gpu).unwrap();

    // torchvision: Kaiming-normal fan-out convs; BN ones and zeros; KernelDNA attentions zero.
    let conv = &dict.floats["layer1.0.conv1.weight"].data;
    let want = (2.0f64 / (64.0 * 9.0)).sqrt();
    assert!((std_dev(conv) / want - 1.0).abs() < 0.05, "conv std {} vs {want}", std_dev(conv));
    assert!(dict.floats["layer3.static_spatial_attn"].data.iter().all(|&v| v == 0.0));
    assert!(dict.floats["layer3.bns.0.weight"].data.iter().all(|&v| v == 1.0));
    assert!(dict.floats["bn1.running_var"].data.iter().all(|&v| v == 1.0));
    // torch.nn.Linear's default: U(±1/sqrt(fan_in)).
    let bound = 1.0 / (512f32).sqrt();
    assert!(dict.floats["fc.weight"].data.iter().all(|v| v.abs() <= bound));
    assert_eq!(dict.counters["layer3.se.0.se.bn.num_batches_tracked"], 0);

    let dir = std::env::temp_dir().join(format!("kdna-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    dict.save(&path).unwrap();
    let loaded = StateDict::load(&path).unwrap();
    assert_eq!(loaded, dict);
    let other = Weights::new(&gpu, &net.graph);
    other.import(&gpu, &loaded).unwrap();
    assert_eq!(other.export(&gpu).unwrap(), dict);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convnext_initialisation_is_truncated_normal_and_constant() {
    use kdna::graph::{Graph, Init};
    let gpu = gpu();
    let mut g = Graph::new();
    g.param_init("pw.weight", &[100, 100], Init::TruncNormal(0.02)).unwrap();
    // A deviation near the bounds shows the truncation: [-2, 2] holds ~82% of N(0, 1.5).
    g.param_init("wide", &[10000], Init::TruncNormal(1.5)).unwrap();
    g.param_init("layer_scale", &[7, 1, 1], Init::Constant(1e-6)).unwrap();
    let weights = Weights::new(&gpu, &g);
    weights.initialise(&gpu, &g, 5);
    let dict = weights.export(&gpu).unwrap();
    let pw = &dict.floats["pw.weight"].data;
    assert!((std_dev(pw) / 0.02 - 1.0).abs() < 0.05, "std {}", std_dev(pw));
    let wide = &dict.floats["wide"].data;
    assert!(wide.iter().all(|v| v.abs() <= 2.0));
    // The variance of N(0, 1.5) truncated to [-2, 2]: 1.5^2 (1 - 2 a phi(a) / (2 Phi(a) - 1)), a = 4/3.
    let a = 2.0 / 1.5f64;
    let phi = (-0.5 * a * a).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let want = 1.5 * (1.0 - 2.0 * a * phi / (2.0 * kdna::reference::elementwise::normal_cdf(a) - 1.0)).sqrt();
    assert!((std_dev(wide) / want - 1.0).abs() < 0.03, "std {} vs {want}", std_dev(wide));
    assert!(dict.floats["layer_scale"].data.iter().all(|&v| v == 1e-6));
}

#[test]
fn a_train_mode_run_counts_batches_like_torch() {
    let gpu = gpu();
    let net = resnet18();
    let mut exe = Executor::new(gpu.clone(), &net.graph, Plan::eval()).unwrap();
    exe.run().unwrap();
    let plan = gradient_plan(kdna::ops::Mode::Train, vec![net.loss], false);
    let mut train = Executor::with_weights(gpu.clone(), &net.graph, plan, Arc::clone(exe.weights())).unwrap();
    train.run().unwrap();
    train.run().unwrap();
    let counters = exe.weights().export(&gpu).unwrap().counters;
    assert!(counters.values().all(|&n| n == 2), "eval runs count nothing, train runs one each: {counters:?}");
}

#[test]
fn a_file_that_does_not_fit_names_the_keys() {
    let gpu = gpu();
    let net = resnet18();
    let weights = Weights::new(&gpu, &net.graph);
    let mut dict = weights.export(&gpu).unwrap();
    dict.floats.remove("layer2.0.conv1.weight");
    dict.counters.remove("bn1.num_batches_tracked");
    dict.floats.insert("layer5.weight".into(), dict.floats["fc.bias"].clone());
    dict.floats.get_mut("fc.weight").unwrap().shape = vec![512, 10];
    let err = weights.import(&gpu, &dict).unwrap_err().to_string();
    for part in [
        "2 missing keys: layer2.0.conv1.weight, bn1.num_batches_tracked",
        "1 unexpected keys: layer5.weight",
        "fc.weight: file [512, 10], network [10, 512]",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
}

/// `init_from_baseline`: shared layers bit-identical, every parent and every child kernel equal
/// to the pretrained conv it maps from, attentions zero, routers as initialised.
#[test]
fn kernel_dna_networks_start_from_a_pretrained_baseline() {
    use kdna::models::pretrained::{init_from_baseline, layer_map, source_key};
    use kdna::ops::modulate::Modulate;
    let gpu = gpu();
    for arch in [Arch::ResNet18, Arch::ResNet50, Arch::MobileNetV2Half, Arch::ConvNeXtTiny] {
        let spec = |kdna| ModelSpec { arch, kdna, classes: 10, drop_path: 0.0 };
        let base_net = build(spec(false), 2, 32, 0.0).unwrap();
        let base = Weights::new(&gpu, &base_net.graph);
        base.initialise(&gpu, &base_net.graph, 1);
        let baseline = base.export(&gpu).unwrap();

        let net = build(spec(true), 2, 32, 0.0).unwrap();
        // Children stored as tensors, so that they can be read back.
        let plan = Plan { fuse: false, ..Plan::eval() };
        let mut exe = Executor::new(gpu.clone(), &net.graph, plan).unwrap();
        exe.weights().initialise(&gpu, &net.graph, 2);
        let fresh = exe.weights().export(&gpu).unwrap();
        let mut dict = fresh.clone();
        init_from_baseline(arch, &mut dict, &baseline).unwrap();
        exe.weights().import(&gpu, &dict).unwrap();

        let map = layer_map(arch);
        for (key, t) in &dict.floats {
            if key.contains("static_") {
                assert!(t.data.iter().all(|&v| v == 0.0), "{arch}: {key} is not zero");
            } else if let Some(src) = source_key(&map, key, &baseline) {
                assert_eq!(t.data, baseline.floats[&src].data, "{arch}: {key} differs from {src}");
            } else {
                assert!(key.contains(".se"), "{arch}: {key} has no pretrained source and is not a router");
                assert_eq!(t.data, fresh.floats[key].data, "{arch}: router {key} changed");
            }
        }
        // Children, as the network computes them, equal their parent's pretrained conv at every
        // tap the network reads (at 32x32 layer4's 1x1 maps read only a 3x3 kernel's centre).
        exe.run().unwrap();
        let mut children = 0;
        for node in &net.graph.nodes {
            let Some(m) = node.op.as_any().downcast_ref::<Modulate>() else { continue };
            let parent = &net.graph.info(node.inputs[0]).name;
            let src = source_key(&map, parent, &baseline).expect("every parent has a pretrained source");
            let live = m.live_taps.expect("every child feeds a conv");
            let read = |values: &[f32]| -> Vec<f32> {
                let tap = |e: usize| (e % m.fan) % m.taps;
                values.iter().enumerate().filter(|&(e, _)| live >> tap(e) & 1 == 1).map(|(_, &v)| v).collect()
            };
            let want = read(&baseline.floats[&src].data);
            assert!(!want.is_empty(), "{arch}: no tap of {parent}'s children is read");
            for &child in &node.outputs {
                assert_eq!(read(&exe.read(child).unwrap()), want, "{arch}: child of {parent}");
                children += 1;
            }
        }
        assert!(children >= 3, "{arch}: {children} children checked");
    }
}

/// Relu, relu6, sigmoid and GELU nodes, and adds and BatchNorms that apply one: the activations
/// a layer can apply as it stores.
fn fusable_activations(graph: &Graph) -> usize {
    let fusable = |name: &str| {
        matches!(name, "relu" | "relu6" | "sigmoid" | "gelu") || name.ends_with("_relu") || name.ends_with("_relu6")
    };
    graph.nodes.iter().filter(|n| fusable(n.op.name())).count()
}

/// Eval with children computed once and BatchNorm folded into the layers before it gives the
/// same logits as the graph it came from.
#[test]
fn folded_eval_matches_unfolded_eval_for_every_architecture() {
    use kdna::graph::fold::fold;
    let gpu = gpu();
    for arch in Arch::ALL {
        for kdna in [false, true] {
            let net = build(ModelSpec { arch, kdna, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap();
            let mut exe = Executor::new(gpu.clone(), &net.graph, Plan::eval()).unwrap();
            exe.weights().initialise(&gpu, &net.graph, 3);
            // Statistics, affines, attentions and the classifier away from their initial
            // values, so every folded term carries signal.
            let mut dict = exe.weights().export(&gpu).unwrap();
            let mut rng = common::rng(11);
            for (key, t) in dict.floats.iter_mut() {
                let noise = common::randn(&mut rng, t.data.len());
                for (v, z) in t.data.iter_mut().zip(noise) {
                    let z = z as f32;
                    *v = if key.ends_with("running_var") {
                        0.5 + z.abs()
                    } else if key.ends_with("running_mean") || key.contains("attn") || key.ends_with(".bias") {
                        0.2 * z
                    } else if t.shape.len() == 1 {
                        1.0 + 0.2 * z
                    } else if key.starts_with("fc.") || key.starts_with("classifier.") {
                        z
                    } else {
                        *v
                    };
                }
            }
            exe.weights().import(&gpu, &dict).unwrap();
            let images: Vec<f32> = common::randn(&mut rng, 2 * 3 * 32 * 32).iter().map(|&v| v as f32).collect();
            exe.write(net.images, &images).unwrap();
            exe.run().unwrap();
            let want: Vec<f64> = exe.read(net.logits).unwrap().iter().map(|&v| v as f64).collect();

            let folded = fold(&net.graph, &dict).unwrap();
            let ops: Vec<&str> = folded.graph.nodes.iter().map(|n| n.op.name()).collect();
            let left = |op: &&str| op.starts_with("batchnorm") || *op == "modulate" || *op == "layer_scale";
            assert!(!ops.iter().any(left), "{arch}: {ops:?}");
            // A router's pool and two projections become one op (their relu and sigmoid with
            // them), and its gate goes into the conv after it.
            let routers = net.graph.nodes.iter().filter(|n| n.op.name() == "channel_scale").count();
            assert_eq!(kdna, routers > 0, "{arch}: routers only in KernelDNA networks");
            assert!(!ops.contains(&"channel_scale"), "{arch}: a router's gate left unfused: {ops:?}");
            let gates = ops.iter().filter(|&&op| op == "router_gate").count();
            assert_eq!(gates, routers, "{arch}: routers made one op each: {ops:?}");
            let fused = fusable_activations(&net.graph) - fusable_activations(&folded.graph);
            assert!(fused >= 2 * routers, "{arch}: {fused} activations fused for {routers} routers");
            let mut fexe = Executor::new(gpu.clone(), &folded.graph, Plan::eval()).unwrap();
            fexe.weights().import(&gpu, &folded.weights).unwrap();
            fexe.write(folded.tensors[&net.images], &images).unwrap();
            fexe.run().unwrap();
            let got: Vec<f64> = fexe.read(folded.tensors[&net.logits]).unwrap().iter().map(|&v| v as f64).collect();
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1.0, "{arch}: logits too small to test ({scale})");
            common::assert_close(&format!("{arch} kdna={kdna} folded logits"), &got, &want, 1e-4);
            // Folding removes dispatches where there is something to fold or fuse (baseline
            // ConvNeXt has neither BatchNorm nor children, but its layer scales and GELUs go into
            // the convs before them).
            let foldable =
                net.graph.nodes.iter().any(|n| matches!(n.op.name(), "batchnorm" | "modulate" | "layer_scale"));
            let gelus = net.graph.nodes.iter().filter(|n| n.op.name() == "gelu").count();
            assert!(!ops.contains(&"gelu"), "{arch}: a GELU left unfused: {ops:?}");
            let foldable = foldable || gelus > 0;
            let dispatches = (exe.dispatch_counts().0, fexe.dispatch_counts().0);
            assert_eq!(dispatches.1 < dispatches.0, foldable, "{arch} kdna={kdna}: {dispatches:?} dispatches");
        }
    }
}
