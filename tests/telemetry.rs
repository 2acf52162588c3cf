//! Telemetry without a GPU: the record format and its reader (truncated, corrupt and restarted
//! files), child statistics against the reference modulation, and what discovery finds in
//! every KernelDNA network.

use std::io::Write;

use kdna::models::{Arch, ModelSpec, build};
use kdna::ops::modulate::Modulate;
use kdna::telemetry::probes::{ChildInfo, child_stats, discover, gate_spread, stage_of};
use kdna::telemetry::{Reader, Record, RecordKind};

fn record(kind: RecordKind, step: u64, value: f32) -> Record {
    let mut r = Record::new(kind, step, 1);
    r.insert("gate.probe/layer3.se.0.se".into(), vec![2, 3], vec![value, 0.5, 0.25, 0.125, 1.0, 0.0]);
    r.insert("cosine/layer3.conv2/child0".into(), vec![1], vec![value]);
    r
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn records_round_trip_through_their_framing() {
    let r = record(RecordKind::Step, 40, 0.75);
    let bytes = r.encode().unwrap();
    assert_eq!(&bytes[..4], b"KDT1");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize, bytes.len() - 12);
    assert_eq!(Record::decode(&bytes[12..]).unwrap(), r);
}

#[test]
fn the_reader_waits_for_a_partial_record_and_then_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.bin");
    let mut reader = Reader::new(&path);
    assert_eq!(reader.poll().unwrap(), 0, "a missing file reads as empty");
    let first = record(RecordKind::Step, 10, 0.1).encode().unwrap();
    let second = record(RecordKind::Epoch, 20, 0.2).encode().unwrap();
    append(&path, &first);
    // Every way of cutting the second record leaves the first readable and nothing corrupt.
    for cut in [1, 4, 11, 12, 13, second.len() / 2, second.len() - 1] {
        std::fs::write(&path, [&first[..], &second[..cut]].concat()).unwrap();
        let mut reader = Reader::new(&path);
        assert_eq!(reader.poll().unwrap(), 1, "cut at {cut}");
        assert_eq!(reader.corrupt, 0, "cut at {cut}");
        // The rest arrives.
        std::fs::write(&path, [&first[..], &second[..]].concat()).unwrap();
        assert_eq!(reader.poll().unwrap(), 1, "cut at {cut}");
        assert_eq!(reader.records.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(reader.records[1], record(RecordKind::Epoch, 20, 0.2));
    }
}

#[test]
fn the_reader_skips_corrupt_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.bin");
    let good = |step| record(RecordKind::Step, step, step as f32).encode().unwrap();
    let mut flipped = good(20);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40; // payload no longer matches its checksum
    let mut bad_magic = good(30);
    bad_magic[0] = b'X';
    let mut bad_payload = good(35);
    // A valid checksum over bytes that are not a safetensors file.
    let junk = vec![0xffu8; bad_payload.len() - 12];
    bad_payload[8..12].copy_from_slice(&crc32fast::hash(&junk).to_le_bytes());
    bad_payload[12..].copy_from_slice(&junk);
    let bytes = [good(10), flipped, b"garbage".to_vec(), bad_magic, bad_payload, good(40)].concat();
    std::fs::write(&path, bytes).unwrap();
    let mut reader = Reader::new(&path);
    reader.poll().unwrap();
    assert_eq!(reader.records.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 40]);
    // The flipped record (with the garbage and the bad magic after it, up to the next
    // magic) is one corrupt stretch; the undecodable payload is another.
    assert_eq!(reader.corrupt, 2);
    assert_eq!(reader.records[1].get("cosine/layer3.conv2/child0").unwrap().data, [40.0]);
}

#[test]
fn a_restart_voids_what_the_earlier_attempt_wrote_past_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.bin");
    for (kind, step) in
        [(RecordKind::Start, 0), (RecordKind::Step, 10), (RecordKind::Epoch, 12), (RecordKind::Step, 20)]
    {
        append(&path, &record(kind, step, 1.0).encode().unwrap());
    }
    let mut reader = Reader::new(&path);
    reader.poll().unwrap();
    assert_eq!(reader.records.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 12, 20]);
    // Resumed from the checkpoint of step 12: step 20 of the first attempt is void.
    append(&path, &record(RecordKind::Start, 12, 0.0).encode().unwrap());
    append(&path, &record(RecordKind::Step, 20, 2.0).encode().unwrap());
    reader.poll().unwrap();
    assert_eq!(reader.records.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 12, 20]);
    assert_eq!(reader.records[2].get("cosine/layer3.conv2/child0").unwrap().data, [2.0]);
    // A file replaced by a shorter one is read again from its start.
    std::fs::write(&path, record(RecordKind::Step, 5, 0.0).encode().unwrap()).unwrap();
    reader.poll().unwrap();
    assert_eq!(reader.records.iter().map(|r| r.step).collect::<Vec<_>>(), [5]);
}

/// A pseudo-random value in [-1, 1) for index `i`.
fn value(i: usize) -> f32 {
    ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

#[test]
fn child_statistics_match_the_reference_child_kernel() {
    // 70 output and 130 input channels: energy cells of 2 x 3 channels, the last ones partial.
    let (c_out, c_in, kh, kw) = (70, 130, 3, 2);
    let taps = kh * kw;
    let info = ChildInfo {
        name: "s.conv/child1".into(),
        parent: "s.conv.weight".into(),
        stage: "s".into(),
        row: 1,
        c_out,
        c_in,
        kh,
        kw,
        spatial: true,
        cell: [2, 3],
    };
    let parent: Vec<f32> = (0..c_out * c_in * taps).map(value).collect();
    let spatial: Vec<f32> = (0..2 * taps).map(|i| 0.5 * value(i + 7)).collect();
    let filter: Vec<f32> = (0..2 * c_out).map(|i| 0.5 * value(i + 99)).collect();
    let m = Modulate {
        first_child: 1,
        children: 1,
        rows: 2,
        c_out,
        fan: c_in * taps,
        taps,
        has_spatial: true,
        live_taps: None,
        packed_by_consumer: 0,
        dchild_strides: None,
        own_parent_gradient: false,
    };
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let child = &kdna::reference::modulate::forward(&m, &f64s(&parent), Some(&f64s(&spatial)), &f64s(&filter))[0];
    let stats = child_stats(&info, &parent, Some(&spatial[taps..]), &filter[c_out..]);

    let [rows, cols] = info.cells();
    assert_eq!([rows, cols], [35, 44]);
    let mut energy = vec![0.0f64; rows * cols];
    let mut delta = vec![0.0f64; rows * cols];
    let mut tap_energy = vec![0.0f64; taps];
    for (e, (&c, &p)) in child.iter().zip(&parent).enumerate() {
        let (o, i, t) = (e / (c_in * taps), e / taps % c_in, e % taps);
        energy[o / 2 * cols + i / 3] += c * c;
        delta[o / 2 * cols + i / 3] += (c - p as f64).powi(2);
        tap_energy[t] += c * c;
    }
    let close = |got: &[f32], want: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
        }
    };
    close(&stats.energy, &energy);
    close(&stats.delta, &delta);
    close(&stats.taps, &tap_energy);
    let dot: f64 = child.iter().zip(&parent).map(|(c, &p)| c * p as f64).sum();
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&mut child.iter().copied()) * norm(&mut parent.iter().map(|&p| p as f64)));
    assert!((stats.cosine as f64 - cosine).abs() < 1e-6, "{} vs {cosine}", stats.cosine);
    assert!(cosine < 0.999, "the attentions move the child away from its parent");
}

#[test]
fn gate_spread_is_the_batch_mean_and_population_deviation() {
    let (mean, std) = gate_spread(&[0.0, 1.0, 1.0, 1.0, 0.5, 1.0], 2);
    assert_eq!(mean, [0.5, 1.0]);
    assert!((std[0] - (1.0f32 / 6.0).sqrt()).abs() < 1e-6 && std[1] == 0.0, "{std:?}");
}

#[test]
fn discovery_finds_every_router_and_child_and_which_child_each_router_gates() {
    assert_eq!(stage_of("layer3.conv2.weight"), "layer3");
    assert_eq!(stage_of("features.6.last_block.layers.pw1.weight"), "features.6");
    for arch in Arch::ALL {
        let net = build(ModelSpec { arch, kdna: true, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap();
        let (routers, children) = discover(&net.graph);
        assert!(!children.is_empty(), "{arch}");
        let names: std::collections::HashSet<&str> = children.iter().map(|c| c.info.name.as_str()).collect();
        assert_eq!(names.len(), children.len(), "{arch}: child names are unique");
        // Every routed conv of these networks is a child: one router per child.
        let gated: std::collections::HashSet<&str> = routers.iter().filter_map(|r| r.info.gates.as_deref()).collect();
        assert_eq!(gated, names, "{arch}: every child is gated by a router");
        assert_eq!(routers.len(), children.len(), "{arch}");
        for r in &routers {
            let child = children.iter().find(|c| Some(c.info.name.as_str()) == r.info.gates.as_deref()).unwrap();
            assert_eq!(child.info.c_in, r.info.channels, "{arch}: {}", r.info.name);
            assert_eq!(child.info.stage, r.info.stage, "{arch}: {}", r.info.name);
        }
        let baseline = build(ModelSpec { arch, kdna: false, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap();
        let (routers, children) = discover(&baseline.graph);
        assert!(routers.is_empty() && children.is_empty(), "{arch} baseline");
    }
    let net = build(ModelSpec { arch: Arch::ResNet18, kdna: true, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap();
    let (routers, children) = discover(&net.graph);
    assert_eq!(
        children.iter().map(|c| c.info.name.as_str()).collect::<Vec<_>>(),
        [
            "layer3.conv2/child0",
            "layer3.conv2/child1",
            "layer3.conv3/child2",
            "layer4.conv2/child0",
            "layer4.conv2/child1",
            "layer4.conv3/child2"
        ]
    );
    assert_eq!(routers[0].info.name, "layer3.se.0.se");
    assert_eq!(routers[0].info.gates.as_deref(), Some("layer3.conv2/child0"));
    assert_eq!(children[3].info.cell, [8, 8]);
    assert!(children.iter().all(|c| c.info.spatial && (c.info.kh, c.info.kw) == (3, 3)));
}
