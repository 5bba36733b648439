//! An LLM's answers as a step's tensors: the text, and the declared fields of a JSON answer
//! (remote LLM steps and local ones alike), and the schema those fields hold the answer to.

use kiln_core::{DataType, Tensor, TensorData};
use kiln_serving::EngineError;

use crate::error::StepError;
use serde::Deserialize;

/// A field the LLM's JSON answer must carry, turned into a tensor `[N]`. A local LLM is held to
/// the field's schema by constrained decoding (the bounds keep a small model from running on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonField {
    pub name: String,
    pub datatype: DataType,
    /// The values a BYTES field may take.
    #[serde(rename = "enum")]
    pub choices: Option<Vec<String>>,
    /// Most characters of a BYTES field.
    pub max_length: Option<u64>,
    /// Bounds of a number field.
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
}

impl JsonField {
    /// The field's JSON schema.
    fn schema(&self) -> Result<serde_json::Value, String> {
        use serde_json::json;
        let mut schema = match self.datatype {
            DataType::Bytes => json!({"type": "string"}),
            DataType::Bool => json!({"type": "boolean"}),
            DataType::Int32 | DataType::Int64 => json!({"type": "integer"}),
            DataType::Fp32 | DataType::Fp64 => json!({"type": "number"}),
            other => {
                return Err(format!(
                    "field '{}': JSON outputs are BYTES, BOOL, FP32, FP64, INT32 or INT64, not {other}",
                    self.name
                ));
            }
        };
        let is_text = self.datatype == DataType::Bytes;
        let is_number = !is_text && self.datatype != DataType::Bool;
        if let Some(choices) = &self.choices {
            if !is_text || choices.is_empty() {
                return Err(format!("field '{}': 'enum' lists the strings a BYTES field may take", self.name));
            }
            schema["enum"] = json!(choices);
        }
        if let Some(n) = self.max_length {
            if !is_text {
                return Err(format!("field '{}': 'max_length' is for BYTES fields", self.name));
            }
            schema["maxLength"] = json!(n);
        }
        for (key, bound) in [("minimum", self.minimum), ("maximum", self.maximum)] {
            if let Some(b) = bound {
                if !is_number {
                    return Err(format!("field '{}': '{key}' is for number fields", self.name));
                }
                schema[key] = json!(b);
            }
        }
        Ok(schema)
    }
}

/// The JSON schema of an answer with these fields: an object with exactly them, in order.
pub(crate) fn answer_schema(fields: &[JsonField]) -> Result<serde_json::Value, String> {
    let mut properties = serde_json::Map::new();
    for f in fields {
        properties.insert(f.name.clone(), f.schema()?);
    }
    let required: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    Ok(serde_json::json!({"type": "object", "properties": properties, "required": required,
                          "additionalProperties": false}))
}

/// An LLM step's tensors from each row's answer text and JSON field values.
pub(crate) fn llm_outputs(
    fields: &[JsonField],
    answers: Vec<(String, Vec<serde_json::Value>)>,
    describe: &str,
) -> Result<Vec<Tensor>, EngineError> {
    let rows = answers.len();
    let mut text = Vec::with_capacity(rows);
    let mut columns: Vec<Vec<serde_json::Value>> = vec![Vec::with_capacity(rows); fields.len()];
    for (t, values) in answers {
        text.push(t.into_bytes());
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let mut out = vec![
        Tensor::new("text", vec![rows], TensorData::Bytes(text)).map_err(|e| EngineError::Backend(e.to_string()))?,
    ];
    for (field, column) in fields.iter().zip(columns) {
        let data = json_column(field, &column).map_err(|m| EngineError::Unavailable(format!("{describe}: {m}")))?;
        out.push(Tensor::new(field.name.clone(), vec![rows], data).map_err(|e| EngineError::Backend(e.to_string()))?);
    }
    Ok(out)
}

/// The declared fields of an LLM's JSON answer.
pub(crate) fn parse_fields(
    text: &str,
    fields: &[JsonField],
) -> Result<Vec<serde_json::Value>, kiln_protocol::client::ClientError> {
    use kiln_protocol::client::ClientError::Malformed;
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    let object: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        Malformed(format!("the LLM's answer is not JSON ({e}): {}", text.chars().take(200).collect::<String>()))
    })?;
    fields
        .iter()
        .map(|f| {
            let value = object.get(&f.name).cloned().ok_or_else(|| {
                Malformed(format!(
                    "the LLM's JSON has no field '{}': {}",
                    f.name,
                    text.chars().take(200).collect::<String>()
                ))
            })?;
            let ok = match f.datatype {
                DataType::Bytes => value.is_string() || value.is_number() || value.is_boolean(),
                DataType::Bool => value.is_boolean(),
                _ => value.is_number(),
            };
            if ok {
                Ok(value)
            } else {
                Err(Malformed(format!("the LLM's JSON field '{}' is {value}, not a {}", f.name, f.datatype)))
            }
        })
        .collect()
}

pub(crate) fn json_column(field: &JsonField, column: &[serde_json::Value]) -> Result<TensorData, StepError> {
    let num = |v: &serde_json::Value| {
        v.as_f64().ok_or_else(|| StepError::Input(format!("field '{}': {v} is not a number", field.name)))
    };
    Ok(match field.datatype {
        DataType::Bytes => TensorData::Bytes(
            column.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string).into_bytes()).collect(),
        ),
        DataType::Bool => TensorData::Bool(column.iter().map(|v| v.as_bool().unwrap_or(false)).collect()),
        DataType::Fp32 => TensorData::Fp32(column.iter().map(|v| num(v).map(|x| x as f32)).collect::<Result<_, _>>()?),
        DataType::Fp64 => TensorData::Fp64(column.iter().map(num).collect::<Result<_, _>>()?),
        DataType::Int64 => {
            TensorData::Int64(column.iter().map(|v| num(v).map(|x| x as i64)).collect::<Result<_, _>>()?)
        }
        DataType::Int32 => {
            TensorData::Int32(column.iter().map(|v| num(v).map(|x| x as i32)).collect::<Result<_, _>>()?)
        }
        other => {
            return Err(StepError::Input(format!(
                "field '{}': JSON outputs are BYTES, BOOL, FP32, FP64, INT32 or INT64, not {other}",
                field.name
            )));
        }
    })
}
