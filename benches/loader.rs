//! Data loading alone: images/s of one training pass (decode, augment, normalise, batch) on the
//! loader's worker threads, with no GPU work, to set beside `kdna train`'s images/s.
//!
//!     cargo bench --bench loader                                   # the embedded set
//!     cargo bench --bench loader -- --data /usr/share/datasets/fashion-mnist --workers 2

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kdna::data::Dataset;
use kdna::data::loader::{Loader, LoaderConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let data = value("--data").map(PathBuf::from);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let workers = value("--workers").and_then(|v| v.parse().ok()).unwrap_or(cores);
    let batch = value("--batch-size").and_then(|v| v.parse().ok()).unwrap_or(128);
    let ds = Dataset::open(data.as_deref(), None).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    });
    // What `kdna train` loads by default for this kind of data.
    let res = ds.kind.native_res();
    let (mean, std) = ds.kind.normalisation();
    let cfg = LoaderConfig {
        res,
        batch,
        workers,
        seed: 0,
        epoch: 0,
        shuffle: true,
        augment: ds.kind.augment(true),
        min_batch: 2,
        skip_bad: false,
        max_batches: None,
        mean,
        std,
    };
    let split = Arc::new(ds.train);
    let started = Instant::now();
    let mut images = 0;
    for batch in Loader::new(split, cfg) {
        images += batch.unwrap_or_else(|e| panic!("loading failed: {e:#}")).len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "loader: {} ({} images, {res}x{res}, batch {batch}, {workers} workers): {:.0} images/s",
        ds.kind,
        images,
        images as f64 / seconds
    );
}
