//! Checkpoints: one safetensors file holding the weights under their PyTorch names, the
//! optimizer's momentum (SGD's, or AdamW's first moment) under `optimizer.<param key>`,
//! AdamW's second moment under `optimizer_sq.<param key>`, and everything else as JSON in the
//! header metadata (key `kdna`) — one file, written atomically, so it is always consistent.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use crate::io::{HostTensor, StateDict};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const BEST_FILE: &str = "model_best.safetensors";
const FORMAT: &str = "kdna-checkpoint";
const METADATA_KEY: &str = "kdna";
const MOMENTUM_PREFIX: &str = "optimizer.";
const SECOND_MOMENT_PREFIX: &str = "optimizer_sq.";

/// What a checkpoint records beside its tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub format: String,
    pub version: u32,
    /// Epochs completed.
    pub epoch: usize,
    pub best_acc1: f64,
    pub arch: String,
    pub baseline: bool,
    pub num_classes: usize,
    pub res: usize,
    /// Dataset kind (`--dataset` name) and where it was (`--data`), for `kdna eval`.
    pub dataset: String,
    pub data: Option<String>,
    pub schedule: Schedule,
    pub optimizer_steps: u64,
    /// The arguments of the run that wrote it.
    pub args: serde_json::Value,
    /// Whether its depthwise convolutions ran the row kernels ([`crate::gpu::Gpu::depthwise_rows`]),
    /// whose weight gradients sum in another order than the GPU ones: a run resumed on the
    /// other family continues, but not bit for bit (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depthwise_rows: Option<bool>,
}

impl CheckpointInfo {
    pub fn new_v1() -> CheckpointInfo {
        CheckpointInfo {
            format: FORMAT.into(),
            version: 1,
            epoch: 0,
            best_acc1: 0.0,
            arch: String::new(),
            baseline: false,
            num_classes: 0,
            res: 0,
            dataset: String::new(),
            data: None,
            schedule: Schedule { lr: 0.0, eta_min: 0.0, epochs: 0, warmup_epochs: 0 },
            optimizer_steps: 0,
            args: serde_json::Value::Null,
            depthwise_rows: None,
        }
    }
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub info: CheckpointInfo,
    pub weights: StateDict,
    pub momentum: BTreeMap<String, HostTensor>,
    /// AdamW's second moment (empty for SGD).
    pub second_moment: BTreeMap<String, HostTensor>,
}

/// Saves `weights` and the optimizer's `[momentum, second moment]` (the second empty for SGD).
pub fn save(
    path: &Path,
    info: &CheckpointInfo,
    weights: &StateDict,
    [momentum, second_moment]: &[BTreeMap<String, HostTensor>; 2],
) -> Result<()> {
    let mut all = weights.clone();
    for (prefix, moment) in [(MOMENTUM_PREFIX, momentum), (SECOND_MOMENT_PREFIX, second_moment)] {
        for (k, t) in moment {
            all.floats.insert(format!("{prefix}{k}"), t.clone());
        }
    }
    let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(info)?)]);
    all.save_with_metadata(path, Some(metadata)).with_context(|| format!("saving checkpoint {}", path.display()))
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let (mut dict, metadata) = StateDict::load_with_metadata(path)?;
    let Some(json) = metadata.get(METADATA_KEY) else {
        bail!(
            "{} is not a kdna checkpoint (no `{METADATA_KEY}` metadata); plain weights start a run with --init-from \
             (a baseline) or are evaluated with kdna parity",
            path.display()
        );
    };
    let info: CheckpointInfo =
        serde_json::from_str(json).with_context(|| format!("{}: unreadable kdna metadata", path.display()))?;
    if info.format != FORMAT || info.version != 1 {
        bail!(
            "{}: checkpoint format {} version {} is not one this kdna reads",
            path.display(),
            info.format,
            info.version
        );
    }
    let mut take = |prefix: &str| -> BTreeMap<String, HostTensor> {
        let keys: Vec<String> = dict.floats.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter().map(|k| (k[prefix.len()..].to_string(), dict.floats.remove(&k).expect("listed"))).collect()
    };
    let momentum = take(MOMENTUM_PREFIX);
    let second_moment = take(SECOND_MOMENT_PREFIX);
    Ok(Checkpoint { info, weights: dict, momentum, second_moment })
}
