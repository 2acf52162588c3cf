//! Every WGSL family parses and validates with naga: no GPU needed.

use kdna::gpu::shaders;

#[test]
fn every_shader_family_validates() {
    let mut failures = Vec::new();
    for (name, _) in shaders::FAMILIES {
        match shaders::validate(name) {
            Ok((module, _)) => assert!(!module.entry_points.is_empty(), "{name} has no entry point"),
            Err(report) => failures.push(format!("{name}.wgsl:\n{report}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
