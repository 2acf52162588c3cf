//! The `kdna` binary as a user runs it.

use std::process::Command;

fn kdna(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kdna"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("kdna runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn devices_lists_an_adapter_and_marks_the_chosen_one() {
    let (ok, stdout, stderr) = kdna(&["devices"], &[]);
    assert!(ok, "kdna devices failed: {stderr}");
    let chosen: Vec<&str> = stdout.lines().filter(|l| l.starts_with("* ") && l.contains('(')).collect();
    assert_eq!(chosen.len(), 1, "one chosen adapter in:\n{stdout}");
    for field in ["driver:", "timestamps", "subgroups", "storage binding", "workgroup storage"] {
        assert!(stdout.contains(field), "{field} missing from:\n{stdout}");
    }
}

#[test]
fn no_matching_adapter_is_a_clear_error() {
    let (ok, _, stderr) = kdna(&["devices", "--adapter", "no-such-gpu-anywhere"], &[]);
    assert!(!ok);
    assert!(stderr.contains("no adapter name contains \"no-such-gpu-anywhere\""), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn no_adapter_at_all_says_how_to_get_one() {
    // No backend of this name exists on this platform, so no adapter is found.
    let backend = if cfg!(target_os = "macos") { "dx12" } else { "metal" };
    let (ok, _, stderr) = kdna(&["devices"], &[("WGPU_BACKEND", backend)]);
    assert!(!ok);
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_params_prints_one_json_line_last() {
    let (ok, stdout, stderr) = kdna(&["bench", "--params", "--arch", "resnet18", "--customize", "--json"], &[]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["arch"], "resnet18");
    assert_eq!(v["baseline"], false);
    assert_eq!(v["res"], 224);
    assert_eq!(v["params"], 9_240_798);
    assert_eq!(v["macs"], 2_276_986_880u64);
}

/// A weights file and a batch file as a torch user would write them.
fn parity_inputs(dir: &std::path::Path, labels: [i64; 2]) -> (std::path::PathBuf, std::path::PathBuf) {
    use kdna::models::{Arch, ModelSpec, build};
    let gpu = std::sync::Arc::new(kdna::gpu::Gpu::new(None).unwrap());
    let net =
        build(ModelSpec { arch: Arch::MobileNetV2Half, kdna: true, classes: 10, drop_path: 0.0 }, 2, 32, 0.0).unwrap();
    let weights = kdna::graph::Weights::new(&gpu, &net.graph);
    weights.initialise(&gpu, &net.graph, 5);
    let w = dir.join("w.safetensors");
    weights.export(&gpu).unwrap().save(&w).unwrap();
    let images: Vec<u8> = (0..2 * 3 * 32 * 32).flat_map(|i| ((i % 17) as f32 / 17.0 - 0.5).to_le_bytes()).collect();
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    use safetensors::tensor::TensorView;
    let tensors = vec![
        ("images", TensorView::new(safetensors::Dtype::F32, vec![2, 3, 32, 32], &images).unwrap()),
        ("labels", TensorView::new(safetensors::Dtype::I64, vec![2], &label_bytes).unwrap()),
    ];
    let b = dir.join("b.safetensors");
    std::fs::write(&b, safetensors::serialize(tensors, None).unwrap()).unwrap();
    (w, b)
}

#[test]
fn parity_writes_logits_loss_and_every_gradient_under_torch_names() {
    let dir = std::env::temp_dir().join(format!("kdna-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (w, b) = parity_inputs(&dir, [3, 9]);
    let out = dir.join("out.safetensors");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = ["parity", "--arch", "mobilenet_v2_1d2", "--weights", &s(&w), "--batch", &s(&b), "--out", &s(&out)];
    let (ok, _, stderr) = kdna(&args, &[]);
    assert!(ok, "{stderr}");
    let got = kdna::io::load_safetensors(&out).unwrap();
    assert_eq!(got["logits.eval"].shape, [2, 10]);
    assert_eq!(got["logits"].shape, [2, 10]);
    assert_eq!(got["loss"].shape, [1]);
    assert!(got["loss"].data[0].is_finite() && got["loss"].data[0] > 0.0);
    let weights = kdna::io::StateDict::load(&w).unwrap();
    for (name, t) in &weights.floats {
        if !name.contains("running_") {
            assert_eq!(got[&format!("grad.{name}")].shape, t.shape, "grad.{name}");
        }
    }
    assert!(got.keys().filter(|k| k.starts_with("grad.")).count() > 100);

    let (_, bad) = parity_inputs(&dir, [3, 10]);
    let args = ["parity", "--arch", "mobilenet_v2_1d2", "--weights", &s(&w), "--batch", &s(&bad), "--out", &s(&out)];
    let (ok, _, stderr) = kdna(&args, &[]);
    assert!(!ok && stderr.contains("label 10 is not a class index below 10"), "{stderr}");
    let (ok, _, stderr) =
        kdna(&["parity", "--arch", "resnet18", "--weights", &s(&w), "--batch", &s(&b), "--out", &s(&out)], &[]);
    assert!(!ok && stderr.contains("another --arch"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn viewer_without_kdna_viewer_says_how_to_build_it() {
    // A copy of kdna alone in a directory, with nothing on PATH: no kdna-viewer to find.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(format!("kdna{}", std::env::consts::EXE_SUFFIX));
    std::fs::copy(env!("CARGO_BIN_EXE_kdna"), &exe).unwrap();
    let out = Command::new(&exe).args(["viewer", "runs/x"]).env("PATH", dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cargo build --release -p kdna-viewer"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
