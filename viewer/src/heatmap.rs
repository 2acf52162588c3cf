//! Colour scales and a heatmap widget: a grid of values drawn as one texture, with the value
//! under the pointer shown on hover.

use egui::{Color32, ColorImage, Sense, TextureHandle, TextureOptions, Ui, Vec2};

/// Viridis at nine stops (sequential: gates, energies).
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// `t` in [0, 1] on the sequential scale.
pub fn sequential(t: f32) -> Color32 {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (VIRIDIS.len() - 1) as f32;
    let i = (x as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * f).round() as u8;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    Color32::from_rgb(mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2]))
}

/// `t` in [-1, 1] on a blue-white-red scale (signed values: attentions).
pub fn diverging(t: f32) -> Color32 {
    let t = if t.is_finite() { t.clamp(-1.0, 1.0) } else { 0.0 };
    let fade = |c: u8, w: f32| (255.0 + (c as f32 - 255.0) * w).round() as u8;
    let (r, g, b) = if t < 0.0 { (33, 102, 172) } else { (178, 24, 43) };
    let w = t.abs();
    Color32::from_rgb(fade(r, w), fade(g, w), fade(b, w))
}

/// How values map to colours.
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    /// Sequential between the two bounds.
    Linear(f32, f32),
    /// Sequential on log10, between the two (positive) bounds.
    Log(f32, f32),
}

impl Scale {
    /// A linear scale over the finite values of `values` (0..1 when they are all equal).
    pub fn fit(values: &[f32]) -> Scale {
        let (lo, hi) = bounds(values);
        if hi > lo { Scale::Linear(lo, hi) } else { Scale::Linear(lo, lo + 1.0) }
    }

    /// A log scale over the positive values of `values`.
    pub fn fit_log(values: &[f32]) -> Scale {
        let positive: Vec<f32> = values.iter().copied().filter(|v| *v > 0.0).collect();
        let (lo, hi) = bounds(&positive);
        if positive.is_empty() { Scale::Log(1e-12, 1.0) } else { Scale::Log(lo, hi.max(lo * 10.0)) }
    }

    pub fn color(self, v: f32) -> Color32 {
        match self {
            Scale::Linear(lo, hi) => sequential((v - lo) / (hi - lo)),
            Scale::Log(lo, hi) => {
                let l = |x: f32| x.max(lo).log10();
                sequential((l(v) - l(lo)) / (l(hi) - l(lo)))
            }
        }
    }

    pub fn describe(self) -> String {
        match self {
            Scale::Linear(lo, hi) => format!("{lo:.3} .. {hi:.3}"),
            Scale::Log(lo, hi) => format!("{lo:.2e} .. {hi:.2e} (log)"),
        }
    }
}

fn bounds(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<(f32, f32)>, &v| Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v)))))
        .unwrap_or((0.0, 1.0))
}

/// The texture named `id`, holding `image`. Handles live in the context's memory: a texture
/// freed in the frame that drew it would never reach the screen.
fn texture(ctx: &egui::Context, id: &str, image: ColorImage) -> TextureHandle {
    let key = egui::Id::unique(("kdna-heatmap", id));
    match ctx.data(|d| d.get_temp::<TextureHandle>(key)) {
        Some(mut handle) => {
            handle.set(image, TextureOptions::NEAREST);
            handle
        }
        None => {
            let handle = ctx.load_texture(id, image, TextureOptions::NEAREST);
            ctx.data_mut(|d| d.insert_temp(key, handle.clone()));
            handle
        }
    }
}

/// Draws `values` (`rows` x `cols`, row-major) at `size`; on hover, `label(row, col, value)`.
#[allow(clippy::too_many_arguments)]
pub fn heatmap(
    ui: &mut Ui,
    id: &str,
    values: &[f32],
    rows: usize,
    cols: usize,
    scale: Scale,
    size: Vec2,
    label: &dyn Fn(usize, usize, f32) -> String,
) {
    if rows == 0 || cols == 0 || values.len() < rows * cols {
        ui.label("(no data)");
        return;
    }
    let pixels = values[..rows * cols].iter().map(|&v| scale.color(v)).collect();
    let texture = texture(ui.ctx(), id, ColorImage::new([cols, rows], pixels));
    let response =
        ui.add(egui::Image::new(&texture).maintain_aspect_ratio(false).fit_to_exact_size(size).sense(Sense::hover()));
    if let Some(pos) = response.hover_pos() {
        let rel = (pos - response.rect.min) / response.rect.size();
        let (r, c) = ((rel.y * rows as f32) as usize, (rel.x * cols as f32) as usize);
        if r < rows && c < cols {
            response.on_hover_text(label(r, c, values[r * cols + c]));
        }
    }
}
