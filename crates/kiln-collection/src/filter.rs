//! Payload filters: `{"field": value}` (equality) and `{"field": {"in": [values]}}`, all of
//! them required. Values are strings, numbers or booleans; a nested field is named with dots
//! (`"author.name"`). Checked once when the request is parsed, then matched per candidate.

use serde_json::Value;

use super::CollectionError;

/// One compiled payload filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    clauses: Vec<(Vec<String>, Vec<Value>)>,
}

const MAX_CLAUSES: usize = 64;
const MAX_VALUES: usize = 1024;

fn scalar(field: &str, value: &Value) -> Result<Value, CollectionError> {
    match value {
        Value::String(_) | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
        other => Err(CollectionError::Invalid(format!(
            "filter on '{field}': {} is not a string, number or boolean (use {{\"{field}\": value}} or \
             {{\"{field}\": {{\"in\": [values]}}}})",
            kind(other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Filter {
    /// Compiles a filter object; every mistake names the field.
    pub fn parse(filter: &Value) -> Result<Filter, CollectionError> {
        let Value::Object(fields) = filter else {
            return Err(CollectionError::Invalid(format!(
                "filter must be an object of field conditions, not {}",
                kind(filter)
            )));
        };
        if fields.len() > MAX_CLAUSES {
            return Err(CollectionError::Invalid(format!("filter has {} fields; at most {MAX_CLAUSES}", fields.len())));
        }
        let mut clauses = Vec::with_capacity(fields.len());
        for (field, condition) in fields {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(CollectionError::Invalid(format!("filter field '{field}' is not a field name")));
            }
            let path: Vec<String> = field.split('.').map(str::to_string).collect();
            let allowed = match condition {
                Value::Object(op) => {
                    let Some(values) = op.get("in") else {
                        let ops: Vec<&String> = op.keys().collect();
                        return Err(CollectionError::Invalid(format!(
                            "filter on '{field}': unknown operator {ops:?} (only \"in\")"
                        )));
                    };
                    if op.len() != 1 {
                        return Err(CollectionError::Invalid(format!("filter on '{field}': \"in\" stands alone")));
                    }
                    let Value::Array(values) = values else {
                        return Err(CollectionError::Invalid(format!(
                            "filter on '{field}': \"in\" takes an array, not {}",
                            kind(values)
                        )));
                    };
                    if values.is_empty() || values.len() > MAX_VALUES {
                        return Err(CollectionError::Invalid(format!(
                            "filter on '{field}': \"in\" takes 1 to {MAX_VALUES} values"
                        )));
                    }
                    values.iter().map(|v| scalar(field, v)).collect::<Result<Vec<_>, _>>()?
                }
                other => vec![scalar(field, other)?],
            };
            clauses.push((path, allowed));
        }
        Ok(Filter { clauses })
    }

    /// Whether a payload passes every clause (a point without the field fails it).
    pub fn matches(&self, payload: Option<&Value>) -> bool {
        let Some(payload) = payload else { return self.clauses.is_empty() };
        self.clauses.iter().all(|(path, allowed)| {
            let mut at = payload;
            for part in path {
                match at.get(part) {
                    Some(next) => at = next,
                    None => return false,
                }
            }
            allowed.iter().any(|v| same(v, at))
        })
    }
}

/// Equality of scalars; numbers compare by value (1 == 1.0).
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => want == got,
    }
}
