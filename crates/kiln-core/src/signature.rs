use crate::{DataType, TensorLike};

/// One input or output as a model declares it. A dimension of `-1` is dynamic: any size
/// is accepted there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this declaration.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        self.shape.len() == shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || usize::try_from(want).is_ok_and(|w| w == got))
    }
}

/// The inputs and outputs of a model, in the model's own order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Why a request does not fit a model. Messages name the tensor and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("missing input '{name}': the model expects inputs {expected:?}")]
    MissingInput { name: String, expected: Vec<String> },
    #[error("unknown input '{name}': the model expects inputs {expected:?}")]
    UnknownInput { name: String, expected: Vec<String> },
    #[error("input '{name}' is given more than once")]
    DuplicateInput { name: String },
    #[error("input '{name}': expected datatype {expected}, got {got}")]
    WrongDatatype { name: String, expected: DataType, got: DataType },
    #[error("input '{name}': expected shape {expected:?} (-1 = any size), got {got:?}")]
    WrongShape { name: String, expected: Vec<i64>, got: Vec<usize> },
    #[error("unknown output '{name}': the model has outputs {available:?}")]
    UnknownOutput { name: String, available: Vec<String> },
    #[error("output '{name}' is requested more than once")]
    DuplicateOutput { name: String },
}

impl ModelSignature {
    /// Input names in model order.
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|s| s.name.clone()).collect()
    }

    /// Output names in model order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|s| s.name.clone()).collect()
    }

    /// Checks that `inputs` are exactly the model's inputs (each once, any order) with the
    /// declared datatypes and shapes that fit the declared ones.
    pub fn validate_inputs<T: TensorLike>(&self, inputs: &[T]) -> Result<(), ValidationError> {
        for (i, tensor) in inputs.iter().enumerate() {
            let name = tensor.tensor_name();
            if inputs[..i].iter().any(|t| t.tensor_name() == name) {
                return Err(ValidationError::DuplicateInput { name: name.to_string() });
            }
            let Some(spec) = self.inputs.iter().find(|s| s.name == name) else {
                return Err(ValidationError::UnknownInput { name: name.to_string(), expected: self.input_names() });
            };
            if spec.datatype != tensor.tensor_datatype() {
                return Err(ValidationError::WrongDatatype {
                    name: name.to_string(),
                    expected: spec.datatype,
                    got: tensor.tensor_datatype(),
                });
            }
            if !spec.accepts_shape(tensor.tensor_shape()) {
                return Err(ValidationError::WrongShape {
                    name: name.to_string(),
                    expected: spec.shape.clone(),
                    got: tensor.tensor_shape().to_vec(),
                });
            }
        }
        if let Some(missing) = self.inputs.iter().find(|s| !inputs.iter().any(|t| t.tensor_name() == s.name)) {
            return Err(ValidationError::MissingInput { name: missing.name.clone(), expected: self.input_names() });
        }
        Ok(())
    }

    /// Resolves the requested output names (all outputs, in model order, when none are
    /// named) after checking that each exists and is named once.
    pub fn resolve_outputs(&self, requested: &[String]) -> Result<Vec<String>, ValidationError> {
        if requested.is_empty() {
            return Ok(self.output_names());
        }
        for (i, name) in requested.iter().enumerate() {
            if requested[..i].contains(name) {
                return Err(ValidationError::DuplicateOutput { name: name.clone() });
            }
            if !self.outputs.iter().any(|s| &s.name == name) {
                return Err(ValidationError::UnknownOutput { name: name.clone(), available: self.output_names() });
            }
        }
        Ok(requested.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tensor, TensorData};

    fn signature() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorSpec { name: "x".into(), datatype: DataType::Fp32, shape: vec![-1, 3] },
                TensorSpec { name: "ids".into(), datatype: DataType::Int64, shape: vec![-1] },
            ],
            outputs: vec![
                TensorSpec { name: "y".into(), datatype: DataType::Fp32, shape: vec![-1, 2] },
                TensorSpec { name: "label".into(), datatype: DataType::Int64, shape: vec![-1] },
            ],
        }
    }

    fn x(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new("x", shape, TensorData::Fp32(vec![0.0; n])).expect("valid")
    }

    fn ids(n: usize) -> Tensor {
        Tensor::new("ids", vec![n], TensorData::Int64(vec![0; n])).expect("valid")
    }

    #[test]
    fn accepts_dynamic_batch() {
        signature().validate_inputs(&[ids(5), x(vec![5, 3])]).expect("valid");
    }

    #[test]
    fn names_what_is_wrong() {
        let sig = signature();
        let err = sig.validate_inputs(&[x(vec![2, 4]), ids(2)]).unwrap_err();
        assert_eq!(err.to_string(), "input 'x': expected shape [-1, 3] (-1 = any size), got [2, 4]");
        let err = sig.validate_inputs(&[x(vec![2, 3, 1]), ids(2)]).unwrap_err();
        assert!(matches!(err, ValidationError::WrongShape { .. }));
        let err = sig.validate_inputs(&[x(vec![2, 3])]).unwrap_err();
        assert_eq!(err.to_string(), "missing input 'ids': the model expects inputs [\"x\", \"ids\"]");
        let wrong = Tensor::new("ids", vec![2], TensorData::Int32(vec![0; 2])).expect("valid");
        let err = sig.validate_inputs(&[x(vec![2, 3]), wrong]).unwrap_err();
        assert_eq!(err.to_string(), "input 'ids': expected datatype INT64, got INT32");
        let err = sig.validate_inputs(&[x(vec![2, 3]), x(vec![2, 3])]).unwrap_err();
        assert_eq!(err, ValidationError::DuplicateInput { name: "x".into() });
        let z = Tensor::new("z", vec![1], TensorData::Bool(vec![true])).expect("valid");
        let err = sig.validate_inputs(&[z]).unwrap_err();
        assert!(matches!(err, ValidationError::UnknownInput { .. }));
    }

    #[test]
    fn outputs_resolve() {
        let sig = signature();
        assert_eq!(sig.resolve_outputs(&[]).expect("ok"), vec!["y", "label"]);
        assert_eq!(sig.resolve_outputs(&["label".into()]).expect("ok"), vec!["label"]);
        let err = sig.resolve_outputs(&["nope".into()]).unwrap_err();
        assert_eq!(err.to_string(), "unknown output 'nope': the model has outputs [\"y\", \"label\"]");
        let err = sig.resolve_outputs(&["y".into(), "y".into()]).unwrap_err();
        assert!(matches!(err, ValidationError::DuplicateOutput { .. }));
    }
}
