//! `kiln verify`: the Rust side of the parity check that `kiln.export` prepares (the same
//! comparison `kiln.verify` does in Python), so a team's CI can run it without Python.

use std::path::Path;

use anyhow::{Context, Result, bail};
use kiln_core::{ModelInstance, Tensor, TensorData};
use kiln_engine::repository;
use serde_json::{Value, json};

fn tensor(name: &str, spec: &Value) -> Result<Tensor> {
    let shape: Vec<usize> = serde_json::from_value(spec["shape"].clone()).context("fixture: shape")?;
    let data = spec["data"].as_array().with_context(|| format!("fixture: '{name}' has no data"))?;
    // kiln.export writes NaN as null (JSON has no NaN).
    let num = |v: &Value| {
        if v.is_null() {
            Ok(f64::NAN)
        } else {
            v.as_f64().with_context(|| format!("fixture: '{name}' holds a non-number"))
        }
    };
    let int = |v: &Value| v.as_i64().with_context(|| format!("fixture: '{name}' holds a non-integer"));
    let values = match spec["dtype"].as_str().unwrap_or("float32") {
        "float32" => TensorData::Fp32(data.iter().map(|v| num(v).map(|x| x as f32)).collect::<Result<_>>()?),
        "float64" => TensorData::Fp64(data.iter().map(num).collect::<Result<_>>()?),
        "int64" => TensorData::Int64(data.iter().map(int).collect::<Result<_>>()?),
        "int32" => TensorData::Int32(data.iter().map(|v| int(v).map(|x| x as i32)).collect::<Result<_>>()?),
        "bool" => TensorData::Bool(data.iter().map(|v| v.as_bool().unwrap_or(false)).collect()),
        "object" | "str" => {
            TensorData::Bytes(data.iter().map(|v| v.as_str().unwrap_or_default().as_bytes().to_vec()).collect())
        }
        other => bail!("fixture: '{name}' has dtype {other}, which kiln verify does not read"),
    };
    Tensor::new(name, shape, values).map_err(anyhow::Error::msg)
}

fn as_f64(data: &TensorData) -> Option<Vec<f64>> {
    Some(match data {
        TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        TensorData::Fp64(v) => v.clone(),
        TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        _ => return None,
    })
}

fn as_text(data: &TensorData) -> Vec<String> {
    match data {
        TensorData::Bytes(v) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
        TensorData::Int64(v) => v.iter().map(ToString::to_string).collect(),
        TensorData::Int32(v) => v.iter().map(ToString::to_string).collect(),
        other => as_f64(other).unwrap_or_default().iter().map(ToString::to_string).collect(),
    }
}

pub fn run(
    onnxruntime: Option<&Path>,
    model: &Path,
    version: Option<u64>,
    tolerance: Option<f64>,
    as_json: bool,
) -> Result<()> {
    crate::start_runtime(onnxruntime)?;
    let mut loaded = repository::prepare_path(model, version, |_| {})?;
    let fixture_path = model.join(loaded.version.to_string()).join("parity.json");
    let text = std::fs::read_to_string(&fixture_path)
        .with_context(|| format!("cannot read {} (written by kiln.export)", fixture_path.display()))?;
    let fixture: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", fixture_path.display()))?;
    let tol = tolerance.or_else(|| fixture["tolerance"].as_f64()).unwrap_or(1e-5);
    let inputs = fixture["inputs"]
        .as_object()
        .context("fixture: no inputs")?
        .iter()
        .map(|(name, spec)| tensor(name, spec))
        .collect::<Result<Vec<_>>>()?;
    let expected = fixture["expected"].as_object().context("fixture: no expected outputs")?;
    let names: Vec<String> = expected.keys().cloned().collect();
    loaded.signature.validate_inputs(&inputs)?;
    let instance: &mut Box<dyn ModelInstance> = loaded.instances.first_mut().context("no instance")?;
    let outputs = instance.run(&inputs, &names)?;
    let mut ok = true;
    let mut report = serde_json::Map::new();
    for (out, (name, want)) in outputs.iter().zip(expected) {
        let want_tensor = tensor(name, want)?;
        let entry = if want["kind"] == "labels" {
            let (got, exp) = (as_text(&out.data), as_text(&want_tensor.data));
            let mismatches = got.iter().zip(&exp).filter(|(a, b)| a != b).count() + got.len().abs_diff(exp.len());
            ok &= mismatches == 0;
            json!({"kind": "labels", "mismatches": mismatches, "agreement": 1.0 - mismatches as f64 / exp.len().max(1) as f64, "ok": mismatches == 0})
        } else {
            let got = as_f64(&out.data).with_context(|| format!("output '{name}' is not numeric"))?;
            let exp = as_f64(&want_tensor.data).with_context(|| format!("fixture '{name}' is not numeric"))?;
            if got.len() != exp.len() {
                bail!("output '{name}' has {} values, the fixture {}", got.len(), exp.len());
            }
            let abs = got.iter().zip(&exp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            // Absolute for values up to 1 (probabilities), relative beyond (as kiln.verify).
            let rel = got.iter().zip(&exp).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max);
            ok &= rel <= tol;
            json!({"kind": "values", "max_abs_diff": abs, "max_rel_diff": rel, "ok": rel <= tol})
        };
        report.insert(name.clone(), entry);
    }
    let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
    let doc = json!({"model": loaded.name, "version": loaded.version, "rows": rows, "tolerance": tol, "ok": ok, "outputs": report});
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{} v{}: {} rows, tolerance {tol:e}", loaded.name, loaded.version, rows);
        for (name, entry) in &report {
            let verdict = if entry["ok"] == true { "ok" } else { "DIFFERS" };
            match entry["kind"].as_str() {
                Some("labels") => println!("  {name:<24} labels: {} mismatches  {verdict}", entry["mismatches"]),
                _ => println!(
                    "  {name:<24} max abs diff {:.3e}, max rel diff {:.3e}  {verdict}",
                    entry["max_abs_diff"].as_f64().unwrap_or(0.0),
                    entry["max_rel_diff"].as_f64().unwrap_or(0.0)
                ),
            }
        }
    }
    if !ok {
        bail!(
            "{} v{}: kiln's outputs differ from the Python model's beyond tolerance {tol:e}",
            loaded.name,
            loaded.version
        );
    }
    Ok(())
}
