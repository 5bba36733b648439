//! Per-request limits, checked after decoding and before any model sees the request, the
//! same way for REST and gRPC.

use kiln_core::{Tensor, TensorData};

/// What one inference request may hold.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest request body (REST) or message (gRPC), in bytes.
    pub max_body_bytes: usize,
    /// Most elements in one input tensor.
    pub max_tensor_elements: usize,
    /// Most rows (the first dimension) in one input tensor.
    pub max_batch_rows: usize,
    /// Longest BYTES element (one string), in bytes.
    pub max_string_bytes: usize,
    /// Most input tensors in one request.
    pub max_inputs: usize,
    /// Largest payload of one collection point (its JSON text), in bytes.
    pub max_payload_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 64 * 1024 * 1024,
            max_tensor_elements: 16 * 1024 * 1024,
            max_batch_rows: 65_536,
            max_string_bytes: 1024 * 1024,
            max_inputs: 256,
            max_payload_bytes: 64 * 1024,
        }
    }
}

impl RequestLimits {
    /// Errs with a message naming the tensor, the limit and the flag that raises it.
    pub fn check(&self, inputs: &[Tensor]) -> Result<(), String> {
        if inputs.len() > self.max_inputs {
            return Err(format!("the request has {} inputs; at most {} are accepted", inputs.len(), self.max_inputs));
        }
        for t in inputs {
            let elements = t.data.len();
            if elements > self.max_tensor_elements {
                return Err(format!(
                    "input '{}' has {elements} elements; at most {} are accepted (--max-tensor-elements)",
                    t.name, self.max_tensor_elements
                ));
            }
            if let Some(&rows) = t.shape.first()
                && rows > self.max_batch_rows
            {
                return Err(format!(
                    "input '{}' has {rows} rows (first dimension); at most {} are accepted (--max-batch-rows)",
                    t.name, self.max_batch_rows
                ));
            }
            if let TensorData::Bytes(items) = &t.data
                && let Some((i, item)) = items.iter().enumerate().find(|(_, s)| s.len() > self.max_string_bytes)
            {
                return Err(format!(
                    "input '{}': element {i} is {} bytes long; at most {} are accepted (--max-string-bytes)",
                    t.name,
                    item.len(),
                    self.max_string_bytes
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_names_its_tensor_and_flag() {
        let limits =
            RequestLimits { max_tensor_elements: 4, max_batch_rows: 2, max_string_bytes: 3, ..Default::default() };
        let x = Tensor::new("x", vec![1, 5], TensorData::Fp32(vec![0.0; 5])).expect("tensor");
        assert!(limits.check(&[x]).unwrap_err().contains("input 'x' has 5 elements; at most 4"));
        let rows = Tensor::new("r", vec![3, 1], TensorData::Fp32(vec![0.0; 3])).expect("tensor");
        assert!(limits.check(&[rows]).unwrap_err().contains("--max-batch-rows"));
        let s = Tensor::new("s", vec![2], TensorData::Bytes(vec![b"ok".to_vec(), b"long".to_vec()])).expect("tensor");
        assert!(limits.check(&[s]).unwrap_err().contains("element 1 is 4 bytes long"));
        let fine = Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![0.0; 4])).expect("tensor");
        assert!(limits.check(&[fine]).is_ok());
    }
}
