//! A run directory as the viewer sees it — `config.json`, `metrics.jsonl` and the telemetry
//! files — read again as they grow, so a run that is still training can be followed.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kdna::telemetry::{MANIFEST_FILE, Manifest, RECORDS_FILE, Reader, Record};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub epoch: usize,
    /// Step within the epoch (train records); `None` for validation.
    pub step: Option<usize>,
    pub loss: f64,
    pub acc1: f64,
    pub lr: Option<f64>,
}

pub struct Run {
    pub dir: PathBuf,
    pub config: Option<serde_json::Value>,
    pub manifest: Option<Manifest>,
    pub train: Vec<Metric>,
    pub val: Vec<Metric>,
    pub telemetry: Reader,
    /// Why the run shows less than it could (no such directory, no telemetry, a bad file).
    pub problem: Option<String>,
    metrics_offset: u64,
}

impl Run {
    pub fn open(dir: &Path) -> Run {
        let mut run = Run {
            dir: dir.to_path_buf(),
            config: None,
            manifest: None,
            train: Vec::new(),
            val: Vec::new(),
            telemetry: Reader::new(&dir.join(RECORDS_FILE)),
            problem: None,
            metrics_offset: 0,
        };
        run.refresh();
        run
    }

    /// Reads what changed on disk; returns whether anything new arrived.
    pub fn refresh(&mut self) -> bool {
        if !self.dir.is_dir() {
            self.problem = Some(format!("{} is not a directory", self.dir.display()));
            return false;
        }
        let mut changed = false;
        let config = self.dir.join(kdna::train::run_dir::CONFIG_FILE);
        if self.config.is_none() && config.exists() {
            self.config = std::fs::read_to_string(&config).ok().and_then(|t| serde_json::from_str(&t).ok());
            changed |= self.config.is_some();
        }
        changed |= self.read_metrics();
        let manifest = self.dir.join(MANIFEST_FILE);
        let mut problems = Vec::new();
        if manifest.exists() {
            match Manifest::load(&manifest) {
                Ok(m) => {
                    changed |= self.manifest.as_ref() != Some(&m);
                    self.manifest = Some(m);
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        match self.telemetry.poll() {
            Ok(n) => changed |= n > 0,
            Err(e) => problems.push(format!("{e:#}")),
        }
        if self.telemetry.corrupt > 0 {
            problems.push(format!("{} corrupt stretches of {RECORDS_FILE} were skipped", self.telemetry.corrupt));
        }
        if self.config.is_none() && self.train.is_empty() && self.manifest.is_none() {
            problems.push(format!(
                "{} holds no kdna run yet (no config.json, metrics.jsonl or {MANIFEST_FILE}); waiting for one",
                self.dir.display()
            ));
        } else if self.manifest.is_none() && problems.is_empty() {
            problems
                .push("no telemetry in this run (a baseline network, or --telemetry-every 0): curves only".to_string());
        }
        self.problem = (!problems.is_empty()).then(|| problems.join("; "));
        changed
    }

    /// Appends whole new lines of `metrics.jsonl`; a line still being written waits.
    fn read_metrics(&mut self) -> bool {
        let path = self.dir.join(kdna::train::run_dir::METRICS_FILE);
        let Ok(mut file) = std::fs::File::open(&path) else { return false };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.metrics_offset {
            self.metrics_offset = 0;
            self.train.clear();
            self.val.clear();
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.metrics_offset)).is_err() || file.read_to_string(&mut text).is_err() {
            return false;
        }
        let Some(end) = text.rfind('\n') else { return false };
        self.metrics_offset += end as u64 + 1;
        for line in text[..end].lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
            let (Some(epoch), Some(loss), Some(acc1)) = (num("epoch"), num("loss"), num("acc1")) else { continue };
            let metric =
                Metric { epoch: epoch as usize, step: num("step").map(|s| s as usize), loss, acc1, lr: num("lr") };
            let list = match v.get("kind").and_then(|k| k.as_str()) {
                Some("train") => &mut self.train,
                Some("val") => &mut self.val,
                _ => continue,
            };
            // A resumed run writes its epochs again: the later record of a position wins.
            list.retain(|m| (m.epoch, m.step) != (metric.epoch, metric.step));
            list.push(metric);
            list.sort_by_key(|m| (m.epoch, m.step));
        }
        end > 0
    }

    /// Training steps per epoch, as the run was configured (for x positions in epochs).
    pub fn steps_per_epoch(&self) -> Option<f64> {
        let c = self.config.as_ref()?;
        let images = c.get("train_images")?.as_f64()?;
        let args = c.get("args")?;
        let batch = args.get("batch_size")?.as_f64()?;
        let steps = (images / batch).ceil();
        Some(args.get("steps_per_epoch").and_then(|s| s.as_f64()).map_or(steps, |s| s.min(steps)).max(1.0))
    }

    /// Where a train metric sits, in epochs.
    pub fn position(&self, m: &Metric) -> f64 {
        match (m.step, self.steps_per_epoch()) {
            (Some(step), Some(steps)) => m.epoch as f64 + (step + 1) as f64 / steps,
            _ => m.epoch as f64 + 1.0,
        }
    }

    pub fn records(&self) -> &[Record] {
        &self.telemetry.records
    }
}

/// Run directories under `root` (those holding a config.json or telemetry), newest first.
pub fn find_runs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(kdna::train::run_dir::CONFIG_FILE).exists() || p.join(MANIFEST_FILE).exists())
        .map(|p| (p.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    runs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    runs.into_iter().map(|(_, p)| p).collect()
}
