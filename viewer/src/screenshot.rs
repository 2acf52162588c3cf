//! Rendering the viewer to an image without a window (documentation, CI), through
//! egui_kittest's wgpu renderer.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use egui_kittest::Harness;

use crate::ViewerApp;

/// The window size screenshots are taken at, in points.
pub const SIZE: [f32; 2] = [1600.0, 1150.0];

/// The harness screenshots and snapshot tests render through (tests keep kittest's
/// accessibility check; a screenshot should not fail on it).
pub fn harness(app: ViewerApp, size: [f32; 2], accessibility_check: bool) -> Harness<'static, ViewerApp> {
    Harness::builder()
        .with_size(egui::Vec2::from(size))
        .with_accessibility_check(accessibility_check)
        .wgpu()
        .build_ui_state(|ui, app: &mut ViewerApp| app.ui(ui), app)
}

/// Renders `app` at `size` after letting it lay itself out.
pub fn render(app: ViewerApp, size: [f32; 2]) -> Result<image::RgbaImage> {
    let mut harness = harness(app, size, false);
    // A few frames: panels size themselves from what the previous frame drew.
    for _ in 0..4 {
        harness.step();
    }
    harness.render().map_err(|e| anyhow!("rendering the viewer: {e}"))
}

/// Writes a PNG of the viewer on `run_dir` to `out`.
pub fn write(run_dir: &Path, out: &Path) -> Result<()> {
    let app = ViewerApp::new(Some(run_dir));
    if let Some(problem) = app.run().and_then(|r| r.problem.clone()) {
        eprintln!("kdna-viewer: {problem}");
    }
    let image = render(app, SIZE)?;
    image.save(out).with_context(|| format!("writing {}", out.display()))
}
