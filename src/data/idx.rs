//! MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or raw, and the embedded
//! Fashion-MNIST subset in the same format.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, DatasetKind, ImageArray, Samples, Split};

const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;
const CLASSES: usize = 10;

const FASHION_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The Fashion-MNIST subset compiled into kdna (`data/fashion-mnist-subset`).
pub fn embedded() -> Result<Dataset> {
    const DIR: &str = "data/fashion-mnist-subset";
    let file = |name: &str, bytes: &[u8]| -> Result<Vec<u8>> { gunzip(bytes, &format!("{DIR}/{name}")) };
    let split = |prefix: &str, images: &[u8], labels: &[u8]| -> Result<Split> {
        let (i, l) = (format!("{prefix}-images-idx3-ubyte.gz"), format!("{prefix}-labels-idx1-ubyte.gz"));
        parse_split(&file(&i, images)?, &file(&l, labels)?, Path::new(&i), Path::new(&l))
    };
    Ok(Dataset {
        kind: DatasetKind::Embedded,
        root: None,
        classes: CLASSES,
        class_names: FASHION_NAMES.iter().map(|s| s.to_string()).collect(),
        train: split(
            "train",
            include_bytes!("../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz"),
            include_bytes!("../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz"),
        )?,
        val: split(
            "t10k",
            include_bytes!("../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz"),
            include_bytes!("../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz"),
        )?,
    })
}

/// MNIST or Fashion-MNIST in `root`: train-* for training, t10k-* for validation.
pub fn open(root: &Path, kind: DatasetKind) -> Result<Dataset> {
    let split = |prefix: &str| -> Result<Split> {
        let images = find(root, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find(root, &format!("{prefix}-labels-idx1-ubyte"))?;
        parse_split(&read(&images)?, &read(&labels)?, &images, &labels)
    };
    let class_names = match kind {
        DatasetKind::FashionMnist => FASHION_NAMES.iter().map(|s| s.to_string()).collect(),
        _ => (0..CLASSES).map(|c| c.to_string()).collect(),
    };
    Ok(Dataset { kind, root: None, classes: CLASSES, class_names, train: split("train")?, val: split("t10k")? })
}

/// `name` or `name.gz` in `root` (also the `name` spelled with a dot, as some mirrors do).
fn find(root: &Path, name: &str) -> Result<PathBuf> {
    let dotted = name.replacen("-idx", ".idx", 1);
    for candidate in [name.to_string(), format!("{name}.gz"), dotted.clone(), format!("{dotted}.gz")] {
        let path = root.join(&candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("{} has no {name} or {name}.gz", root.display())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) { gunzip(&bytes, &path.display().to_string()) } else { Ok(bytes) }
}

fn gunzip(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .with_context(|| format!("{name} is not a valid gzip file (truncated or corrupt?)"))?;
    Ok(out)
}

fn header(bytes: &[u8], words: usize, path: &Path) -> Result<Vec<usize>> {
    if bytes.len() < 4 * words {
        bail!("{} is truncated: {} bytes, shorter than its {}-byte IDX header", path.display(), bytes.len(), 4 * words);
    }
    Ok((0..words).map(|i| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize).collect())
}

fn parse_split(images: &[u8], labels: &[u8], images_path: &Path, labels_path: &Path) -> Result<Split> {
    let h = header(images, 4, images_path)?;
    if h[0] as u32 != IMAGES_MAGIC {
        bail!("{} is not an IDX image file (magic {:#x}, want {IMAGES_MAGIC:#x})", images_path.display(), h[0]);
    }
    let (n, height, width) = (h[1], h[2], h[3]);
    let want = 16 + n * height * width;
    if images.len() < want {
        bail!(
            "{} is truncated: its header promises {n} images of {height}x{width} ({want} bytes), the file has {}",
            images_path.display(),
            images.len()
        );
    }
    let l = header(labels, 2, labels_path)?;
    if l[0] as u32 != LABELS_MAGIC {
        bail!("{} is not an IDX label file (magic {:#x}, want {LABELS_MAGIC:#x})", labels_path.display(), l[0]);
    }
    if l[1] != n {
        bail!("{} holds {} labels for the {n} images of {}", labels_path.display(), l[1], images_path.display());
    }
    if labels.len() < 8 + n {
        bail!("{} is truncated: {n} labels promised, {} present", labels_path.display(), labels.len() - 8);
    }
    let labels: Vec<u32> = labels[8..8 + n].iter().map(|&b| b as u32).collect();
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= CLASSES) {
        bail!("{}: label {l} of image {i} is out of range (0..{CLASSES})", labels_path.display());
    }
    if n == 0 {
        bail!("{} holds no images", images_path.display());
    }
    let pixels = images[16..want].to_vec();
    Ok(Split { samples: Samples::Memory(ImageArray { height, width, channels: 1, pixels }), labels })
}
