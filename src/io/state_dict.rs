//! PyTorch state dicts in safetensors files: float tensors under their module paths, and the
//! integer `num_batches_tracked` of every BatchNorm.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, write_atomically};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub floats: BTreeMap<String, HostTensor>,
    /// Integer scalars (BatchNorm's `num_batches_tracked`), kept exact.
    pub counters: BTreeMap<String, i64>,
}

impl StateDict {
    /// Reads a state dict saved by `safetensors.torch.save_file(model.state_dict(), path)` or
    /// by kdna. Float tensors may be F32, F64, F16 or BF16 (converted to f32); integer tensors
    /// must be scalars (I64 or I32).
    pub fn load(path: &Path) -> Result<StateDict> {
        Ok(Self::load_with_metadata(path)?.0)
    }

    /// [`StateDict::load`], and the file's header metadata (empty when it has none).
    pub fn load_with_metadata(path: &Path) -> Result<(StateDict, HashMap<String, String>)> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors file (truncated or corrupt?)", path.display()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a safetensors file (truncated or corrupt?)", path.display()))?;
        let mut dict = StateDict::default();
        for (name, view) in file.tensors() {
            let raw = view.data();
            let shape = view.shape().to_vec();
            let floats: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::I64 | Dtype::I32 => {
                    if shape.iter().product::<usize>() != 1 {
                        bail!("{}: integer tensor {name:?} has shape {shape:?}; kdna expects scalars", path.display());
                    }
                    let value = match view.dtype() {
                        Dtype::I64 => i64::from_le_bytes(raw[..8].try_into().unwrap()),
                        _ => i32::from_le_bytes(raw[..4].try_into().unwrap()) as i64,
                    };
                    dict.counters.insert(name, value);
                    continue;
                }
                other => bail!("{}: tensor {name:?} has dtype {other:?}, which kdna cannot read", path.display()),
            };
            dict.floats.insert(name, HostTensor { shape, data: floats });
        }
        Ok((dict, metadata))
    }

    /// Writes the state dict (F32 tensors, I64 scalars with shape []), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with_metadata(path, None)
    }

    /// [`StateDict::save`] with string metadata in the safetensors header.
    pub fn save_with_metadata(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let float_bytes: Vec<(&String, &HostTensor, Vec<u8>)> =
            self.floats.iter().map(|(k, t)| (k, t, t.data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let int_bytes: Vec<(&String, [u8; 8])> = self.counters.iter().map(|(k, v)| (k, v.to_le_bytes())).collect();
        let mut views = Vec::new();
        for (name, t, bytes) in &float_bytes {
            views.push(((*name).clone(), TensorView::new(Dtype::F32, t.shape.clone(), bytes)?));
        }
        for (name, bytes) in &int_bytes {
            views.push(((*name).clone(), TensorView::new(Dtype::I64, vec![], bytes)?));
        }
        let bytes = safetensors::serialize(views, metadata).context("encoding safetensors")?;
        write_atomically(path, &bytes)
    }
}
