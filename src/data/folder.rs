//! ImageNet-layout folders: `train/<class>/*.{jpg,jpeg,png}` and `val/<class>/...`, classes
//! sorted by name (torchvision's ImageFolder order), images decoded when loaded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, DatasetKind, Samples, Split};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

pub fn open(root: &Path) -> Result<Dataset> {
    let train_dir = root.join("train");
    let classes = class_folders(&train_dir)?;
    let train = scan(&train_dir, &classes)?;
    let val = scan(&root.join("val"), &classes)?;
    Ok(Dataset { kind: DatasetKind::ImageFolder, root: None, classes: classes.len(), class_names: classes, train, val })
}

fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if e.path().is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        bail!("{} has no class folders (expected {}/<class>/*.jpg)", dir.display(), dir.display());
    }
    names.sort();
    Ok(names)
}

/// Every image under `dir/<class>/`, in sorted order; a class folder without images is an
/// error (it would be a class the network can never learn).
fn scan(dir: &Path, classes: &[String]) -> Result<Split> {
    if !dir.is_dir() {
        bail!("{} is missing (expected the same class folders as train/)", dir.display());
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        let mut images: Vec<PathBuf> = match std::fs::read_dir(&class_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if images.is_empty() {
            bail!("class folder {} has no images (.jpg, .jpeg or .png)", class_dir.display());
        }
        images.sort();
        labels.extend(std::iter::repeat_n(label as u32, images.len()));
        files.extend(images);
    }
    Ok(Split { samples: Samples::Files(files), labels })
}
