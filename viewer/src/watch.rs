//! Wakes the window when the open run's files change, so an idle viewer draws no frames
//! (software renderers pay for every one) yet shows new records within half a second.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::app::REFRESH;

/// The files a run grows.
const FILES: [&str; 4] = ["config.json", "metrics.jsonl", "telemetry.json", "telemetry.bin"];

pub struct Watcher {
    dir: Arc<Mutex<Option<PathBuf>>>,
    changed: Arc<AtomicBool>,
}

impl Watcher {
    /// A thread that checks the watched directory every [`REFRESH`] and asks `ctx` for a
    /// frame when something changed.
    pub fn spawn(ctx: egui::Context) -> Watcher {
        let dir: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let changed = Arc::new(AtomicBool::new(false));
        let (watched, flag) = (dir.clone(), changed.clone());
        std::thread::spawn(move || {
            let mut last = None;
            loop {
                std::thread::sleep(REFRESH);
                let current = watched.lock().map(|d| d.clone()).unwrap_or_default();
                let now = current.as_deref().map(signature);
                if now != last {
                    last = now;
                    flag.store(true, Ordering::Release);
                    ctx.request_repaint();
                }
            }
        });
        Watcher { dir, changed }
    }

    pub fn watch(&self, dir: &Path) {
        if let Ok(mut d) = self.dir.lock() {
            *d = Some(dir.to_path_buf());
        }
    }

    /// Whether something changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

/// Sizes and modification times of a run's files.
fn signature(dir: &Path) -> Vec<Option<(u64, SystemTime)>> {
    FILES
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))))
        .collect()
}
