//! The trainer's side of telemetry: a probe batch run in eval mode, the gates of the training
//! batch, and every child's statistics, copied back asynchronously and appended to
//! `telemetry.bin`.
//!
//! Nothing here changes training: the probe runs an eval executor over the shared weights
//! (running statistics are read, not updated; no random stream is drawn), and copies are
//! queued after the step that produced the values.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::probes::{ChildProbe, RouterProbe, child_stats, discover, gate_spread};
use super::records::{Record, RecordKind};
use super::{MANIFEST_FILE, Manifest, RECORDS_FILE};
use crate::gpu::{AsyncRead, Gpu};
use crate::graph::{Executor, Graph, Plan, TensorId};
use crate::models::{ModelSpec, build};

/// Images in the probe batch.
pub const PROBE_IMAGES: usize = 16;

pub struct Recorder {
    gpu: Arc<Gpu>,
    pub every: usize,
    file: File,
    routers: Vec<RouterProbe>,
    children: Vec<ChildProbe>,
    probe: Executor,
    probe_gates: Vec<TensorId>,
    /// Parameters the children are computed from, each once.
    params: Vec<TensorId>,
    read: AsyncRead,
    /// The record whose values are on their way.
    pending: Option<Record>,
    /// Records written (the start marker included).
    pub written: usize,
}

impl Recorder {
    /// A recorder for the network `train` runs (its graph `graph`), writing into `dir`; `None`
    /// for networks without routers or children (baselines). `probe_images` is a batch of
    /// [`PROBE_IMAGES`] validation images with their `labels`. Writes the manifest and a
    /// `start` record at step `step`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        every: usize,
        spec: ModelSpec,
        res: usize,
        graph: &Graph,
        train: &Executor,
        probe_images: &[f32],
        labels: &[u32],
        step: u64,
    ) -> Result<Option<Recorder>> {
        let (routers, children) = discover(graph);
        if routers.is_empty() && children.is_empty() {
            return Ok(None);
        }
        let gpu = train.gpu().clone();
        let probe_net = build(spec, labels.len(), res, 0.0)?;
        let probe = Executor::with_weights(gpu.clone(), &probe_net.graph, Plan::eval(), train.weights().clone())?;
        probe.write(probe_net.images, probe_images)?;
        let (probe_routers, _) = discover(&probe_net.graph);
        let probe_gates = probe_routers.iter().map(|r| r.gate).collect();

        let mut params = Vec::new();
        for c in &children {
            for t in [Some(c.parent), c.spatial, Some(c.filter)].into_iter().flatten() {
                if !params.contains(&t) {
                    params.push(t);
                }
            }
        }
        let sources = routers
            .iter()
            .map(|r| train.slice(r.gate).clone())
            .chain(probe_routers.iter().map(|r| probe.slice(r.gate).clone()))
            .chain(params.iter().map(|&t| train.slice(t).clone()))
            .collect();
        let read = AsyncRead::new(&gpu, "kdna.telemetry", sources);

        let manifest = Manifest {
            format: super::FORMAT_VERSION,
            arch: spec.arch.name().to_string(),
            kdna: spec.kdna,
            classes: spec.classes,
            res,
            every,
            probe_labels: labels.to_vec(),
            routers: routers.iter().map(|r| r.info.clone()).collect(),
            children: children.iter().map(|c| c.info.clone()).collect(),
        };
        crate::io::write_atomically(&dir.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        let path = dir.join(RECORDS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut recorder = Recorder {
            gpu,
            every,
            file,
            routers,
            children,
            probe,
            probe_gates,
            params,
            read,
            pending: None,
            written: 0,
        };
        recorder.append(&Record::new(RecordKind::Start, step, 0))?;
        Ok(Some(recorder))
    }

    /// Whether a step record is due after `step` optimizer steps.
    pub fn due(&self, step: u64) -> bool {
        self.every > 0 && step.is_multiple_of(self.every as u64)
    }

    /// Queues a snapshot of the state after the work submitted so far: the probe batch's
    /// forward pass, then copies of gates and parameters. A snapshot still on its way is
    /// finished first.
    pub fn capture(&mut self, kind: RecordKind, step: u64, epoch: usize) -> Result<()> {
        self.finish()?;
        self.probe.run()?;
        self.read.start(&self.gpu)?;
        self.pending = Some(Record::new(kind, step, epoch));
        Ok(())
    }

    /// Writes the pending snapshot if its values have arrived.
    pub fn poll(&mut self) -> Result<()> {
        self.complete(false)
    }

    /// Waits for the pending snapshot, if any, and writes it.
    pub fn finish(&mut self) -> Result<()> {
        self.complete(true)
    }

    fn complete(&mut self, wait: bool) -> Result<()> {
        // The read is pending exactly when a record is.
        let Some(values) = self.read.take(&self.gpu, wait)? else { return Ok(()) };
        let mut record = self.pending.take().expect("a record for the read");
        let (train_gates, rest) = values.split_at(self.routers.len());
        let (probe_gates, params) = rest.split_at(self.probe_gates.len());
        for ((r, gates), probe) in self.routers.iter().zip(train_gates).zip(probe_gates) {
            let c = r.info.channels;
            let (mean, std) = gate_spread(gates, c);
            record.insert(format!("gate.mean/{}", r.info.name), vec![c], mean);
            record.insert(format!("gate.std/{}", r.info.name), vec![c], std);
            record.insert(format!("gate.probe/{}", r.info.name), vec![probe.len() / c, c], probe.clone());
        }
        let param: BTreeMap<TensorId, &Vec<f32>> = self.params.iter().copied().zip(params).collect();
        for c in &self.children {
            let i = &c.info;
            let row = |t: TensorId, len: usize| &param[&t][i.row * len..(i.row + 1) * len];
            let taps = i.kh * i.kw;
            let spatial = c.spatial.map(|t| row(t, taps));
            let filter = row(c.filter, i.c_out);
            let stats = child_stats(i, param[&c.parent], spatial, filter);
            if let Some(s) = spatial {
                record.insert(format!("spatial/{}", i.name), vec![i.kh, i.kw], s.to_vec());
            }
            record.insert(format!("filter/{}", i.name), vec![i.c_out], filter.to_vec());
            let [rows, cols] = i.cells();
            record.insert(format!("energy/{}", i.name), vec![rows, cols], stats.energy);
            record.insert(format!("delta/{}", i.name), vec![rows, cols], stats.delta);
            record.insert(format!("taps/{}", i.name), vec![i.kh, i.kw], stats.taps);
            record.insert(format!("cosine/{}", i.name), vec![1], vec![stats.cosine]);
        }
        self.append(&record)
    }

    /// Appends a record in one write and flushes it.
    fn append(&mut self, record: &Record) -> Result<()> {
        let bytes = record.encode()?;
        self.file.write_all(&bytes).context("writing telemetry.bin")?;
        self.file.flush().context("writing telemetry.bin")?;
        self.written += 1;
        Ok(())
    }
}
