//! `kdna parity`: one batch through a network in eval and train mode, with every gradient,
//! written under PyTorch's names so a port can be checked against torch tensor by tensor.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::gpu::Gpu;
use crate::graph::{Executor, Plan};
use crate::io::{HostTensor, StateDict, load_safetensors};
use crate::models::{Arch, ModelSpec, build};
use crate::ops::Mode;

/// The classifier weight of each architecture, whose rows give the class count.
fn classifier_key(arch: Arch) -> &'static str {
    match arch {
        Arch::ResNet18 | Arch::ResNet50 => "fc.weight",
        Arch::MobileNetV2 | Arch::MobileNetV2Half => "classifier.1.weight",
        Arch::ConvNeXtTiny => "classifier.2.weight",
    }
}

/// Runs parity for `arch` (KernelDNA unless `baseline`) with the weights in `weights_path` on
/// the `images` and `labels` in `batch_path`, and writes `logits.eval`, `logits`, `loss` and
/// `grad.<key>` to `out_path`. `classes` defaults to the classifier's rows in the weights.
pub fn run(
    gpu: Arc<Gpu>,
    arch: Arch,
    baseline: bool,
    classes: Option<usize>,
    weights_path: &Path,
    batch_path: &Path,
    out_path: &Path,
) -> Result<()> {
    let dict = StateDict::load(weights_path)?;
    let classes = match classes {
        Some(c) => c,
        None => dict.floats.get(classifier_key(arch)).map(|t| t.shape[0]).unwrap_or(1000),
    };
    let batch = load_safetensors(batch_path)?;
    let images = batch.get("images").with_context(|| format!("{} has no tensor \"images\"", batch_path.display()))?;
    let labels = batch.get("labels").with_context(|| format!("{} has no tensor \"labels\"", batch_path.display()))?;
    let &[n, 3, h, w] = images.shape.as_slice() else {
        bail!("{}: images have shape {:?}, expected [N, 3, H, W]", batch_path.display(), images.shape);
    };
    if h != w {
        bail!("{}: images are {h}x{w}; kdna's networks take square inputs", batch_path.display());
    }
    if labels.shape != [n] {
        bail!("{}: labels have shape {:?}, expected [{n}]", batch_path.display(), labels.shape);
    }
    let label_values: Vec<u32> = labels
        .data
        .iter()
        .map(|&l| {
            if l < 0.0 || l as usize >= classes || l.fract() != 0.0 {
                bail!("{}: label {l} is not a class index below {classes}", batch_path.display());
            }
            Ok(l as u32)
        })
        .collect::<Result<_>>()?;

    let net = build(ModelSpec { arch, kdna: !baseline, classes, drop_path: 0.0 }, n, h, 0.0)?;
    let mut eval = Executor::new(gpu.clone(), &net.graph, Plan::eval())?;
    eval.weights().import(&gpu, &dict).with_context(|| format!("loading {}", weights_path.display()))?;
    eval.write(net.images, &images.data)?;
    eval.run()?;
    let logits_eval = eval.read(net.logits)?;

    let plan = Plan {
        mode: Mode::Train,
        backward_from: vec![net.loss],
        input_grads: false,
        optimizer: None,
        frozen: Default::default(),
        fuse: true,
    };
    let mut train = Executor::with_weights(gpu, &net.graph, plan, Arc::clone(eval.weights()))?;
    train.write(net.images, &images.data)?;
    train.write_labels(net.labels, &label_values)?;
    train.run()?;

    let mut out = BTreeMap::new();
    out.insert("logits.eval".to_string(), HostTensor { shape: vec![n, classes], data: logits_eval });
    out.insert("logits".to_string(), HostTensor { shape: vec![n, classes], data: train.read(net.logits)? });
    out.insert("loss".to_string(), HostTensor { shape: vec![1], data: train.read(net.loss)?[..1].to_vec() });
    for (id, t) in net.graph.params() {
        out.insert(format!("grad.{}", t.name), HostTensor { shape: t.shape.clone(), data: train.read_grad(id)? });
    }
    StateDict { floats: out, counters: BTreeMap::new() }.save(out_path)
}
