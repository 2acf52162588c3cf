//! The viewer's window: a run picker and time controls on top, the network map on the left,
//! curves, the selected router and the selected child in the middle. The run's files are
//! checked twice a second (in a window, by a thread that wakes it only when they change), so a
//! run that is training shows new records as they land.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{RichText, Ui, Vec2};

use crate::run::{Run, find_runs};
use crate::views::{self, Selection};
use crate::watch::Watcher;

/// How often files are checked for changes.
pub const REFRESH: Duration = Duration::from_millis(500);
/// How often an idle window redraws anyway (the run picker's list).
const IDLE_REPAINT: Duration = Duration::from_secs(5);

pub struct ViewerApp {
    /// The directory whose runs the picker lists.
    root: PathBuf,
    runs: Vec<PathBuf>,
    run: Option<Run>,
    sel: Selection,
    /// Keep the newest record selected as records arrive.
    follow: bool,
    path_input: String,
    last_refresh: Option<Instant>,
    /// In a window: the thread that wakes it when the run's files change.
    watcher: Option<Watcher>,
}

impl ViewerApp {
    /// A viewer of `run_dir`, or of the newest run under `runs/` when none is given.
    pub fn new(run_dir: Option<&Path>) -> ViewerApp {
        let root = match run_dir {
            Some(d) => d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
            None => PathBuf::from("runs"),
        };
        let runs = find_runs(&root);
        let chosen = run_dir.map(Path::to_path_buf).or_else(|| runs.first().cloned());
        let mut app = ViewerApp {
            root,
            runs,
            run: None,
            sel: Selection::default(),
            follow: true,
            path_input: chosen.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            last_refresh: None,
            watcher: None,
        };
        if let Some(dir) = chosen {
            app.open(&dir);
        }
        app
    }

    /// Wakes `ctx` whenever the open run's files change (a window's app; tests and screenshots
    /// draw frames themselves).
    pub fn watch(&mut self, ctx: egui::Context) {
        let watcher = Watcher::spawn(ctx);
        if let Some(run) = &self.run {
            watcher.watch(&run.dir);
        }
        self.watcher = Some(watcher);
    }

    pub fn open(&mut self, dir: &Path) {
        if let Some(w) = &self.watcher {
            w.watch(dir);
        }
        self.run = Some(Run::open(dir));
        self.sel = Selection::default();
        self.follow = true;
        self.path_input = dir.display().to_string();
        self.follow_latest();
    }

    pub fn run(&self) -> Option<&Run> {
        self.run.as_ref()
    }

    pub fn selection_mut(&mut self) -> &mut Selection {
        &mut self.sel
    }

    /// Reads the files again if the watcher saw a change or [`REFRESH`] has passed; returns
    /// whether anything arrived.
    pub fn refresh(&mut self) -> bool {
        let changed = self.watcher.as_ref().is_some_and(Watcher::take_changed);
        if !changed && self.last_refresh.is_some_and(|t| t.elapsed() < REFRESH) {
            return false;
        }
        self.last_refresh = Some(Instant::now());
        self.runs = find_runs(&self.root);
        let changed = self.run.as_mut().is_some_and(Run::refresh);
        self.follow_latest();
        changed
    }

    fn follow_latest(&mut self) {
        let Some(run) = &self.run else { return };
        let n = run.records().len();
        if self.follow || self.sel.time >= n {
            self.sel.time = n.saturating_sub(1);
        }
        if let Some(m) = &run.manifest {
            self.sel.router = self.sel.router.min(m.routers.len().saturating_sub(1));
            self.sel.child = self.sel.child.min(m.children.len().saturating_sub(1));
        }
    }

    /// The whole window's contents.
    pub fn ui(&mut self, ui: &mut Ui) {
        egui::Panel::top("controls").show(ui, |ui| self.controls(ui));
        let Some(run) = &self.run else {
            egui::CentralPanel::default().show(ui, |ui| {
                ui.label(format!(
                    "No run open. Pick one above, or start one with `kdna train` (runs go to {}).",
                    self.root.display()
                ));
            });
            return;
        };
        let record = run.records().get(self.sel.time);
        if let Some(m) = &run.manifest {
            egui::Panel::left("network").default_size(300.0).show(ui, |ui| {
                ui.heading(format!("{} ({})", m.arch, if m.kdna { "KernelDNA" } else { "baseline" }));
                egui::ScrollArea::vertical().show(ui, |ui| {
                    views::network_map(ui, &m.routers, &m.children, record, &mut self.sel);
                });
            });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(problem) = &run.problem {
                ui.colored_label(ui.visuals().warn_fg_color, problem);
            }
            let at = record.map(|r| views::record_position(run, r));
            views::curves(ui, run, at, 150.0);
            let Some(m) = &run.manifest else { return };
            ui.separator();
            egui::ScrollArea::vertical().show(ui, |ui| {
                if let Some(router) = m.routers.get(self.sel.router) {
                    views::router_view(ui, run, router, &self.sel, Vec2::new(ui.available_width(), 120.0));
                }
                ui.separator();
                if let Some(child) = m.children.get(self.sel.child) {
                    views::child_view(ui, run, child, &self.sel, Vec2::splat(200.0));
                }
            });
        });
    }

    fn controls(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("kdna viewer").strong());
            let current = self.run.as_ref().map(|r| r.dir.clone());
            let label = current.as_ref().map_or("pick a run".to_string(), |p| short_name(p));
            let mut picked = None;
            egui::ComboBox::new("run", "run").selected_text(label).width(260.0).show_ui(ui, |ui| {
                if self.runs.is_empty() {
                    ui.label(format!("no runs under {}", self.root.display()));
                }
                for r in &self.runs {
                    if ui.selectable_label(current.as_ref() == Some(r), short_name(r)).clicked() {
                        picked = Some(r.clone());
                    }
                }
            });
            let edit = ui
                .add(egui::TextEdit::singleline(&mut self.path_input).hint_text("run directory").desired_width(260.0));
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Open").clicked() || enter {
                picked = Some(PathBuf::from(self.path_input.trim()));
            }
            if let Some(dir) = picked {
                self.open(&dir);
            }
        });
        let Some(run) = &self.run else { return };
        let n = run.records().len();
        ui.horizontal(|ui| {
            if n == 0 {
                ui.label("no telemetry records yet");
            } else {
                let mut time = self.sel.time;
                let record = &run.records()[time.min(n - 1)];
                let slider = egui::Slider::new(&mut time, 0..=n - 1)
                    .text(format!("record: step {} (epoch {})", record.step, record.epoch + 1))
                    .show_value(false);
                ui.spacing_mut().slider_width = (ui.available_width() * 0.45).max(200.0);
                if ui.add(slider).changed() {
                    self.sel.time = time;
                    self.follow = time == n - 1;
                }
            }
            ui.checkbox(&mut self.follow, "follow live");
            let last = run.train.last().map(|m| format!("epoch {} step {}", m.epoch + 1, m.step.unwrap_or(0) + 1));
            ui.label(format!("{n} records; last metrics {}", last.unwrap_or_else(|| "none yet".into())));
        });
        self.follow_latest();
    }
}

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.refresh();
        ViewerApp::ui(self, ui);
        ui.ctx().request_repaint_after(IDLE_REPAINT);
    }
}
