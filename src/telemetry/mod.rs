//! Telemetry: what a run's routers and children do while it trains, written into the run
//! directory for `kdna-viewer` (ARCHITECTURE.md documents the files).
//!
//! - `telemetry.json` — the [`Manifest`]: the network's routers and children, the probe batch.
//! - `telemetry.bin` — [`records`]: snapshots every `--telemetry-every` steps and at each epoch's end.

pub mod probes;
pub mod recorder;
pub mod records;

use serde::{Deserialize, Serialize};

pub use probes::{ChildInfo, RouterInfo};
pub use recorder::Recorder;
pub use records::{Reader, Record, RecordKind};

pub const MANIFEST_FILE: &str = "telemetry.json";
pub const RECORDS_FILE: &str = "telemetry.bin";
pub const FORMAT_VERSION: u32 = 1;

/// What a run's telemetry describes; written (atomically) when a run starts or resumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub arch: String,
    pub kdna: bool,
    pub classes: usize,
    pub res: usize,
    /// Steps between records (0: epoch ends only).
    pub every: usize,
    /// Classes of the probe images, in order.
    pub probe_labels: Vec<u32>,
    pub routers: Vec<RouterInfo>,
    pub children: Vec<ChildInfo>,
}

impl Manifest {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Manifest> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a kdna telemetry manifest", path.display()))
    }
}
