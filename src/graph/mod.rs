//! Networks as graphs of ops over tensors, and the executor that runs them.

mod executor;
pub mod fold;
pub mod fuse;
mod weights;

pub use executor::{DispatchTime, Executor, Phase, Plan, StepStats};
pub use weights::Weights;

use anyhow::{Result, bail};

use crate::ops::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// What a tensor is to the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fed by the caller each step (images).
    Input,
    /// Integer class labels fed by the caller; never differentiated.
    Labels,
    /// Trained by the optimizer; lives in the shared parameter arena.
    Param,
    /// Persistent but not trained (BatchNorm running statistics).
    State,
    /// Produced by an op.
    Activation,
}

/// How a parameter or state tensor starts (the distributions PyTorch initialises with).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f32),
    /// Uniform on [-bound, bound].
    Uniform(f32),
    /// Every element this value (ConvNeXt's layer scale starts at 1e-6).
    Constant(f32),
    /// Normal with this standard deviation, redrawn outside [-2, 2] (torch's `trunc_normal_`
    /// with its default bounds, as ConvNeXt initialises its convs and linear layers).
    TruncNormal(f32),
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    pub init: Init,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Node {
    pub op: Box<dyn Op>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

/// A network: tensors and the ops between them, in execution order.
#[derive(Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
}

impl Clone for Node {
    fn clone(&self) -> Self {
        Node { op: self.op.boxed_clone(), inputs: self.inputs.clone(), outputs: self.outputs.clone() }
    }
}

impl Clone for Graph {
    fn clone(&self) -> Self {
        Graph { tensors: self.tensors.clone(), nodes: self.nodes.clone() }
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    fn tensor(&mut self, name: impl Into<String>, shape: &[usize], role: Role) -> TensorId {
        self.tensors.push(TensorInfo { name: name.into(), shape: shape.to_vec(), role, init: Init::Zeros });
        TensorId(self.tensors.len() - 1)
    }

    pub fn input(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.tensor(name, shape, Role::Input)
    }

    pub fn labels(&mut self, name: &str, batch: usize) -> TensorId {
        self.tensor(name, &[batch], Role::Labels)
    }

    /// A trained parameter, starting at zero. Names are the PyTorch state-dict keys; a name
    /// may appear once.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Result<TensorId> {
        self.param_init(name, shape, Init::Zeros)
    }

    /// A trained parameter that starts as `init` says.
    pub fn param_init(&mut self, name: &str, shape: &[usize], init: Init) -> Result<TensorId> {
        self.unique(name)?;
        let t = self.tensor(name, shape, Role::Param);
        self.tensors[t.0].init = init;
        Ok(t)
    }

    /// A persistent untrained buffer (running statistics) that starts as `init` says.
    pub fn state(&mut self, name: &str, shape: &[usize], init: Init) -> Result<TensorId> {
        self.unique(name)?;
        let t = self.tensor(name, shape, Role::State);
        self.tensors[t.0].init = init;
        Ok(t)
    }

    fn unique(&self, name: &str) -> Result<()> {
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("tensor name {name:?} is used twice");
        }
        Ok(())
    }

    pub fn info(&self, t: TensorId) -> &TensorInfo {
        &self.tensors[t.0]
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t.0].shape
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(TensorId)
    }

    /// Adds `op` reading `inputs` and producing activations of `output_shapes`.
    pub fn push(&mut self, op: impl Op + 'static, inputs: &[TensorId], output_shapes: &[Vec<usize>]) -> Vec<TensorId> {
        self.push_boxed(Box::new(op), inputs, output_shapes)
    }

    /// [`Graph::push`] for an op already boxed (a copy from another graph).
    pub fn push_boxed(&mut self, op: Box<dyn Op>, inputs: &[TensorId], output_shapes: &[Vec<usize>]) -> Vec<TensorId> {
        // Producers learn which taps of their outputs this op reads.
        for (i, t) in inputs.iter().enumerate() {
            let taps = op.taps_read(i);
            if let Some(producer) = self.nodes.iter_mut().rev().find(|n| n.outputs.contains(t)) {
                let output = producer.outputs.iter().position(|o| o == t).expect("found by output");
                producer.op.read_by(output, taps);
            }
        }
        let name = op.name();
        let outputs = output_shapes
            .iter()
            .enumerate()
            .map(|(i, s)| self.tensor(format!("{name}#{}.{i}", self.nodes.len()), s, Role::Activation))
            .collect();
        self.nodes.push(Node { op, inputs: inputs.to_vec(), outputs });
        self.nodes.last().unwrap().outputs.clone()
    }

    /// Parameters in graph order.
    pub fn params(&self) -> impl Iterator<Item = (TensorId, &TensorInfo)> {
        self.tensors.iter().enumerate().filter(|(_, t)| t.role == Role::Param).map(|(i, t)| (TensorId(i), t))
    }
}

/// Errors for shapes that an op cannot take, naming the op and both shapes.
pub(crate) fn shape_error(op: &str, what: &str, got: &[usize], want: &str) -> anyhow::Error {
    anyhow::anyhow!("{op}: {what} has shape {got:?}, expected {want}")
}
