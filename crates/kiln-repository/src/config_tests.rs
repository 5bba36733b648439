//! config.toml parsed and checked: every contradiction is a load error naming the key.

use super::*;

fn signature() -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 30] }],
        outputs: vec![
            TensorSpec { name: "label".into(), datatype: DataType::Int64, shape: vec![-1] },
            TensorSpec { name: "probabilities".into(), datatype: DataType::Fp32, shape: vec![-1, 2] },
        ],
    }
}

#[test]
fn a_fixed_one_may_be_declared_the_batch_dimension() {
    let mut sig = signature();
    sig.outputs[0].shape = vec![1];
    sig.outputs[1].shape = vec![5, 2];
    let config = ModelConfig::parse("[[outputs]]\nname = \"label\"\nbatch_dimension = true\n").expect("parses");
    assert_eq!(config.declared_batch_dimensions(), vec!["label"]);
    config.apply(&mut sig, &mut BTreeMap::new()).expect("applies");
    assert_eq!(sig.outputs[0].shape, vec![-1]);
    let config = ModelConfig::parse("[[outputs]]\nname = \"probabilities\"\nbatch_dimension = true\n").expect("parses");
    let err = config.apply(&mut sig, &mut BTreeMap::new()).unwrap_err();
    assert!(err.contains("only a fixed 1 can be declared a batch dimension"), "{err}");
}

#[test]
fn parses_every_key() {
    let config = ModelConfig::parse(
        r#"
        name = "fraud"
        backend = "onnxruntime"
        instances = 2
        threads = 1
        max_batch_size = 64
        max_queue_size = 10
        version_policy = { latest = 2 }
        [[inputs]]
        name = "input"
        shape = [-1, 30]
        [labels]
        probabilities = ["legit", "fraud"]
        "#,
    )
    .expect("valid");
    assert_eq!(config.instances(), 2);
    assert_eq!(config.version_policy(), VersionPolicy::Latest(2));
    let mut sig = signature();
    let mut labels = BTreeMap::new();
    config.apply(&mut sig, &mut labels).expect("applies");
    assert_eq!(labels["probabilities"], vec!["legit", "fraud"]);
}

#[test]
fn refuses_typos_and_contradictions() {
    let err = ModelConfig::parse("instance = 2").unwrap_err();
    assert!(err.contains("unknown field `instance`"), "{err}");
    assert!(ModelConfig::parse("backend = \"tensorflow\"").unwrap_err().contains("not supported"));
    assert!(ModelConfig::parse("instances = 0").unwrap_err().contains("at least 1"));

    let mut labels = BTreeMap::new();
    let config = ModelConfig::parse("[[inputs]]\nname = \"input\"\ndatatype = \"FP64\"").expect("parses");
    let err = config.apply(&mut signature(), &mut labels).unwrap_err();
    assert_eq!(err, "config.toml declares input 'input' as FP64, but the model has FP32");
    let config = ModelConfig::parse("[[inputs]]\nname = \"input\"\nshape = [-1, 31]").expect("parses");
    assert!(config.apply(&mut signature(), &mut labels).unwrap_err().contains("contradicts"));
    let config = ModelConfig::parse("[[outputs]]\nname = \"nope\"").expect("parses");
    assert!(config.apply(&mut signature(), &mut labels).unwrap_err().contains("names output 'nope'"));
    let config = ModelConfig::parse("[labels]\nprobabilities = [\"a\", \"b\", \"c\"]").expect("parses");
    assert!(config.apply(&mut signature(), &mut labels).unwrap_err().contains("which has 2 columns"));
}

#[test]
fn llm_settings_and_what_an_llm_may_not_say() {
    let config = ModelConfig::parse(
        "kind = \"llm\"\nthreads = 4\nmax_queue_size = 9\n[llm]\ncontext_length = 2048\nmax_sequences = 6\ntemperature = 0.0",
    )
    .expect("parses");
    assert!(config.is_llm());
    let llm = config.llm.clone().expect("an [llm] table");
    assert_eq!(
        (config.threads, config.max_queue_size, llm.context_length, llm.max_sequences),
        (Some(4), Some(9), Some(2048), Some(6))
    );
    for (text, expected) in [
        ("kind = \"llm\"\nmax_batch_size = 8", "max_batch_size does not apply to kind = \"llm\""),
        ("kind = \"llm\"\ninstances = 2", "instances does not apply"),
        ("[llm]\nmax_sequences = 2", "an [llm] table needs kind = \"llm\""),
        ("kind = \"llm\"\n[llm]\nmax_sequences = 0", "max_sequences must be at least 1"),
        ("kind = \"llm\"\n[llm]\ntemperature = 3.0", "temperature must be between 0 and 2"),
        ("kind = \"llm\"\n[llm]\ncontext_length = 8", "context_length must be at least 16"),
        ("kind = \"llm\"\n[llm]\ncontex_length = 8", "unknown field `contex_length`"),
        ("kind = \"gpt\"", "kind 'gpt' is not supported"),
    ] {
        let err = ModelConfig::parse(text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn narrowing_a_dynamic_dimension_is_allowed() {
    let config = ModelConfig::parse("[[inputs]]\nname = \"input\"\nshape = [8, 30]").expect("parses");
    let mut sig = signature();
    config.apply(&mut sig, &mut BTreeMap::new()).expect("applies");
    assert_eq!(sig.inputs[0].shape, vec![8, 30]);
}

#[test]
fn version_policies_select() {
    let on_disk = [1, 2, 5];
    assert_eq!(VersionPolicy::Latest(1).select(&on_disk), vec![5]);
    assert_eq!(VersionPolicy::Latest(9).select(&on_disk), vec![1, 2, 5]);
    assert_eq!(VersionPolicy::All(true).select(&on_disk), vec![1, 2, 5]);
    assert_eq!(VersionPolicy::Specific(vec![2, 3]).select(&on_disk), vec![2]);
}
