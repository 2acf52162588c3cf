//! CIFAR-10 and CIFAR-100 in their binary versions (`cifar-10-batches-bin`,
//! `cifar-100-binary`): records of label byte(s) then 3 x 32 x 32 planes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, DatasetKind, ImageArray, Samples, Split};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

pub fn open(root: &Path, kind: DatasetKind) -> Result<Dataset> {
    // Accept the folder that holds the files, or the one above it.
    let sub = if kind == DatasetKind::Cifar10 { "cifar-10-batches-bin" } else { "cifar-100-binary" };
    let dir = if root.join(sub).is_dir() { root.join(sub) } else { root.to_path_buf() };
    let (train, val, classes, label_bytes): (Vec<String>, Vec<String>, usize, usize) = match kind {
        DatasetKind::Cifar10 => {
            ((1..=5).map(|i| format!("data_batch_{i}.bin")).collect(), vec!["test_batch.bin".into()], 10, 1)
        }
        _ => (vec!["train.bin".into()], vec!["test.bin".into()], 100, 2),
    };
    let split = |files: &[String]| -> Result<Split> {
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        read_split(&paths, classes, label_bytes)
    };
    let names_file = if kind == DatasetKind::Cifar10 { "batches.meta.txt" } else { "fine_label_names.txt" };
    let class_names = std::fs::read_to_string(dir.join(names_file))
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>())
        .ok()
        .filter(|names| names.len() == classes)
        .unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect());
    Ok(Dataset { kind, root: None, classes, class_names, train: split(&train)?, val: split(&val)? })
}

/// Records of `label_bytes` bytes (CIFAR-100: coarse then fine; the fine label is used) and
/// 3072 pixel bytes, channel planes first.
fn read_split(paths: &[PathBuf], classes: usize, label_bytes: usize) -> Result<Split> {
    let record = label_bytes + PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            bail!(
                "{} is truncated or not a CIFAR binary: {} bytes is not a whole number of {record}-byte records",
                path.display(),
                bytes.len()
            );
        }
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            let label = r[label_bytes - 1] as usize;
            if label >= classes {
                bail!("{}: label {label} of record {i} is out of range (0..{classes})", path.display());
            }
            labels.push(label as u32);
            // Planes (R, G, B) to interleaved height x width x channel.
            let planes = &r[label_bytes..];
            pixels.extend(
                (0..SIDE * SIDE).flat_map(|p| [planes[p], planes[SIDE * SIDE + p], planes[2 * SIDE * SIDE + p]]),
            );
        }
    }
    Ok(Split { samples: Samples::Memory(ImageArray { height: SIDE, width: SIDE, channels: 3, pixels }), labels })
}
