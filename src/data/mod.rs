//! Datasets, augmentation and the background loader that feeds the trainer.
//!
//! A dataset is chosen by what `--data` points at (or by `--dataset`): an ImageNet-style
//! folder tree, CIFAR-10/100 binaries, MNIST-format IDX files, or, with no `--data`, the
//! Fashion-MNIST subset compiled into kdna. Every image becomes 3 x res x res f32, normalised
//! with its dataset's statistics.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, bail};

pub use augment::Augment;
pub use loader::{Batch, Loader};

/// The dataset formats kdna reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// The Fashion-MNIST subset compiled into kdna (6,000 train / 1,000 val).
    Embedded,
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    /// `train/<class>/*.jpg|png`, `val/<class>/...` (the ImageNet layout).
    ImageFolder,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Embedded,
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::ImageFolder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Embedded => "embedded",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::ImageFolder => "imagefolder",
        }
    }

    /// The resolution this kind trains at unless `--res` says otherwise: the images' own size
    /// for MNIST-like sets (28) and CIFAR (32), main.py's 224 for folders.
    pub fn native_res(self) -> usize {
        match self {
            DatasetKind::ImageFolder => 224,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => 32,
            DatasetKind::Embedded | DatasetKind::Mnist | DatasetKind::FashionMnist => 28,
        }
    }

    /// The transform of this kind's training (`train`) or validation split.
    pub fn augment(self, train: bool) -> Augment {
        match (self, train) {
            (DatasetKind::ImageFolder, true) => Augment::FolderTrain,
            (DatasetKind::ImageFolder, false) => Augment::FolderVal,
            (_, true) => Augment::SmallTrain,
            (_, false) => Augment::SmallVal,
        }
    }

    /// Per-channel mean and standard deviation (of pixel values in 0..1) the images are
    /// normalised with: the usual published figures for each set.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self {
            DatasetKind::Embedded | DatasetKind::FashionMnist => ([0.2860; 3], [0.3530; 3]),
            DatasetKind::Mnist => ([0.1307; 3], [0.3081; 3]),
            DatasetKind::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            DatasetKind::Cifar100 => ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
            DatasetKind::ImageFolder => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for DatasetKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<DatasetKind> {
        let wanted = s.to_ascii_lowercase().replace('_', "-");
        match DatasetKind::ALL.into_iter().find(|k| k.name() == wanted) {
            Some(k) => Ok(k),
            None => {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown dataset {s:?}; kdna reads {}", names.join(", "))
            }
        }
    }
}

/// Images held in memory, all of one size: `pixels` is [n][height][width][channels] bytes.
#[derive(Clone, Debug)]
pub struct ImageArray {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl ImageArray {
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.height * self.width * self.channels;
        &self.pixels[i * size..(i + 1) * size]
    }
}

/// Where one split's images come from.
#[derive(Clone, Debug)]
pub enum Samples {
    Memory(ImageArray),
    /// Image files, decoded when a batch needs them.
    Files(Vec<PathBuf>),
}

/// One split (train or validation): images and their class labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub samples: Samples,
    pub labels: Vec<u32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A dataset ready to load: both splits, the class count, and where it came from.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    /// What `--data` pointed at (None for the embedded set).
    pub root: Option<PathBuf>,
    pub classes: usize,
    pub class_names: Vec<String>,
    pub train: Split,
    pub val: Split,
}

impl Dataset {
    /// Opens the dataset `data` points at (its format found from its files unless `kind`
    /// says), or the embedded set when both are None.
    pub fn open(data: Option<&Path>, kind: Option<DatasetKind>) -> Result<Dataset> {
        let Some(root) = data else {
            return match kind {
                None | Some(DatasetKind::Embedded) => idx::embedded(),
                Some(k) => bail!("--dataset {k} needs --data DIR (where its files are)"),
            };
        };
        if !root.exists() {
            bail!("data directory {} does not exist", root.display());
        }
        if !root.is_dir() {
            bail!("--data {} is not a directory", root.display());
        }
        let kind = match kind {
            Some(k) => k,
            None => detect(root)?,
        };
        let mut ds = match kind {
            DatasetKind::Embedded => bail!("--dataset embedded takes no --data"),
            DatasetKind::FashionMnist | DatasetKind::Mnist => idx::open(root, kind)?,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => cifar::open(root, kind)?,
            DatasetKind::ImageFolder => folder::open(root)?,
        };
        ds.root = Some(root.to_path_buf());
        Ok(ds)
    }
}

/// The format of the dataset under `root`, from the files it holds.
fn detect(root: &Path) -> Result<DatasetKind> {
    let has = |name: &str| root.join(name).exists();
    if has("train") && has("val") && root.join("train").is_dir() {
        return Ok(DatasetKind::ImageFolder);
    }
    if has("data_batch_1.bin") || has("cifar-10-batches-bin") {
        return Ok(DatasetKind::Cifar10);
    }
    if has("train.bin") || has("cifar-100-binary") {
        return Ok(DatasetKind::Cifar100);
    }
    if has("train-images-idx3-ubyte") || has("train-images-idx3-ubyte.gz") {
        let fashion = root.canonicalize().unwrap_or(root.to_path_buf()).to_string_lossy().to_lowercase();
        return Ok(if fashion.contains("fashion") { DatasetKind::FashionMnist } else { DatasetKind::Mnist });
    }
    let empty = std::fs::read_dir(root).map(|mut d| d.next().is_none()).unwrap_or(false);
    if empty {
        bail!("data directory {} is empty", root.display());
    }
    bail!(
        "cannot tell the dataset format of {}: expected train/ and val/ class folders (ImageNet layout), \
         CIFAR binaries (data_batch_1.bin or train.bin), or MNIST IDX files (train-images-idx3-ubyte[.gz]); \
         --dataset NAME says which it is",
        root.display()
    )
}
