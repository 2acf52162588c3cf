//! The viewer on a small run recorded by `kdna train` (tests/data/run: KernelDNA ResNet18,
//! 2 epochs of 4 steps, telemetry every 2 steps): snapshot tests of each view, rendered by
//! wgpu (lavapipe in CI), and the run reader on growing, truncated and empty directories.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p kdna-viewer` rewrites tests/snapshots/ after a deliberate
//! change to a view.

use std::path::{Path, PathBuf};

use egui_kittest::Harness;
use kdna_viewer::ViewerApp;
use kdna_viewer::run::Run;
use kdna_viewer::views::{self, Selection};

/// The recorded run, relative to the crate (tests run there), so paths on screen are stable.
const RUN: &str = "tests/data/run";

fn run() -> Run {
    let run = Run::open(Path::new(RUN));
    assert!(run.problem.is_none(), "{:?}", run.problem);
    run
}

fn snapshot(name: &str, size: [f32; 2], mut ui: impl FnMut(&mut egui::Ui)) {
    let mut harness = Harness::builder().with_size(egui::Vec2::from(size)).wgpu().build_ui(|u| ui(u));
    harness.run();
    harness.snapshot(name);
}

#[test]
fn the_recorded_run_reads_whole() {
    let run = run();
    let m = run.manifest.as_ref().unwrap();
    assert_eq!((m.routers.len(), m.children.len(), m.every), (6, 6, 2));
    // Steps 2 and 6 mid-epoch; 4 and 8 end their epochs.
    assert_eq!(run.records().iter().map(|r| r.step).collect::<Vec<_>>(), [2, 4, 6, 8]);
    assert_eq!((run.train.len(), run.val.len()), (8, 2));
    assert_eq!(run.steps_per_epoch(), Some(4.0));
}

#[test]
fn snapshot_curves() {
    let run = run();
    let at = run.records().get(1).map(|r| views::record_position(&run, r));
    snapshot("curves", [1000.0, 200.0], |ui| views::curves(ui, &run, at, 160.0));
}

#[test]
fn snapshot_network_map() {
    let run = run();
    let m = run.manifest.clone().unwrap();
    let mut sel = Selection { router: 4, child: 4, time: 3 };
    snapshot("network_map", [320.0, 300.0], |ui| {
        views::network_map(ui, &m.routers, &m.children, run.records().last(), &mut sel)
    });
}

#[test]
fn snapshot_router() {
    let run = run();
    let m = run.manifest.clone().unwrap();
    let sel = Selection { router: 3, child: 3, time: 3 };
    snapshot("router", [900.0, 330.0], |ui| {
        views::router_view(ui, &run, &m.routers[3], &sel, egui::Vec2::new(880.0, 120.0))
    });
}

#[test]
fn snapshot_child() {
    let run = run();
    let m = run.manifest.clone().unwrap();
    let sel = Selection { router: 0, child: 0, time: 3 };
    snapshot("child", [1100.0, 480.0], |ui| {
        views::child_view(ui, &run, &m.children[0], &sel, egui::Vec2::splat(200.0))
    });
}

#[test]
fn snapshot_window() {
    let app = ViewerApp::new(Some(Path::new(RUN)));
    let mut harness = kdna_viewer::screenshot::harness(app, kdna_viewer::screenshot::SIZE, true);
    harness.run();
    harness.snapshot("window");
}

#[test]
fn snapshot_window_on_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let app = ViewerApp::new(Some(dir.path()));
    let problem = app.run().unwrap().problem.clone().unwrap();
    assert!(problem.contains("holds no kdna run yet"), "{problem}");
    // The message names the (temporary) directory; the snapshot shows a fixed one.
    let empty = PathBuf::from("tests/data/empty");
    std::fs::create_dir_all(&empty).unwrap();
    let app = ViewerApp::new(Some(&empty));
    let mut harness = kdna_viewer::screenshot::harness(app, [900.0, 200.0], true);
    harness.run();
    harness.snapshot("window_empty");
}

/// Copies the recorded run into `dir` up to `records` telemetry records and `lines` metrics
/// lines, then `extra` bytes of the next record (a record being written).
fn partial_copy(dir: &Path, records: usize, lines: usize, extra: usize) {
    let src = Path::new(RUN);
    for f in ["config.json", "telemetry.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let metrics = std::fs::read_to_string(src.join("metrics.jsonl")).unwrap();
    let mut text: String = metrics.lines().take(lines).map(|l| format!("{l}\n")).collect();
    text.push_str("{\"kind\": \"train\", \"ep"); // a line cut short
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let bytes = std::fs::read(src.join("telemetry.bin")).unwrap();
    let mut offsets = vec![0usize];
    while *offsets.last().unwrap() < bytes.len() {
        let at = *offsets.last().unwrap();
        offsets.push(at + 12 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize);
    }
    // The first record is the run's start marker.
    let end = offsets[records + 1];
    std::fs::write(dir.join("telemetry.bin"), &bytes[..(end + extra).min(bytes.len())]).unwrap();
}

#[test]
fn a_run_being_written_is_followed_record_by_record() {
    let dir = tempfile::tempdir().unwrap();
    partial_copy(dir.path(), 1, 2, 100);
    let mut app = ViewerApp::new(Some(dir.path()));
    let run = app.run().unwrap();
    assert!(run.problem.is_none(), "{:?}", run.problem);
    assert_eq!(run.records().len(), 1, "the half-written second record waits");
    assert_eq!(run.train.len(), 2, "the half-written metrics line waits");
    assert_eq!(app.selection_mut().time, 0);
    for records in 2..=4 {
        partial_copy(dir.path(), records, 2 * records, 7);
        std::thread::sleep(kdna_viewer::app::REFRESH);
        assert!(app.refresh(), "new records arrived");
        assert_eq!(app.run().unwrap().records().len(), records);
        assert_eq!(app.selection_mut().time, records - 1, "follow live keeps the newest selected");
    }
    // A corrupt tail is reported, not fatal.
    let mut bin = std::fs::OpenOptions::new().append(true).open(dir.path().join("telemetry.bin")).unwrap();
    std::io::Write::write_all(&mut bin, b"KDT1\x04\0\0\0\0\0\0\0junkKDT1").unwrap();
    std::thread::sleep(kdna_viewer::app::REFRESH);
    app.refresh();
    let run = app.run().unwrap();
    assert_eq!(run.records().len(), 4);
    assert!(run.problem.as_deref().unwrap_or("").contains("corrupt"), "{:?}", run.problem);
}

#[test]
fn a_missing_directory_or_a_run_without_telemetry_says_so() {
    let run = Run::open(Path::new("tests/data/no-such-run"));
    assert!(run.problem.as_deref().unwrap().contains("is not a directory"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(RUN).join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(Path::new(RUN).join("metrics.jsonl"), dir.path().join("metrics.jsonl")).unwrap();
    let run = Run::open(dir.path());
    assert!(run.problem.as_deref().unwrap().contains("curves only"), "{:?}", run.problem);
    assert_eq!(run.train.len(), 8);
    std::fs::write(dir.path().join("telemetry.json"), "{ not json").unwrap();
    let run = Run::open(dir.path());
    assert!(run.problem.as_deref().unwrap().contains("not a kdna telemetry manifest"), "{:?}", run.problem);
}
