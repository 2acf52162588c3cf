//! Starting a KernelDNA network from a pretrained torchvision baseline.
//!
//! Layers the two networks share (same state-dict key) copy over. In the KernelDNA stages every
//! layer takes the pretrained layer that sits in its place, block by block; a parent kernel
//! takes the pretrained conv in its place, and its children start equal to it (attentions are
//! zero), so a child's kernel is its parent's source, whatever conv it replaced. Routers and
//! attentions stay as initialised. Where KernelDNA has more blocks than the baseline, the
//! extra block takes the stage's last pretrained block. The mapping of every architecture is
//! `layer_map`; ARCHITECTURE.md lists it in words.

use anyhow::{Result, bail};

use super::Arch;
use crate::io::StateDict;

/// (KernelDNA module, baseline module) pairs: every tensor under the first (weight, bias,
/// running statistics, num_batches_tracked) comes from the same suffix under the second.
pub fn layer_map(arch: Arch) -> Vec<(String, String)> {
    let mut map = Vec::new();
    let mut pair = |k: String, b: String| map.push((k, b));
    match arch {
        Arch::ResNet18 => {
            for s in ["layer3", "layer4"] {
                // Blocks [conv1 -> child0(conv2)], [child1(conv2) -> conv2], [child2(conv3) -> conv3]
                // over torchvision's [0.conv1 -> 0.conv2], [1.conv1 -> 1.conv2].
                pair(format!("{s}.conv1"), format!("{s}.0.conv1"));
                pair(format!("{s}.bn1"), format!("{s}.0.bn1"));
                pair(format!("{s}.downsample"), format!("{s}.0.downsample"));
                pair(format!("{s}.bns.0"), format!("{s}.0.bn2"));
                pair(format!("{s}.bns.1"), format!("{s}.1.bn1"));
                pair(format!("{s}.conv2"), format!("{s}.1.conv2"));
                pair(format!("{s}.bn2"), format!("{s}.1.bn2"));
                // The third block is new: it repeats the second.
                pair(format!("{s}.bns.2"), format!("{s}.1.bn1"));
                pair(format!("{s}.conv3"), format!("{s}.1.conv2"));
                pair(format!("{s}.bn3"), format!("{s}.1.bn2"));
            }
        }
        Arch::ResNet50 => {
            let bottleneck = |pair: &mut dyn FnMut(String, String), kdna: &str, base: &str| {
                for l in ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"] {
                    pair(format!("{kdna}.layers.{l}"), format!("{base}.{l}"));
                }
                pair(format!("{kdna}.downsample.conv"), format!("{base}.downsample.0"));
                pair(format!("{kdna}.downsample.bn"), format!("{base}.downsample.1"));
            };
            let kid = |pair: &mut dyn FnMut(String, String), kdna: &str, base: &str| {
                pair(format!("{kdna}.half1.conv1"), format!("{base}.conv1"));
                pair(format!("{kdna}.half1.bn1"), format!("{base}.bn1"));
                pair(format!("{kdna}.half2.bn2"), format!("{base}.bn2"));
                pair(format!("{kdna}.half2.conv3"), format!("{base}.conv3"));
                pair(format!("{kdna}.half2.bn3"), format!("{base}.bn3"));
            };
            // layer3: block0, kid0, parent0, kid1, parent1, kid2, parent2 over layer3.0 .. layer3.5.
            bottleneck(&mut pair, "layer3.block0", "layer3.0");
            for i in 0..3 {
                kid(&mut pair, &format!("layer3.kids.{i}"), &format!("layer3.{}", 2 * i + 1));
                bottleneck(&mut pair, &format!("layer3.parents.{i}"), &format!("layer3.{}", (2 * i + 2).min(5)));
            }
            // layer4: block0, kid, last_block over layer4.0 .. layer4.2.
            bottleneck(&mut pair, "layer4.block0", "layer4.0");
            kid(&mut pair, "layer4.blocks.0", "layer4.1");
            bottleneck(&mut pair, "layer4.last_block", "layer4.2");
        }
        Arch::MobileNetV2 | Arch::MobileNetV2Half => {
            // Each cluster at features.<last> replaces features.<first> ..= features.<last>:
            // transition <- first, kid i <- first + 1 + i, last_block <- last.
            for (first, last, kids) in [(4, 6, 1), (7, 10, 2), (11, 13, 1), (14, 16, 1)] {
                let ib = |pair: &mut dyn FnMut(String, String), kdna: String, base: usize| {
                    for (k, b) in
                        [("pw1", "0.0"), ("bn1", "0.1"), ("dw", "1.0"), ("bn2", "1.1"), ("pw2", "2"), ("bn3", "3")]
                    {
                        pair(format!("{kdna}.layers.{k}"), format!("features.{base}.conv.{b}"));
                    }
                };
                ib(&mut pair, format!("features.{last}.transition"), first);
                ib(&mut pair, format!("features.{last}.last_block"), last);
                for i in 0..kids {
                    let (kdna, base) = (format!("features.{last}.blocks.{i}"), first + 1 + i);
                    for (k, b) in [("bn1", "0.1"), ("dwconv", "1.0"), ("bn2", "1.1"), ("bn3", "3")] {
                        pair(format!("{kdna}.{k}"), format!("features.{base}.conv.{b}"));
                    }
                }
            }
        }
        Arch::ConvNeXtTiny => {
            // A kid takes the block in its place: its depthwise conv, LayerNorm, pointwise biases
            // and layer scale (its pointwise weights are its parent's).
            let kid = |pair: &mut dyn FnMut(String, String), kdna: &str, base: &str| {
                for (k, b) in [
                    ("dwconv", "block.0"),
                    ("norm", "block.2"),
                    ("pw1_bias", "block.3.bias"),
                    ("pw2_bias", "block.5.bias"),
                    ("layer_scale", "layer_scale"),
                ] {
                    pair(format!("{kdna}.{k}"), format!("{base}.{b}"));
                }
            };
            // features.5: block0, kid_i, parent_i over features.5.0 .. features.5.8.
            pair("features.5.block0".into(), "features.5.0".into());
            for i in 0..4 {
                kid(&mut pair, &format!("features.5.kids.{i}"), &format!("features.5.{}", 2 * i + 1));
                pair(format!("features.5.parents.{i}"), format!("features.5.{}", 2 * i + 2));
            }
            // features.7: block0, kid, last_block over features.7.0 .. features.7.2.
            pair("features.7.block0".into(), "features.7.0".into());
            kid(&mut pair, "features.7.blocks.0", "features.7.1");
            pair("features.7.last_block".into(), "features.7.2".into());
        }
    }
    map
}

/// The baseline key a KernelDNA key takes its value from: through `map` by module prefix, or
/// the same key where the networks share the layer. `None` for routers and attentions.
pub fn source_key(map: &[(String, String)], kdna_key: &str, baseline: &StateDict) -> Option<String> {
    for (k, b) in map {
        if let Some(suffix) = kdna_key.strip_prefix(k.as_str()).filter(|s| s.is_empty() || s.starts_with('.')) {
            return Some(format!("{b}{suffix}"));
        }
    }
    let shared = baseline.floats.contains_key(kdna_key) || baseline.counters.contains_key(kdna_key);
    shared.then(|| kdna_key.to_string())
}

/// Overwrites `kdna` (a freshly initialised KernelDNA state dict) with the pretrained values of
/// `baseline` wherever the mapping says; routers and attentions keep their initial values.
pub fn init_from_baseline(arch: Arch, kdna: &mut StateDict, baseline: &StateDict) -> Result<()> {
    let map = layer_map(arch);
    let mut problems = Vec::new();
    for (key, tensor) in kdna.floats.iter_mut() {
        let Some(src) = source_key(&map, key, baseline) else { continue };
        match baseline.floats.get(&src) {
            Some(b) if b.shape == tensor.shape || b.numel() == tensor.numel() && tensor.shape.len() == 1 => {
                tensor.data.clone_from(&b.data)
            }
            Some(b) => problems.push(format!("{key} <- {src}: shapes {:?} and {:?}", tensor.shape, b.shape)),
            None => problems.push(format!("{key} <- {src}: missing from the baseline")),
        }
    }
    for (key, count) in kdna.counters.iter_mut() {
        if let Some(v) = source_key(&map, key, baseline).and_then(|src| baseline.counters.get(&src)) {
            *count = *v;
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(10).map(String::as_str).collect();
        bail!("the baseline weights do not fit {arch}: {} ({} problems)", shown.join("; "), problems.len());
    }
    Ok(())
}
