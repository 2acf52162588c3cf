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
