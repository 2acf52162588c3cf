//! Plain-Rust forward and backward of every op, in f64: the oracle the WGSL kernels are held
//! to. Written for clarity, not speed; each function mirrors one kernel's formula, and takes
//! the op's own shape struct so shapes are decided in one place.

pub mod adamw;
pub mod batchnorm;
pub mod conv2d;
pub mod elementwise;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod modulate;
pub mod pool;
pub mod router;
pub mod sgd;
