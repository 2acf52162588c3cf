//! kdna: KernelDNA networks trained with WGSL kernels on any GPU wgpu reaches.

pub mod commands;
pub mod data;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod models;
pub mod ops;
pub mod reference;
pub mod telemetry;
pub mod train;
