//! A run's directory: `config.json` (the resolved arguments), `log.txt` (what a person reads)
//! and `metrics.jsonl` (one JSON object per line: `train` records every print step, `val`
//! records every epoch). Lines are flushed as written, so a crash loses nothing logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const LOG_FILE: &str = "log.txt";
pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct RunDir {
    pub path: PathBuf,
    log: File,
    metrics: File,
}

impl RunDir {
    /// Opens (creating) `path`, writes its config, and appends to its log and metrics (a
    /// resumed run may continue in the same directory).
    pub fn create(path: &Path, config: &serde_json::Value) -> Result<RunDir> {
        std::fs::create_dir_all(path).with_context(|| format!("creating log directory {}", path.display()))?;
        crate::io::write_atomically(&path.join(CONFIG_FILE), serde_json::to_string_pretty(config)?.as_bytes())?;
        let append = |name: &str| {
            let p = path.join(name);
            OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("opening {}", p.display()))
        };
        Ok(RunDir { path: path.to_path_buf(), log: append(LOG_FILE)?, metrics: append(METRICS_FILE)? })
    }

    /// A timestamped line in `log.txt`.
    pub fn log(&mut self, line: &str) -> Result<()> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        writeln!(self.log, "{now} {line}").context("writing log.txt")
    }

    /// One record in `metrics.jsonl`.
    pub fn record(&mut self, value: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(value)?;
        writeln!(self.metrics, "{line}").context("writing metrics.jsonl")?;
        self.metrics.flush().context("writing metrics.jsonl")
    }
}

/// `runs/<date>-<time>-<arch>`, unique.
pub fn default_path(arch: &str) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp = now.trim_end_matches('Z').replace(':', "");
    let base = PathBuf::from("runs").join(format!("{stamp}-{arch}"));
    let mut path = base.clone();
    let mut n = 2;
    while path.exists() {
        path = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    path
}
