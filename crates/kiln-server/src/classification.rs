//! The KServe v2 / Triton classification extension: a requested output with the parameter
//! `classification: N` (tritonclient's `class_count`) comes back as the top `N` classes of each
//! row, BYTES `"value:index"` — `"value:index:label"` when the model has labels for that output
//! — highest first, instead of the raw scores.

use kiln_core::{Tensor, TensorData};

use crate::error::ApiError;

/// One output to answer as classes: its name and how many per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classify {
    pub output: String,
    pub count: usize,
}

/// A `classification` parameter's value: a positive integer.
pub fn count(output: &str, value: Option<i128>) -> Result<usize, ApiError> {
    match value {
        Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(ApiError::bad_request(format!(
            "output '{output}': parameter 'classification' must be a positive integer (classes per row)"
        ))),
    }
}

/// Triton writes floating values with C's `%f` (six decimals) and integers as they are.
fn values(output: &str, data: &TensorData) -> Result<(Vec<f64>, Vec<String>), ApiError> {
    fn num<T: Copy + Into<f64> + ToString>(v: &[T]) -> (Vec<f64>, Vec<String>) {
        (v.iter().map(|&x| x.into()).collect(), v.iter().map(ToString::to_string).collect())
    }
    fn float<T: Copy + Into<f64>>(v: &[T]) -> (Vec<f64>, Vec<String>) {
        let f: Vec<f64> = v.iter().map(|&x| x.into()).collect();
        let text = f.iter().map(|x| format!("{x:.6}")).collect();
        (f, text)
    }
    Ok(match data {
        TensorData::Fp32(v) => float(v),
        TensorData::Fp64(v) => float(v),
        TensorData::Fp16(v) => float(&v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::Int8(v) => num(v),
        TensorData::Int16(v) => num(v),
        TensorData::Int32(v) => num(v),
        TensorData::Uint8(v) => num(v),
        TensorData::Uint16(v) => num(v),
        TensorData::Uint32(v) => num(v),
        TensorData::Int64(v) => (v.iter().map(|&x| x as f64).collect(), v.iter().map(ToString::to_string).collect()),
        TensorData::Uint64(v) => (v.iter().map(|&x| x as f64).collect(), v.iter().map(ToString::to_string).collect()),
        TensorData::Bool(_) | TensorData::Bytes(_) => {
            return Err(ApiError::bad_request(format!(
                "output '{output}' is {}; classification needs numeric scores",
                data.datatype().as_str()
            )));
        }
    })
}

/// Replaces each output named in `wanted` by its top classes. A rank-1 output is one row;
/// otherwise the first dimension is the rows and the rest of each row its classes.
pub fn apply(
    outputs: &mut [Tensor],
    wanted: &[Classify],
    labels: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<(), ApiError> {
    for classify in wanted {
        let Some(tensor) = outputs.iter_mut().find(|t| t.name == classify.output) else { continue };
        let (scores, texts) = values(&tensor.name, &tensor.data)?;
        let (rows, per_row) = match tensor.shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n),
            [rows, ..] => (*rows, tensor.shape[1..].iter().product()),
        };
        let top = classify.count.min(per_row);
        let names = labels.get(&tensor.name);
        let mut out = Vec::with_capacity(rows * top);
        for row in 0..rows {
            let start = row * per_row;
            let mut order: Vec<usize> = (0..per_row).collect();
            // Highest first; equal scores keep class order (NaN last).
            order.sort_by(|&a, &b| {
                let (x, y) = (scores[start + a], scores[start + b]);
                y.partial_cmp(&x).unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
            });
            for &class in &order[..top] {
                let mut entry = format!("{}:{class}", texts[start + class]);
                if let Some(label) = names.and_then(|n| n.get(class)) {
                    entry.push(':');
                    entry.push_str(label);
                }
                out.push(entry.into_bytes());
            }
        }
        let shape = if tensor.shape.len() <= 1 { vec![top] } else { vec![rows, top] };
        *tensor = Tensor::new(tensor.name.clone(), shape, TensorData::Bytes(out))
            .map_err(|e| ApiError::new(crate::error::Kind::Internal, e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(t: &Tensor) -> Vec<String> {
        match &t.data {
            TensorData::Bytes(v) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
            other => panic!("not BYTES: {other:?}"),
        }
    }

    #[test]
    fn top_classes_per_row_with_and_without_labels() {
        let scores = TensorData::Fp32(vec![0.1, 0.7, 0.2, 0.5, 0.25, 0.25]);
        let mut outputs = vec![
            Tensor::new("probabilities", vec![2, 3], scores.clone()).expect("tensor"),
            Tensor::new("raw", vec![3], TensorData::Int64(vec![3, 9, 1])).expect("tensor"),
        ];
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("probabilities".to_string(), vec!["a".to_string(), "b".into(), "c".into()]);
        let wanted =
            vec![Classify { output: "probabilities".into(), count: 2 }, Classify { output: "raw".into(), count: 9 }];
        apply(&mut outputs, &wanted, &labels).expect("classified");
        assert_eq!(outputs[0].shape, vec![2, 2]);
        assert_eq!(texts(&outputs[0]), ["0.700000:1:b", "0.200000:2:c", "0.500000:0:a", "0.250000:1:b"]);
        assert_eq!(outputs[1].shape, vec![3]);
        assert_eq!(texts(&outputs[1]), ["9:1", "3:0", "1:2"]);
    }

    #[test]
    fn bad_counts_and_non_numeric_outputs_are_refused() {
        assert_eq!(count("y", Some(3)).expect("ok"), 3);
        for bad in [None, Some(0), Some(-2)] {
            let e = count("y", bad).expect_err("refused");
            assert!(e.message.contains("output 'y': parameter 'classification' must be a positive integer"));
        }
        let mut outputs = vec![Tensor::new("label", vec![1], TensorData::Bytes(vec![b"x".to_vec()])).expect("t")];
        let e = apply(&mut outputs, &[Classify { output: "label".into(), count: 1 }], &Default::default())
            .expect_err("refused");
        assert_eq!(e.message, "output 'label' is BYTES; classification needs numeric scores");
    }
}
