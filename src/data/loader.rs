//! Batches built on background threads: decoding and augmentation run ahead of the trainer
//! while the GPU works, and arrive in order. Every random choice is seeded by (seed, epoch,
//! sample), so a batch's contents do not depend on the number of workers or on timing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::augment::{self, Augment, Image};
use super::{Samples, Split};

/// One batch: images [n][3][res][res] and their labels.
#[derive(Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Files that could not be decoded and were left out (`skip_bad`).
    pub skipped: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How one pass over a split is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoaderConfig {
    pub res: usize,
    pub batch: usize,
    pub workers: usize,
    pub seed: u64,
    pub epoch: u64,
    /// Reshuffle the split (training) or keep its order (validation).
    pub shuffle: bool,
    pub augment: Augment,
    /// A final partial batch smaller than this is dropped (train-mode BatchNorm needs 2).
    pub min_batch: usize,
    /// Leave out files that fail to decode (and count them) instead of failing.
    pub skip_bad: bool,
    /// Stop after this many batches (short epochs for smoke runs).
    pub max_batches: Option<usize>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Number of batches one pass yields.
pub fn batch_count(len: usize, cfg: &LoaderConfig) -> usize {
    let full = len / cfg.batch;
    let tail = len % cfg.batch;
    let n = full + usize::from(tail > 0 && tail >= cfg.min_batch);
    cfg.max_batches.map_or(n, |m| n.min(m))
}

type Delivery = (usize, Result<Batch>);

/// An iterator over the batches of one pass, built by worker threads.
pub struct Loader {
    rx: Option<Receiver<Delivery>>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    pub fn new(split: Arc<Split>, cfg: LoaderConfig) -> Loader {
        let mut order: Vec<usize> = (0..split.len()).collect();
        if cfg.shuffle {
            order.shuffle(&mut StdRng::seed_from_u64(mix(&[cfg.seed, cfg.epoch, 0x5348_5546])));
        }
        let total = batch_count(split.len(), &cfg);
        let order = Arc::new(order);
        let counter = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = cfg.workers.max(1);
        let (tx, rx) = sync_channel::<Delivery>(2 * workers);
        let handles = (0..workers)
            .map(|_| {
                let (split, order, counter, stop) = (split.clone(), order.clone(), counter.clone(), stop.clone());
                let tx = tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        if i >= total || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let end = ((i + 1) * cfg.batch).min(order.len());
                        let batch = build(&split, &order[i * cfg.batch..end], &cfg);
                        if tx.send((i, batch)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Loader { rx: Some(rx), pending: BTreeMap::new(), next: 0, total, stop, workers: handles }
    }

    /// Batches this pass yields.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        let rx = self.rx.as_ref()?;
        while !self.pending.contains_key(&self.next) {
            match rx.recv() {
                Ok((i, batch)) => drop(self.pending.insert(i, batch)),
                Err(_) => return Some(Err(anyhow!("a data loader thread stopped unexpectedly"))),
            }
        }
        let batch = self.pending.remove(&self.next);
        self.next += 1;
        batch
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel wakes workers blocked on a full one.
        self.rx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn build(split: &Split, indices: &[usize], cfg: &LoaderConfig) -> Result<Batch> {
    let size = 3 * cfg.res * cfg.res;
    let mut images = vec![0.0f32; indices.len() * size];
    let mut labels = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for &i in indices {
        let mut rng = StdRng::seed_from_u64(mix(&[cfg.seed, cfg.epoch, i as u64]));
        let out = &mut images[labels.len() * size..(labels.len() + 1) * size];
        match &split.samples {
            Samples::Memory(array) => {
                let img = Image {
                    height: array.height,
                    width: array.width,
                    channels: array.channels,
                    pixels: array.image(i),
                };
                augment::apply(cfg.augment, &img, cfg.res, cfg.mean, cfg.std, &mut rng, out);
            }
            Samples::Files(files) => match decode(&files[i]) {
                Ok(rgb) => {
                    let (width, height) = rgb.dimensions();
                    let img =
                        Image { height: height as usize, width: width as usize, channels: 3, pixels: rgb.as_raw() };
                    augment::apply(cfg.augment, &img, cfg.res, cfg.mean, cfg.std, &mut rng, out);
                }
                Err(e) if cfg.skip_bad => {
                    skipped.push(format!("{e:#}"));
                    continue;
                }
                Err(e) => return Err(e.context("--skip-bad leaves such files out")),
            },
        }
        labels.push(split.labels[i]);
    }
    images.truncate(labels.len() * size);
    Ok(Batch { images, labels, skipped })
}

fn decode(path: &std::path::Path) -> Result<image::RgbImage> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow!("cannot read image {}: {e}", path.display()))?
        .decode()
        .map_err(|e| anyhow!("corrupt or truncated image {}: {e}", path.display()))?;
    Ok(img.to_rgb8())
}

/// A 64-bit seed from several values (splitmix64 over each in turn).
pub fn mix(values: &[u64]) -> u64 {
    let mut h: u64 = 0x6b64_6e61;
    for &v in values {
        h = h.wrapping_add(v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}
