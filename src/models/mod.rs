//! Layers built from ops, with PyTorch's parameter names.

pub mod layers;
