//! The viewer's panels, each a function of the run and what is selected: training curves, the
//! network map, a router's gates, and a child kernel.

use egui::{Color32, RichText, Sense, Ui, Vec2};
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, Points, VLine};
use kdna::telemetry::{ChildInfo, Record, RouterInfo};

use crate::heatmap::{Scale, diverging, heatmap};
use crate::run::Run;

/// What the views show: indices into the manifest's routers and children, and a record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Selection {
    pub router: usize,
    pub child: usize,
    /// Index into the run's records.
    pub time: usize,
}

/// Where record `r` sits, in epochs.
pub fn record_position(run: &Run, r: &Record) -> f64 {
    run.steps_per_epoch().map_or(r.epoch as f64 + 1.0, |s| r.step as f64 / s)
}

fn tensor<'a>(r: &'a Record, key: &str) -> Option<&'a [f32]> {
    r.get(key).map(|t| t.data.as_slice())
}

/// Loss, accuracy and learning rate over the run, with a line at the selected record.
pub fn curves(ui: &mut Ui, run: &Run, at: Option<f64>, height: f32) {
    let points = |f: &dyn Fn(&crate::run::Metric) -> Option<f64>, train: bool| -> Vec<[f64; 2]> {
        if train {
            run.train.iter().filter_map(|m| f(m).map(|y| [run.position(m), y])).collect()
        } else {
            run.val.iter().filter_map(|m| f(m).map(|y| [m.epoch as f64 + 1.0, y])).collect()
        }
    };
    let width = (ui.available_width() - 16.0) / 3.0;
    ui.horizontal(|ui| {
        let plot = |id: &str, label: &str| {
            Plot::new(id.to_string())
                .height(height)
                .width(width)
                .legend(Legend::default())
                .x_axis_label("epoch")
                .y_axis_label(label.to_string())
                .allow_scroll(false)
        };
        let marker = |p: &mut egui_plot::PlotUi| {
            if let Some(x) = at {
                p.vline(VLine::new("", x).color(Color32::GRAY));
            }
        };
        plot("loss", "loss").show(ui, |p| {
            p.line(Line::new("train", PlotPoints::from(points(&|m| Some(m.loss), true))));
            validation(p, points(&|m| Some(m.loss), false));
            marker(p);
        });
        plot("acc", "top-1 %").show(ui, |p| {
            p.line(Line::new("train", PlotPoints::from(points(&|m| Some(m.acc1), true))));
            validation(p, points(&|m| Some(m.acc1), false));
            marker(p);
        });
        plot("lr", "learning rate").show(ui, |p| {
            p.line(Line::new("lr", PlotPoints::from(points(&|m| m.lr, true))));
            marker(p);
        });
    });
}

/// Validation results, one per epoch: a line with a marker at each (the first epoch's alone
/// would draw nothing as a line).
fn validation(p: &mut egui_plot::PlotUi, points: Vec<[f64; 2]>) {
    let color = Color32::from_rgb(86, 156, 214);
    p.line(Line::new("val", PlotPoints::from(points.clone())).color(color));
    p.points(Points::new("val", PlotPoints::from(points)).radius(3.0).color(color));
}

/// The network's stages, each parent with its children and the router gating each child;
/// clicking a child or router selects it. Children show their cosine similarity to their
/// parent at the selected record.
pub fn network_map(
    ui: &mut Ui,
    routers: &[RouterInfo],
    children: &[ChildInfo],
    record: Option<&Record>,
    sel: &mut Selection,
) {
    let mut stages: Vec<&str> = Vec::new();
    for c in children {
        if !stages.contains(&c.stage.as_str()) {
            stages.push(&c.stage);
        }
    }
    for stage in stages {
        egui::CollapsingHeader::new(RichText::new(stage).strong()).default_open(true).show(ui, |ui| {
            let mut parents: Vec<&str> = Vec::new();
            for c in children.iter().filter(|c| c.stage == stage) {
                if !parents.contains(&c.parent.as_str()) {
                    parents.push(&c.parent);
                }
            }
            for parent in parents {
                let shape = children
                    .iter()
                    .find(|c| c.parent == parent)
                    .map(|c| format!("[{}, {}, {}, {}]", c.c_out, c.c_in, c.kh, c.kw));
                ui.label(format!("parent {} {}", parent.trim_end_matches(".weight"), shape.unwrap_or_default()));
                for (i, c) in children.iter().enumerate().filter(|(_, c)| c.parent == parent) {
                    ui.horizontal(|ui| {
                        ui.add_space(12.0);
                        let cos = record.and_then(|r| tensor(r, &format!("cosine/{}", c.name))).map(|v| v[0]);
                        let text = match cos {
                            Some(cos) => format!("child {}  cos {:.4}", c.row, cos),
                            None => format!("child {}", c.row),
                        };
                        if ui.selectable_label(sel.child == i, text).clicked() {
                            sel.child = i;
                            if let Some(r) = routers.iter().position(|r| r.gates.as_deref() == Some(&c.name)) {
                                sel.router = r;
                            }
                        }
                        if let Some(r) = routers.iter().position(|r| r.gates.as_deref() == Some(&c.name)) {
                            let name = routers[r].name.strip_prefix(&format!("{stage}.")).unwrap_or(&routers[r].name);
                            if ui.selectable_label(sel.router == r, format!("router {name}")).clicked() {
                                sel.router = r;
                                sel.child = i;
                            }
                        }
                    });
                }
            }
        });
    }
}

/// A router's gates: the training batch's mean per channel over time, and each probe image's
/// gate per channel at the selected record.
pub fn router_view(ui: &mut Ui, run: &Run, router: &RouterInfo, sel: &Selection, size: Vec2) {
    let records = run.records();
    ui.label(
        RichText::new(format!(
            "router {} — {} channels{}",
            router.name,
            router.channels,
            router.gates.as_deref().map(|g| format!(", gating {g}")).unwrap_or_default()
        ))
        .strong(),
    );
    let c = router.channels;
    let over_time: Vec<&[f32]> =
        records.iter().filter_map(|r| tensor(r, &format!("gate.mean/{}", router.name))).collect();
    // Channels down, records across.
    let mut grid = vec![0.0f32; c * over_time.len()];
    for (t, gates) in over_time.iter().enumerate() {
        for (ch, &g) in gates.iter().enumerate().take(c) {
            grid[ch * over_time.len() + t] = g;
        }
    }
    let record = records.get(sel.time);
    let spread = record
        .and_then(|r| tensor(r, &format!("gate.std/{}", router.name)))
        .map(|s| s.iter().sum::<f32>() / s.len().max(1) as f32);
    ui.label(format!(
        "training batch: mean gate by channel (rows) over {} records (columns){}",
        over_time.len(),
        spread.map(|s| format!("; spread across the batch at the selected record: {s:.4}")).unwrap_or_default()
    ));
    let steps: Vec<u64> = records.iter().map(|r| r.step).collect();
    heatmap(
        ui,
        &format!("gates-time-{}", router.name),
        &grid,
        c,
        over_time.len(),
        Scale::Linear(0.0, 1.0),
        size,
        &|ch, t, v| format!("channel {ch}, step {}: mean gate {v:.4}", steps.get(t).copied().unwrap_or_default()),
    );
    if let Some(probe) = record.and_then(|r| r.get(&format!("gate.probe/{}", router.name))) {
        let images = probe.shape[0];
        let labels = run.manifest.as_ref().map(|m| m.probe_labels.clone()).unwrap_or_default();
        ui.label(format!("probe images (rows) by channel (columns) at step {}", record.map_or(0, |r| r.step)));
        heatmap(
            ui,
            &format!("gates-probe-{}", router.name),
            &probe.data,
            images,
            c,
            Scale::Linear(0.0, 1.0),
            Vec2::new(size.x, (images as f32 * 6.0).clamp(40.0, size.y)),
            &|img, ch, v| {
                format!(
                    "probe image {img} (class {}), channel {ch}: gate {v:.4}",
                    labels.get(img).copied().unwrap_or(0)
                )
            },
        );
    }
}

/// Values of a small grid (kh x kw) as coloured cells with their numbers.
fn value_grid(
    ui: &mut Ui,
    values: &[f32],
    rows: usize,
    cols: usize,
    color: &dyn Fn(f32) -> Color32,
    fmt: &dyn Fn(f32) -> String,
) {
    let cell = 46.0;
    let (rect, _) = ui.allocate_exact_size(Vec2::new(cols as f32 * cell, rows as f32 * cell), Sense::hover());
    let painter = ui.painter_at(rect);
    for r in 0..rows {
        for c in 0..cols {
            let Some(&v) = values.get(r * cols + c) else { continue };
            let min = rect.min + Vec2::new(c as f32 * cell, r as f32 * cell);
            let cell_rect = egui::Rect::from_min_size(min, Vec2::splat(cell - 2.0));
            let fill = color(v);
            painter.rect_filled(cell_rect, 2.0, fill);
            let text = if fill.intensity() > 0.55 { Color32::BLACK } else { Color32::WHITE };
            painter.text(cell_rect.center(), egui::Align2::CENTER_CENTER, fmt(v), egui::FontId::monospace(11.0), text);
        }
    }
}

/// A child at the selected record: spatial attention, filter attention, energy maps, and its
/// similarity to its parent over time.
pub fn child_view(ui: &mut Ui, run: &Run, child: &ChildInfo, sel: &Selection, map: Vec2) {
    let records = run.records();
    let Some(record) = records.get(sel.time) else {
        ui.label("no telemetry records yet");
        return;
    };
    let key = |what: &str| format!("{what}/{}", child.name);
    let cosine = tensor(record, &key("cosine")).map_or(f32::NAN, |v| v[0]);
    ui.label(
        RichText::new(format!(
            "{} — [{}, {}, {}, {}] from {}; cosine to parent {cosine:.5} at step {}",
            child.name, child.c_out, child.c_in, child.kh, child.kw, child.parent, record.step
        ))
        .strong(),
    );
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            if let Some(s) = tensor(record, &key("spatial")) {
                ui.label("spatial attention 1 + a");
                let lim = s.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                value_grid(ui, s, child.kh, child.kw, &|v| diverging(v / lim), &|v| format!("{:.3}", 1.0 + v));
            } else {
                ui.label("no spatial attention (filters only)");
            }
            if let Some(t) = tensor(record, &key("taps")) {
                ui.label("energy per tap");
                let scale = Scale::fit(t);
                value_grid(ui, t, child.kh, child.kw, &|v| scale.color(v), &|v| format!("{v:.2}"));
            }
        });
        let cells = if child.cell == [1, 1] {
            "per output (rows) x input (columns) channel".to_string()
        } else {
            format!("per {}x{} block of output (rows) x input (columns) channels", child.cell[0], child.cell[1])
        };
        // One of the child's energy maps (`what`: energy or delta), on a log scale.
        let energy_map = |ui: &mut Ui, what: &str, title: &str| {
            let [rows, cols] = child.cells();
            if let Some(values) = tensor(record, &key(what)) {
                let scale = Scale::fit_log(values);
                ui.label(format!("{title}, {}", scale.describe()));
                heatmap(ui, &format!("{what}-{}", child.name), values, rows, cols, scale, map, &|r, c, v| {
                    format!("outputs {}.., inputs {}..: {v:.4e}", r * child.cell[0], c * child.cell[1])
                });
            }
        };
        ui.vertical(|ui| energy_map(ui, "energy", &format!("child energy {cells}")));
        ui.vertical(|ui| energy_map(ui, "delta", "energy of child − parent"));
    });
    let bar_height = 110.0;
    ui.horizontal(|ui| {
        let half = (ui.available_width() - 8.0) / 2.0;
        if let Some(f) = tensor(record, &key("filter")) {
            let bars = f.iter().enumerate().map(|(o, &v)| Bar::new(o as f64, v as f64).width(1.0)).collect();
            Plot::new(format!("filter-{}", child.name))
                .height(bar_height)
                .width(half)
                .x_axis_label("output channel")
                .y_axis_label("filter attention a")
                .allow_scroll(false)
                .show(ui, |p| p.bar_chart(BarChart::new("a_filter", bars)));
        }
        let cos: Vec<[f64; 2]> = records
            .iter()
            .filter_map(|r| tensor(r, &key("cosine")).map(|v| [record_position(run, r), v[0] as f64]))
            .collect();
        Plot::new(format!("cosine-{}", child.name))
            .height(bar_height)
            .width(half)
            .x_axis_label("epoch")
            .y_axis_label("cosine to parent")
            .allow_scroll(false)
            .show(ui, |p| {
                p.line(Line::new("cosine", PlotPoints::from(cos)));
                p.vline(VLine::new("", record_position(run, record)).color(Color32::GRAY));
            });
    });
}
