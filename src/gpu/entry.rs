//! An entry point of a kernel family, with the values of the pipeline constants it is
//! compiled with.
//!
//! The kernels that store a layer's outputs (convolutions, depthwise, linear layers,
//! BatchNorm) add a bias, add a residual and apply an activation on some dispatches and not
//! others. They read those choices from pipeline constants (`override`s in
//! `shaders/common.wgsl`), not from their parameter struct: each distinct [`Stores`] compiles a
//! pipeline of its own, in which the branches on them fold away. Software adapters run both
//! sides of a branch on a uniform value under a lane mask, so a switch on the activation paid
//! a sigmoid's exponential for every value stored, whatever the activation.

/// An activation applied as a convolution or linear layer stores its results (inference
/// folding fuses a relu, relu6, sigmoid or GELU that only follows one this way); the same
/// values as the separate op. `STORED_ACTIVATION`'s values in `shaders/common.wgsl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutputActivation {
    #[default]
    None = 0,
    Relu = 1,
    Relu6 = 2,
    Sigmoid = 3,
    Gelu = 4,
}

/// What a kernel adds and applies as it stores each output: the pipeline constants
/// `STORED_ACTIVATION`, `STORES_BIAS` and `STORES_RESIDUAL`. Kernels that store nothing of the
/// sort take the default (none of them), as do all other kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stores {
    pub activation: OutputActivation,
    pub bias: bool,
    pub residual: bool,
}

impl Stores {
    /// The pipeline constants that differ from their defaults in the shaders.
    fn constants(self) -> Vec<(&'static str, f64)> {
        let mut constants = Vec::new();
        if self.activation != OutputActivation::None {
            constants.push(("STORED_ACTIVATION", f64::from(self.activation as u32)));
        }
        if self.bias {
            constants.push(("STORES_BIAS", 1.0));
        }
        if self.residual {
            constants.push(("STORES_RESIDUAL", 1.0));
        }
        constants
    }
}

/// An entry point and the [`Stores`] it is compiled for. A kernel that reads them is always
/// dispatched with them ([`Entry::storing`], [`Entry::activating`]), any other by its plain
/// name: creating the pipeline checks both ways, so an op cannot leave a fused activation out
/// by omission, nor compile one kernel twice for constants it never reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: &'static str,
    pub stores: Option<Stores>,
}

impl Entry {
    pub fn storing(name: &'static str, stores: Stores) -> Entry {
        Entry { name, stores: Some(stores) }
    }

    /// `name` compiled to apply `activation` as it stores (and to add no bias or residual).
    pub fn activating(name: &'static str, activation: OutputActivation) -> Entry {
        Entry::storing(name, Stores { activation, ..Stores::default() })
    }

    /// The pipeline constants to compile this entry with.
    pub(super) fn constants(&self) -> Vec<(&'static str, f64)> {
        self.stores.map(Stores::constants).unwrap_or_default()
    }
}

impl From<&'static str> for Entry {
    fn from(name: &'static str) -> Entry {
        Entry { name, stores: None }
    }
}
