//! Datasets in their real on-disk formats, built here from the embedded Fashion-MNIST images:
//! what each loader reads, and the clear errors bad files get.

use std::path::Path;
use std::sync::Arc;

mod common;

use kdna::data::loader::{LoaderConfig, batch_count};
use kdna::data::{Augment, Dataset, DatasetKind, ImageArray, Loader, Samples};

fn embedded() -> Dataset {
    Dataset::open(None, None).unwrap()
}

fn array(ds: &Dataset) -> &ImageArray {
    match &ds.train.samples {
        Samples::Memory(a) => a,
        Samples::Files(_) => panic!("embedded set is in memory"),
    }
}

/// CIFAR-10 binaries (5 train batches + test) of gray images made RGB with a tint per channel.
fn write_cifar10(dir: &Path, per_file: usize) -> Vec<u8> {
    let ds = embedded();
    let a = array(&ds);
    let mut record0 = Vec::new();
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            bytes.push(ds.train.labels[i] as u8);
            for c in 0..3u8 {
                for y in 0..32 {
                    for x in 0..32 {
                        let v = if (2..30).contains(&y) && (2..30).contains(&x) {
                            a.image(i)[(y - 2) * 28 + x - 2]
                        } else {
                            0
                        };
                        bytes.push(v / (c + 1));
                    }
                }
            }
        }
        if record0.is_empty() {
            record0 = bytes[..3073].to_vec();
        }
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
    record0
}

fn write_folder(dir: &Path, per_class: usize, classes: usize) {
    let ds = embedded();
    let a = array(&ds);
    for split in ["train", "val"] {
        for c in 0..classes {
            let class_dir = dir.join(split).join(format!("class_{c}"));
            std::fs::create_dir_all(&class_dir).unwrap();
            let mut written = 0;
            for (i, &l) in ds.train.labels.iter().enumerate() {
                if l as usize != c || written == per_class {
                    continue;
                }
                let img = image::GrayImage::from_raw(28, 28, a.image(i).to_vec()).unwrap();
                let rgb = image::DynamicImage::ImageLuma8(img).to_rgb8();
                let ext = if written % 2 == 0 { "png" } else { "jpg" };
                rgb.save(class_dir.join(format!("{i}.{ext}"))).unwrap();
                written += 1;
            }
        }
    }
}

fn config(batch: usize, augment: Augment) -> LoaderConfig {
    LoaderConfig {
        res: 28,
        batch,
        workers: 3,
        seed: 7,
        epoch: 0,
        shuffle: true,
        augment,
        min_batch: 2,
        skip_bad: false,
        max_batches: None,
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

fn err(r: anyhow::Result<Dataset>) -> String {
    format!("{:#}", r.expect_err("an error"))
}

#[test]
fn embedded_set_is_class_balanced_fashion_mnist() {
    let ds = embedded();
    assert_eq!((ds.kind, ds.classes, ds.train.len(), ds.val.len()), (DatasetKind::Embedded, 10, 6000, 1000));
    for c in 0..10 {
        assert_eq!(ds.train.labels.iter().filter(|&&l| l == c).count(), 600);
        assert_eq!(ds.val.labels.iter().filter(|&&l| l == c).count(), 100);
    }
    assert_eq!(ds.class_names[9], "Ankle boot");
}

#[test]
fn idx_reads_gzipped_and_raw_alike() {
    let (gz, raw) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_idx_dataset(gz.path(), 30, true);
    common::write_idx_dataset(raw.path(), 30, false);
    let a = Dataset::open(Some(gz.path()), Some(DatasetKind::FashionMnist)).unwrap();
    let b = Dataset::open(Some(raw.path()), None).unwrap();
    assert_eq!(b.kind, DatasetKind::Mnist, "a folder not named fashion reads as MNIST");
    assert_eq!(a.train.labels, embedded().train.labels[..30]);
    assert_eq!(a.train.labels, b.train.labels);
    match (&a.train.samples, &b.train.samples) {
        (Samples::Memory(x), Samples::Memory(y)) => assert_eq!(x.pixels, y.pixels),
        _ => panic!("in memory"),
    }
}

#[test]
fn cifar10_records_become_interleaved_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let record0 = write_cifar10(dir.path(), 4);
    let ds = Dataset::open(Some(dir.path()), None).unwrap();
    assert_eq!((ds.kind, ds.classes, ds.train.len(), ds.val.len()), (DatasetKind::Cifar10, 10, 20, 4));
    let Samples::Memory(a) = &ds.train.samples else { panic!() };
    assert_eq!((a.height, a.width, a.channels), (32, 32, 3));
    // Pixel (y=10, x=11) channel 2 comes from the blue plane.
    assert_eq!(a.image(0)[(10 * 32 + 11) * 3 + 2], record0[1 + 2 * 1024 + 10 * 32 + 11]);
    assert_eq!(ds.train.labels[0], record0[0] as u32);
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for i in 0..3u8 {
        bytes.extend([i, 90 + i]);
        bytes.extend(std::iter::repeat_n(i * 10, 3072));
    }
    std::fs::write(dir.path().join("train.bin"), &bytes).unwrap();
    std::fs::write(dir.path().join("test.bin"), &bytes).unwrap();
    let ds = Dataset::open(Some(dir.path()), None).unwrap();
    assert_eq!((ds.kind, ds.classes), (DatasetKind::Cifar100, 100));
    assert_eq!(ds.train.labels, [90, 91, 92]);
}

#[test]
fn image_folder_reads_png_and_jpeg_by_sorted_class() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), 3, 3);
    let ds = Dataset::open(Some(dir.path()), None).unwrap();
    assert_eq!((ds.kind, ds.classes, ds.train.len(), ds.val.len()), (DatasetKind::ImageFolder, 3, 9, 9));
    assert_eq!(ds.class_names, ["class_0", "class_1", "class_2"]);
    let cfg = LoaderConfig { res: 24, ..config(4, Augment::FolderTrain) };
    let batches: Vec<_> = Loader::new(Arc::new(ds.train.clone()), cfg).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [4, 4], "tail of 1 dropped");
    assert!(batches.iter().all(|b| b.images.len() == b.len() * 3 * 24 * 24));
}

#[test]
fn loader_batches_do_not_depend_on_worker_count() {
    let ds = embedded();
    let split = Arc::new(ds.train.clone());
    let run = |workers: usize| -> Vec<(Vec<f32>, Vec<u32>)> {
        let cfg = LoaderConfig { workers, max_batches: Some(5), ..config(32, Augment::SmallTrain) };
        Loader::new(split.clone(), cfg).map(|b| b.unwrap()).map(|b| (b.images, b.labels)).collect()
    };
    let one = run(1);
    assert_eq!(one.len(), 5);
    assert_eq!(one, run(4));
    let next_epoch: Vec<_> =
        Loader::new(split.clone(), LoaderConfig { epoch: 1, max_batches: Some(1), ..config(32, Augment::SmallTrain) })
            .map(|b| b.unwrap().labels)
            .collect();
    assert_ne!(next_epoch[0], one[0].1, "each epoch reshuffles");
}

#[test]
fn a_final_batch_of_one_is_dropped_in_training() {
    let cfg = config(4, Augment::SmallTrain);
    assert_eq!(batch_count(9, &cfg), 2);
    assert_eq!(batch_count(10, &cfg), 3);
    assert_eq!(batch_count(10, &LoaderConfig { max_batches: Some(1), ..cfg }), 1);
}

#[test]
fn missing_and_empty_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nope");
    assert!(err(Dataset::open(Some(&gone), None)).contains("does not exist"));
    assert!(err(Dataset::open(Some(dir.path()), None)).contains("is empty"));
    std::fs::write(dir.path().join("readme.txt"), "x").unwrap();
    assert!(err(Dataset::open(Some(dir.path()), None)).contains("cannot tell the dataset format"));
}

#[test]
fn a_class_folder_without_images_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), 1, 2);
    let empty = dir.path().join("train").join("class_9");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no images").unwrap();
    let e = err(Dataset::open(Some(dir.path()), None));
    assert!(e.contains("class_9") && e.contains("has no images"), "{e}");
}

#[test]
fn a_corrupt_image_fails_naming_it_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), 2, 2);
    let bad = dir.path().join("train").join("class_1").join("zzz_truncated.png");
    let good = std::fs::read_dir(dir.path().join("train").join("class_1")).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(good.with_extension("png")).unwrap_or_else(|_| std::fs::read(&good).unwrap());
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let ds = Dataset::open(Some(dir.path()), None).unwrap();
    let cfg = LoaderConfig { shuffle: false, ..config(5, Augment::FolderTrain) };
    let e = Loader::new(Arc::new(ds.train.clone()), cfg).find_map(|b| b.err()).expect("fails");
    assert!(format!("{e:#}").contains("zzz_truncated.png"), "{e:#}");
    let skipping = LoaderConfig { skip_bad: true, ..cfg };
    let batches: Vec<_> = Loader::new(Arc::new(ds.train.clone()), skipping).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.skipped.len()).sum::<usize>(), 1);
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 4);
}

#[test]
fn truncated_files_and_bad_labels_are_named() {
    let dir = tempfile::tempdir().unwrap();
    common::write_idx_dataset(dir.path(), 10, false);
    let images = dir.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 100]).unwrap();
    let e = err(Dataset::open(Some(dir.path()), None));
    assert!(e.contains("train-images-idx3-ubyte is truncated"), "{e}");

    common::write_idx_dataset(dir.path(), 10, false);
    let labels = dir.path().join("t10k-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).unwrap();
    bytes[8 + 3] = 12;
    std::fs::write(&labels, &bytes).unwrap();
    let e = err(Dataset::open(Some(dir.path()), None));
    assert!(e.contains("label 12 of image 3 is out of range"), "{e}");

    let gz = tempfile::tempdir().unwrap();
    common::write_idx_dataset(gz.path(), 10, true);
    let f = gz.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(Dataset::open(Some(gz.path()), None));
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"), "{e}");

    let cifar = tempfile::tempdir().unwrap();
    write_cifar10(cifar.path(), 2);
    let f = cifar.path().join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 7]).unwrap();
    let e = err(Dataset::open(Some(cifar.path()), None));
    assert!(e.contains("data_batch_3.bin is truncated"), "{e}");
    write_cifar10(cifar.path(), 2);
    let f = cifar.path().join("test_batch.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3073] = 10;
    std::fs::write(&f, &bytes).unwrap();
    let e = err(Dataset::open(Some(cifar.path()), None));
    assert!(e.contains("label 10 of record 1 is out of range"), "{e}");
}
