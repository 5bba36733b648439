//! The demo and test models on the real ONNX Runtime: signatures, the ZipMap rewrite,
//! every datatype, and parity with scikit-learn's own outputs.

use std::path::PathBuf;

use kiln_backend_ort::{PreparedModel, SessionOptions, onnx_proto, runtime};
use kiln_core::{DataType, ModelInstance, Tensor, TensorData};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn prepare(path: &str) -> PreparedModel {
    runtime::ensure(None).expect("ONNX Runtime (run scripts/setup-venv.sh)");
    let bytes = std::fs::read(root().join(path)).expect("model file");
    PreparedModel::new(bytes, SessionOptions::default()).expect("model loads")
}

fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join(format!("examples/fixtures/{name}.json"))).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

fn fixture_input(fx: &serde_json::Value) -> Tensor {
    let rows = fx["inputs"].as_array().expect("rows");
    let cols = rows[0].as_array().expect("row").len();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("number") as f32))
        .collect();
    Tensor::new("input", vec![rows.len(), cols], TensorData::Fp32(data)).expect("tensor")
}

#[test]
fn zipmap_outputs_become_probability_tensors() {
    let model = prepare("examples/models/breast_cancer/1/model.onnx");
    let out = &model.signature.outputs;
    assert_eq!(out[1].name, "output_probability");
    assert_eq!(out[1].datatype, DataType::Fp32);
    assert_eq!(out[1].shape, vec![-1, 2]);
    assert_eq!(model.labels["output_probability"], vec!["0", "1"]);
    assert_eq!(model.notices.len(), 1);
    assert!(model.notices[0].contains("zipmap"), "{}", model.notices[0]);

    let iris = prepare("examples/models/iris/1/model.onnx");
    assert_eq!(iris.labels["output_probability"], vec!["setosa", "versicolor", "virginica"]);
    assert_eq!(iris.signature.outputs[0].datatype, DataType::Bytes);
}

#[test]
fn demo_models_match_scikit_learn() {
    for name in ["fraud", "breast_cancer", "digits_mlp", "iris"] {
        let model = prepare(&format!("examples/models/{name}/1/model.onnx"));
        let fx = fixture(name);
        let input = fixture_input(&fx);
        let rows = input.shape[0];
        let outputs = model.signature.output_names();
        let mut instance = model.instantiate().expect("session");
        let result = instance.run(&[input], &outputs).expect("inference");
        let labels: Vec<String> = match &result[0].data {
            TensorData::Int64(v) => v.iter().map(ToString::to_string).collect(),
            TensorData::Bytes(v) => v.iter().map(|b| String::from_utf8(b.clone()).expect("utf8")).collect(),
            other => panic!("{name}: unexpected label type {:?}", other.datatype()),
        };
        let expected: Vec<String> = fx["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect();
        assert_eq!(labels, expected, "{name}: labels");
        let TensorData::Fp32(proba) = &result[1].data else { panic!("{name}: probabilities not FP32") };
        let classes = fx["classes"].as_array().expect("classes").len();
        assert_eq!(result[1].shape, vec![rows, classes], "{name}");
        let want: Vec<f64> = fx["probabilities"]
            .as_array()
            .expect("probabilities")
            .iter()
            .flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("number")))
            .collect();
        let worst = proba.iter().zip(&want).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5, "{name}: probabilities differ by {worst}");
    }
}

#[test]
fn every_datatype_round_trips() {
    let model = prepare("testdata/models/all_types/1/model.onnx");
    assert_eq!(model.signature.inputs.len(), 13);
    let inputs: Vec<Tensor> = DataType::ALL
        .iter()
        .map(|&dt| {
            let data = match dt {
                DataType::Bool => TensorData::Bool(vec![true, false, true, false, false, true]),
                DataType::Uint8 => TensorData::Uint8(vec![0, 1, 2, 3, 254, 255]),
                DataType::Uint16 => TensorData::Uint16(vec![0, 1, 2, 3, 65534, 65535]),
                DataType::Uint32 => TensorData::Uint32(vec![0, 1, 2, 3, 4, u32::MAX]),
                DataType::Uint64 => TensorData::Uint64(vec![0, 1, 2, 3, 4, u64::MAX]),
                DataType::Int8 => TensorData::Int8(vec![-128, -1, 0, 1, 2, 127]),
                DataType::Int16 => TensorData::Int16(vec![i16::MIN, -1, 0, 1, 2, i16::MAX]),
                DataType::Int32 => TensorData::Int32(vec![i32::MIN, -1, 0, 1, 2, i32::MAX]),
                DataType::Int64 => TensorData::Int64(vec![i64::MIN, -1, 0, 1, 2, i64::MAX]),
                DataType::Fp16 => {
                    TensorData::Fp16([0.5f32, -1.0, 2.0, 65504.0, 0.0, 3.25].map(half::f16::from_f32).to_vec())
                }
                DataType::Fp32 => TensorData::Fp32(vec![0.5, -1.0, 1e-30, 3.4e38, 0.0, -0.0]),
                DataType::Fp64 => TensorData::Fp64(vec![0.5, -1.0, 1e-300, 1e300, 0.0, 2.0]),
                DataType::Bytes => {
                    TensorData::Bytes(["a", "", "héllo", "日本", "🙂", "x y"].map(|s| s.as_bytes().to_vec()).to_vec())
                }
            };
            Tensor::new(format!("in_{}", dt.as_str().to_lowercase()), vec![2, 3], data).expect("tensor")
        })
        .collect();
    model.signature.validate_inputs(&inputs).expect("valid");
    let outputs = model.signature.output_names();
    let result = model.instantiate().expect("session").run(&inputs, &outputs).expect("inference");
    for (input, output) in inputs.iter().zip(&result) {
        assert_eq!(input.data, output.data, "{}", input.name);
        assert_eq!(output.shape, vec![2, 3]);
    }
}

#[test]
fn non_utf8_text_is_a_clear_input_error() {
    let model = prepare("testdata/models/all_types/1/model.onnx");
    let mut inputs: Vec<Tensor> = model
        .signature
        .inputs
        .iter()
        .map(|s| {
            let data = match s.datatype {
                DataType::Bytes => TensorData::Bytes(vec![vec![0xff, 0xfe]; 3]),
                DataType::Bool => TensorData::Bool(vec![false; 3]),
                DataType::Uint8 => TensorData::Uint8(vec![0; 3]),
                DataType::Uint16 => TensorData::Uint16(vec![0; 3]),
                DataType::Uint32 => TensorData::Uint32(vec![0; 3]),
                DataType::Uint64 => TensorData::Uint64(vec![0; 3]),
                DataType::Int8 => TensorData::Int8(vec![0; 3]),
                DataType::Int16 => TensorData::Int16(vec![0; 3]),
                DataType::Int32 => TensorData::Int32(vec![0; 3]),
                DataType::Int64 => TensorData::Int64(vec![0; 3]),
                DataType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; 3]),
                DataType::Fp32 => TensorData::Fp32(vec![0.0; 3]),
                DataType::Fp64 => TensorData::Fp64(vec![0.0; 3]),
            };
            Tensor::new(s.name.clone(), vec![1, 3], data).expect("tensor")
        })
        .collect();
    inputs.rotate_left(3);
    let err = model.instantiate().expect("session").run(&inputs, &["out_bytes".into()]).unwrap_err();
    assert!(err.to_string().contains("input 'in_bytes': element 0 is not valid UTF-8"), "{err}");
}

#[test]
fn broken_files_fail_to_load_with_a_reason() {
    runtime::ensure(None).expect("runtime");
    let err = PreparedModel::new(b"this is not an ONNX model\n".to_vec(), SessionOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("cannot load model"), "{err}");
}

#[test]
fn summary_lists_opsets_and_ops() {
    let bytes = std::fs::read(root().join("examples/models/breast_cancer/1/model.onnx")).expect("model");
    let summary = onnx_proto::summarize(&bytes).expect("summary");
    assert!(summary.producer.starts_with("skl2onnx"), "{}", summary.producer);
    assert!(summary.opsets.iter().any(|(d, _)| d == "ai.onnx.ml"), "{:?}", summary.opsets);
    assert_eq!(summary.ops.get("ai.onnx.ml:ZipMap"), Some(&1));
    assert_eq!(summary.ops.get("ai.onnx.ml:LinearClassifier"), Some(&1));
}
