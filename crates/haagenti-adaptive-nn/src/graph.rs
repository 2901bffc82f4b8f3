//! Reading a model's weights out of an ONNX graph: initializers by name with a count of every
//! read, and the walks that find the constants the exporter left unnamed.

use std::collections::{HashMap, VecDeque};

use crate::onnx::{Attribute, Initializer, Node, OnnxModel, TensorData};
use crate::{NnError, Result};

/// How far back a walk from a convolution looks for its group norm (nodes visited).
const WALK_LIMIT: usize = 32;

/// A view of an ONNX model for building a network from it: initializer reads are counted, so a
/// test can show that every weight is used exactly once.
#[derive(Debug)]
pub struct GraphReader<'a> {
    model: &'a OnnxModel,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    uses: HashMap<String, usize>,
}

/// A group norm's constants as found in the graph.
#[derive(Clone, Debug)]
pub(crate) struct FoundGroupNorm {
    pub groups: usize,
    pub epsilon: f32,
    pub group_scale: Vec<f32>,
    pub group_bias: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl<'a> GraphReader<'a> {
    /// A reader over `model`.
    pub fn new(model: &'a OnnxModel) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in model.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
            for input in &n.inputs {
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        Self {
            model,
            producer,
            consumers,
            uses: HashMap::new(),
        }
    }

    /// How often each initializer was read.
    pub fn uses(&self) -> &HashMap<String, usize> {
        &self.uses
    }

    /// The model read.
    pub fn model(&self) -> &'a OnnxModel {
        self.model
    }

    fn initializer(&self, name: &str) -> Option<&'a Initializer> {
        self.model.initializers.get(name)
    }

    /// Reads the float initializer `name`: its shape and values.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when there is none or it is not float.
    pub fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let init = self
            .initializer(name)
            .ok_or_else(|| NnError::Model(format!("the graph has no initializer {name}")))?;
        let TensorData::F32(values) = &init.data else {
            return Err(NnError::Model(format!("initializer {name} is not float")));
        };
        *self.uses.entry(name.to_owned()).or_default() += 1;
        Ok((init.dims.clone(), values.clone()))
    }

    /// Reads the int64 initializer `name`.
    fn take_i64(&mut self, name: &str) -> Result<Vec<i64>> {
        let init = self
            .initializer(name)
            .ok_or_else(|| NnError::Model(format!("the graph has no initializer {name}")))?;
        let TensorData::I64(values) = &init.data else {
            return Err(NnError::Model(format!("initializer {name} is not int64")));
        };
        *self.uses.entry(name.to_owned()).or_default() += 1;
        Ok(values.clone())
    }

    /// Reads a scalar float initializer.
    pub(crate) fn take_scalar(&mut self, name: &str) -> Result<f32> {
        let (_, v) = self.take(name)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(NnError::Model(format!(
                "initializer {name} is not a scalar"
            ))),
        }
    }

    fn node(&self, i: usize) -> &'a Node {
        &self.model.nodes[i]
    }

    fn produced_by(&self, value: &str) -> Option<&'a Node> {
        self.producer.get(value).map(|&i| self.node(i))
    }

    /// The nodes that read `value`.
    pub(crate) fn consumers_of(&self, value: &str) -> impl Iterator<Item = &'a Node> + '_ {
        self.consumers
            .get(value)
            .into_iter()
            .flatten()
            .map(|&i| self.node(i))
    }

    /// The only consumer of `value` with operator `op`.
    pub(crate) fn consumer(&self, value: &str, op: &str) -> Result<&'a Node> {
        let mut it = self.consumers_of(value).filter(|n| n.op_type == op);
        match (it.next(), it.next()) {
            (Some(n), None) => Ok(n),
            _ => Err(NnError::Model(format!("expected one {op} reading {value}"))),
        }
    }

    /// The input of `node` that is an initializer (the constant operand of a binary op).
    pub(crate) fn constant_input(&self, node: &Node) -> Result<&'a str> {
        node.inputs
            .iter()
            .find(|i| self.model.initializers.contains_key(i.as_str()))
            .map(|s| {
                // The name lives in the model; look it up there to get the model's lifetime.
                self.model
                    .initializers
                    .get_key_value(s.as_str())
                    .map(|(k, _)| k.as_str())
                    .unwrap_or_default()
            })
            .ok_or_else(|| {
                NnError::Model(format!(
                    "{} {} has no constant input",
                    node.op_type, node.name
                ))
            })
    }

    /// The node whose second input is the weight `weight` (a `Conv` or `Gemm`).
    pub(crate) fn node_with_weight(&self, weight: &str) -> Result<&'a Node> {
        self.consumers_of(weight)
            .find(|n| n.inputs.get(1).is_some_and(|w| w == weight))
            .ok_or_else(|| NnError::Model(format!("no node reads the weight {weight}")))
    }

    /// The producer of `value` if it has operator `op`.
    pub(crate) fn producer_op(&self, value: &str, op: &str) -> Option<&'a Node> {
        self.produced_by(value).filter(|n| n.op_type == op)
    }

    /// The group norm nearest before the data input of the node reading `weight`, found by
    /// walking back through the graph: an `Add(Mul(Reshape(InstanceNormalization(Reshape(x))),
    /// gamma), beta)` with `gamma` and `beta` initializers of shape `[C, 1, 1]`. Reads gamma and
    /// beta (counted once each) and the shared InstanceNormalization constants.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when no such pattern is within reach.
    pub(crate) fn group_norm_before(&mut self, weight: &str) -> Result<FoundGroupNorm> {
        let start = self.node_with_weight(weight)?.input(0)?.to_owned();
        let mut queue = VecDeque::from([start]);
        let mut visited = 0;
        while let Some(value) = queue.pop_front() {
            visited += 1;
            if visited > WALK_LIMIT {
                break;
            }
            let Some(node) = self.produced_by(&value) else {
                continue;
            };
            if let Some(found) = self.match_group_norm(node)? {
                return Ok(found);
            }
            for input in &node.inputs {
                if !input.is_empty() && !self.model.initializers.contains_key(input.as_str()) {
                    queue.push_back(input.clone());
                }
            }
        }
        Err(NnError::Model(format!(
            "no group norm found before {weight}"
        )))
    }

    fn match_group_norm(&mut self, add: &'a Node) -> Result<Option<FoundGroupNorm>> {
        if add.op_type != "Add" || add.inputs.len() != 2 {
            return Ok(None);
        }
        let affine = |r: &Self, name: &str| {
            r.initializer(name)
                .is_some_and(|i| i.dims.len() == 3 && i.dims[1] == 1 && i.dims[2] == 1)
        };
        let Some(beta_name) = add.inputs.iter().find(|i| affine(self, i)) else {
            return Ok(None);
        };
        let Some(mul) = add.inputs.iter().find_map(|i| self.producer_op(i, "Mul")) else {
            return Ok(None);
        };
        let Some(gamma_name) = mul.inputs.iter().find(|i| affine(self, i)) else {
            return Ok(None);
        };
        let Some(norm) = mul
            .inputs
            .iter()
            .find_map(|i| self.producer_op(i, "Reshape"))
            .and_then(|r| self.producer_op(r.inputs.first()?, "InstanceNormalization"))
        else {
            return Ok(None);
        };
        let grouping = self.producer_op(norm.input(0)?, "Reshape").ok_or_else(|| {
            NnError::Model("InstanceNormalization without a group reshape".into())
        })?;
        let shape = self.take_i64(grouping.input(1)?)?;
        let groups = match shape.as_slice() {
            [0, g, -1] if *g > 0 => *g as usize,
            other => {
                return Err(NnError::Model(format!("group reshape to {other:?}")));
            }
        };
        let epsilon = match norm.attributes.get("epsilon") {
            Some(Attribute::Float(e)) => *e,
            _ => 1e-5,
        };
        let (_, group_scale) = self.take(norm.input(1)?)?;
        let (_, group_bias) = self.take(norm.input(2)?)?;
        let (_, gamma) = self.take(gamma_name)?;
        let (_, beta) = self.take(beta_name)?;
        if group_scale.len() != groups || group_bias.len() != groups || gamma.len() != beta.len() {
            return Err(NnError::Model(format!(
                "group norm with {groups} groups and constants of {}, {}, {}, {}",
                group_scale.len(),
                group_bias.len(),
                gamma.len(),
                beta.len()
            )));
        }
        Ok(Some(FoundGroupNorm {
            groups,
            epsilon,
            group_scale,
            group_bias,
            gamma,
            beta,
        }))
    }
}
