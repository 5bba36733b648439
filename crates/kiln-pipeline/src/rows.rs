//! Row plumbing for conditional steps and constant fallbacks: which rows a predicate selects,
//! taking those rows out of a tensor and putting a step's answers back among filler rows.

use crate::error::StepError;
use kiln_core::{DataType, Tensor, TensorData, TensorSpec};
use serde::Deserialize;

/// A constant a fallback answers with, repeated for every element of the output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Constant {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// One value per row: `true` where the predicate selects the row. The predicate is BOOL or an
/// integer type (non-zero = true, what `threshold` produces), shaped `[N]` or `[N, 1]`.
pub fn selected_rows(pred: &Tensor, negate: bool) -> Result<Vec<bool>, StepError> {
    if !matches!(pred.shape.as_slice(), [_] | [_, 1]) {
        return Err(StepError::Input(format!(
            "the condition '{}' must be [N] or [N, 1], not {:?}",
            pred.name, pred.shape
        )));
    }
    let truth: Vec<bool> = match &pred.data {
        TensorData::Bool(v) => v.clone(),
        TensorData::Int64(v) => v.iter().map(|&x| x != 0).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| x != 0).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| x != 0).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| x != 0).collect(),
        other => {
            return Err(StepError::Input(format!(
                "the condition '{}' must be BOOL or an integer, not {}",
                pred.name,
                other.datatype()
            )));
        }
    };
    Ok(truth.into_iter().map(|t| t != negate).collect())
}

/// Whether a datatype can be a condition (load time).
pub fn is_condition(spec: &TensorSpec) -> bool {
    matches!(spec.datatype, DataType::Bool | DataType::Int64 | DataType::Int32 | DataType::Uint8 | DataType::Int8)
        && matches!(spec.shape.as_slice(), [_] | [_, 1])
}

fn row_width(t: &Tensor) -> usize {
    t.shape.iter().skip(1).product()
}

/// The selected rows of `t`, in order.
pub fn take_rows(t: &Tensor, mask: &[bool]) -> Result<Tensor, StepError> {
    let rows = t.shape.first().copied().unwrap_or(0);
    if rows != mask.len() {
        return Err(StepError::Input(format!("'{}' has {rows} rows, but the condition has {}", t.name, mask.len())));
    }
    let w = row_width(t);
    let parts: Vec<TensorData> =
        mask.iter().enumerate().filter(|(_, keep)| **keep).map(|(r, _)| t.data.slice(r * w, (r + 1) * w)).collect();
    let kept = parts.len();
    let data =
        TensorData::concat(&parts.iter().collect::<Vec<_>>()).unwrap_or_else(|| TensorData::zeros(t.datatype(), 0));
    let mut shape = t.shape.clone();
    shape[0] = kept;
    Tensor::new(t.name.clone(), shape, data).map_err(StepError::from)
}

/// The full-height output of a step that ran on the selected rows only: its rows where the
/// mask is true, filler (zeros / empty strings) elsewhere. `spec` gives the row shape when the
/// step did not run at all (`part` is `None`).
pub fn put_rows(part: Option<&Tensor>, spec: &TensorSpec, mask: &[bool]) -> Result<Tensor, StepError> {
    let mut shape: Vec<usize> = match part {
        Some(p) => p.shape.clone(),
        None => std::iter::once(Ok(0))
            .chain(spec.shape.iter().skip(1).map(|&d| {
                usize::try_from(d).map_err(|_| {
                    StepError::Pipeline(format!("'{}' has no fixed row shape {:?}", spec.name, spec.shape))
                })
            }))
            .collect::<Result<_, StepError>>()?,
    };
    let w: usize = shape.iter().skip(1).product();
    let blank = TensorData::zeros(spec.datatype, w);
    let mut next = 0;
    let mut parts = Vec::with_capacity(mask.len());
    for &keep in mask {
        match (keep, part) {
            (true, Some(p)) => {
                if (next + 1) * w > p.data.len() {
                    return Err(StepError::Pipeline(format!(
                        "'{}' has fewer rows than the condition selects",
                        spec.name
                    )));
                }
                parts.push(p.data.slice(next * w, (next + 1) * w));
                next += 1;
            }
            _ => parts.push(blank.clone()),
        }
    }
    let data =
        TensorData::concat(&parts.iter().collect::<Vec<_>>()).unwrap_or_else(|| TensorData::zeros(spec.datatype, 0));
    shape[0] = mask.len();
    Tensor::new(part.map_or_else(|| spec.name.clone(), |p| p.name.clone()), shape, data).map_err(StepError::from)
}

/// A constant output for `rows` rows shaped like `spec` (whose non-first dimensions are fixed).
pub fn constant(spec: &TensorSpec, value: &Constant, rows: usize) -> Result<Tensor, StepError> {
    let mut shape = vec![rows];
    for &d in spec.shape.iter().skip(1) {
        shape
            .push(usize::try_from(d).map_err(|_| {
                StepError::Pipeline(format!("'{}' has no fixed row shape {:?}", spec.name, spec.shape))
            })?);
    }
    let n: usize = shape.iter().product();
    let bad = || {
        StepError::Pipeline(format!("the constant {value:?} does not fit output '{}' ({})", spec.name, spec.datatype))
    };
    let data = match (spec.datatype, value) {
        (DataType::Bytes, Constant::Text(s)) => TensorData::Bytes(vec![s.as_bytes().to_vec(); n]),
        (DataType::Bool, Constant::Bool(b)) => TensorData::Bool(vec![*b; n]),
        (DataType::Fp32, Constant::Number(x)) => TensorData::Fp32(vec![*x as f32; n]),
        (DataType::Fp64, Constant::Number(x)) => TensorData::Fp64(vec![*x; n]),
        (DataType::Fp16, Constant::Number(x)) => TensorData::Fp16(vec![half::f16::from_f64(*x); n]),
        (dt, Constant::Number(x)) if x.fract() == 0.0 => {
            let v = *x as i64;
            match dt {
                DataType::Int64 => TensorData::Int64(vec![v; n]),
                DataType::Int32 => TensorData::Int32(vec![i32::try_from(v).map_err(|_| bad())?; n]),
                DataType::Int16 => TensorData::Int16(vec![i16::try_from(v).map_err(|_| bad())?; n]),
                DataType::Int8 => TensorData::Int8(vec![i8::try_from(v).map_err(|_| bad())?; n]),
                DataType::Uint64 => TensorData::Uint64(vec![u64::try_from(v).map_err(|_| bad())?; n]),
                DataType::Uint32 => TensorData::Uint32(vec![u32::try_from(v).map_err(|_| bad())?; n]),
                DataType::Uint16 => TensorData::Uint16(vec![u16::try_from(v).map_err(|_| bad())?; n]),
                DataType::Uint8 => TensorData::Uint8(vec![u8::try_from(v).map_err(|_| bad())?; n]),
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    Tensor::new(spec.name.clone(), shape, data).map_err(StepError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_put_back() {
        let t = Tensor::new("x", vec![3, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).expect("t");
        let pred = Tensor::new("c", vec![3], TensorData::Int64(vec![1, 0, 1])).expect("t");
        let mask = selected_rows(&pred, false).expect("mask");
        let kept = take_rows(&t, &mask).expect("take");
        assert_eq!(kept.shape, vec![2, 2]);
        assert_eq!(kept.data, TensorData::Fp32(vec![1.0, 2.0, 5.0, 6.0]));
        let spec = TensorSpec { name: "x".into(), datatype: DataType::Fp32, shape: vec![-1, 2] };
        let back = put_rows(Some(&kept), &spec, &mask).expect("put");
        assert_eq!(back.data, TensorData::Fp32(vec![1.0, 2.0, 0.0, 0.0, 5.0, 6.0]));
        let none = put_rows(None, &spec, &[false, false]).expect("put");
        assert_eq!((none.shape, none.data), (vec![2, 2], TensorData::Fp32(vec![0.0; 4])));
        assert_eq!(selected_rows(&pred, true).expect("mask"), vec![false, true, false]);
    }

    #[test]
    fn constants_fit_their_outputs() {
        let spec = TensorSpec { name: "label".into(), datatype: DataType::Int64, shape: vec![-1] };
        assert_eq!(constant(&spec, &Constant::Number(3.0), 2).expect("c").data, TensorData::Int64(vec![3, 3]));
        let err = constant(&spec, &Constant::Text("x".into()), 2).unwrap_err();
        assert!(matches!(err, StepError::Pipeline(_)) && err.to_string().contains("does not fit"), "{err}");
        let s = TensorSpec { name: "t".into(), datatype: DataType::Bytes, shape: vec![-1] };
        assert_eq!(
            constant(&s, &Constant::Text("hi".into()), 1).expect("c").data,
            TensorData::Bytes(vec![b"hi".to_vec()])
        );
    }
}
