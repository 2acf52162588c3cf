//! `telemetry.bin`: an append-only sequence of records, and a reader that follows it while a
//! run writes it.
//!
//! Each record is framed as `b"KDT1"`, the payload's length (u32, little-endian), the
//! payload's CRC-32 (IEEE, u32 LE), then the payload: a safetensors file of f32 tensors whose
//! header metadata holds `kind` (`start`, `step` or `epoch`), `step` (optimizer steps taken)
//! and `epoch` (0-based). A writer appends whole records with one write; a reader stops
//! before a record that has not fully arrived and skips (and counts) records whose checksum
//! or contents are wrong, resynchronising at the next magic.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::io::HostTensor;

pub const MAGIC: &[u8; 4] = b"KDT1";
const HEADER: usize = 12;
/// Larger lengths are corruption, not records.
const MAX_PAYLOAD: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A run (or a resumed run) began at this step: later records of an earlier attempt are void.
    Start,
    /// Every `--telemetry-every` steps.
    Step,
    /// The end of an epoch.
    Epoch,
}

impl RecordKind {
    fn name(self) -> &'static str {
        match self {
            RecordKind::Start => "start",
            RecordKind::Step => "step",
            RecordKind::Epoch => "epoch",
        }
    }

    fn parse(s: &str) -> Option<RecordKind> {
        [RecordKind::Start, RecordKind::Step, RecordKind::Epoch].into_iter().find(|k| k.name() == s)
    }
}

/// One snapshot of a run. Tensor keys are documented in ARCHITECTURE.md (`gate.probe/<router>`,
/// `energy/<child>`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    pub step: u64,
    pub epoch: usize,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Record {
    pub fn new(kind: RecordKind, step: u64, epoch: usize) -> Record {
        Record { kind, step, epoch, tensors: BTreeMap::new() }
    }

    pub fn insert(&mut self, key: String, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "{key}");
        self.tensors.insert(key, HostTensor { shape, data });
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }

    /// The framed bytes of this record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(&String, &HostTensor, Vec<u8>)> =
            self.tensors.iter().map(|(k, t)| (k, t, t.data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let mut views = Vec::new();
        for (name, t, data) in &bytes {
            views.push(((*name).clone(), TensorView::new(Dtype::F32, t.shape.clone(), data)?));
        }
        let metadata = HashMap::from([
            ("kind".to_string(), self.kind.name().to_string()),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
        ]);
        let payload = safetensors::serialize(views, Some(metadata)).context("encoding a telemetry record")?;
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// A record from its payload (the bytes after the frame header).
    pub fn decode(payload: &[u8]) -> Result<Record> {
        let (_, header) = SafeTensors::read_metadata(payload).context("not a safetensors payload")?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).with_context(|| format!("record metadata lacks {k:?}"));
        let kind = field("kind")?;
        let kind = RecordKind::parse(kind).with_context(|| format!("unknown record kind {kind:?}"))?;
        let mut record = Record::new(kind, field("step")?.parse()?, field("epoch")?.parse()?);
        let file = SafeTensors::deserialize(payload).context("not a safetensors payload")?;
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!("tensor {name:?} has dtype {:?}; telemetry holds F32", view.dtype());
            }
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            record.tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(record)
    }
}

/// Follows a `telemetry.bin` as it grows.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    /// Bytes consumed so far.
    offset: u64,
    /// Records of the current attempt, in step order.
    pub records: Vec<Record>,
    /// Corrupt stretches skipped (a bad record and whatever precedes the next magic).
    pub corrupt: usize,
}

impl Reader {
    pub fn new(path: &Path) -> Reader {
        Reader { path: path.to_path_buf(), offset: 0, records: Vec::new(), corrupt: 0 }
    }

    /// Reads what was appended since the last call; returns how many records arrived. A file
    /// that shrank was replaced: it is read again from the start. A missing file reads as empty.
    pub fn poll(&mut self) -> Result<usize> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        let len = file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len();
        if len < self.offset {
            *self = Reader::new(&self.path);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("reading {}", self.path.display()))?;
        let before = self.records.len();
        let consumed = self.parse(&bytes);
        self.offset += consumed as u64;
        Ok(self.records.len().saturating_sub(before))
    }

    /// Takes every whole record from `bytes`; returns the bytes consumed.
    fn parse(&mut self, bytes: &[u8]) -> usize {
        let mut pos = 0;
        while bytes.len() - pos >= HEADER {
            let frame = &bytes[pos..];
            let len = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
            if &frame[..4] != MAGIC || len > MAX_PAYLOAD {
                pos = self.resync(bytes, pos);
                continue;
            }
            if frame.len() - HEADER < len {
                break; // still being written
            }
            let crc = u32::from_le_bytes(frame[8..12].try_into().unwrap());
            let payload = &frame[HEADER..HEADER + len];
            match (crc32fast::hash(payload) == crc).then(|| Record::decode(payload)) {
                Some(Ok(record)) => {
                    self.accept(record);
                    pos += HEADER + len;
                }
                _ => pos = self.resync(bytes, pos),
            }
        }
        pos
    }

    /// Counts a corrupt record at `pos` and returns where the next magic starts (or where a
    /// magic cut off at the end could).
    fn resync(&mut self, bytes: &[u8], pos: usize) -> usize {
        self.corrupt += 1;
        let from = pos + 1;
        bytes[from..]
            .windows(MAGIC.len())
            .position(|w| w == MAGIC)
            .map_or(bytes.len().saturating_sub(MAGIC.len() - 1).max(from), |p| from + p)
    }

    fn accept(&mut self, record: Record) {
        if record.kind == RecordKind::Start {
            // A resumed run restarts at its checkpoint: what an earlier attempt wrote past it is void.
            self.records.retain(|r| r.step <= record.step);
        } else if self.records.last().is_some_and(|r| r.step >= record.step) {
            self.records.retain(|r| r.step < record.step);
        }
        if record.kind != RecordKind::Start {
            self.records.push(record);
        }
    }
}
