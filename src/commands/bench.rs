//! `kdna bench`: what a network costs.

use anyhow::Result;
use serde::Serialize;

use crate::models::{ModelSpec, build, macs_per_image, parameter_count};

/// Parameters and multiply-accumulates of one network at one resolution.
#[derive(Clone, Debug, Serialize)]
pub struct ParamsReport {
    pub arch: String,
    pub baseline: bool,
    pub classes: usize,
    pub res: usize,
    pub params: usize,
    /// Per image, convolutions and fully connected layers (router projections included).
    pub macs: u64,
}

pub fn params(spec: ModelSpec, res: usize) -> Result<ParamsReport> {
    let net = build(spec, 1, res, 0.0)?;
    Ok(ParamsReport {
        arch: spec.arch.name().to_string(),
        baseline: !spec.kdna,
        classes: spec.classes,
        res,
        params: parameter_count(&net.graph),
        macs: macs_per_image(&net),
    })
}
