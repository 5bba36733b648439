"""Builds kiln's demo model repository and test models, deterministically.

    python scripts/make_demo_models.py [--out examples/models] [--fixtures examples/fixtures]
                                       [--testdata testdata/models]

Demo repository (scikit-learn + skl2onnx, fixed seeds):
  fraud          GradientBoostingClassifier on a synthetic, heavily imbalanced 30-feature
                 transaction dataset (zipmap off: probabilities are an FP32 tensor)
  fraud_lr       StandardScaler + LogisticRegression on the same data (for fraud_ensemble)
  breast_cancer  StandardScaler + LogisticRegression on scikit-learn's bundled dataset,
                 exported with skl2onnx's defaults (ZipMap on) -- kiln rewrites it at load time
  digits_mlp     StandardScaler + MLPClassifier on the bundled digits (8x8 images, 64 features)
  iris           RandomForestClassifier with string class labels, ZipMap on
  ticket_urgency TF-IDF + LogisticRegression on support-ticket text (string input), for the
                 support_triage pipeline

For each demo model a fixture (inputs and the outputs scikit-learn itself computed) is written
to the fixtures folder, so tests compare kiln against scikit-learn without retraining.

Test models (hand-built ONNX graphs): `all_types` (Identity of every KServe v2 datatype),
`fixed_add` (two fixed-shape inputs, no batch dimension) and `broken` (not an ONNX file).
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 7
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
FIXTURE_ROWS = 64


def write_model(onnx_model, out_dir, name, config=None):
    version_dir = os.path.join(out_dir, name, "1")
    os.makedirs(version_dir, exist_ok=True)
    # Stable bytes across runs: skl2onnx stamps nothing time-dependent, but keep the
    # producer fields fixed anyway.
    onnx_model.producer_name = "skl2onnx"
    onnx.save_model(onnx_model, os.path.join(version_dir, "model.onnx"))
    if config is not None:
        with open(os.path.join(out_dir, name, "config.toml"), "w") as f:
            f.write(config)


def write_fixture(fixtures_dir, name, x, estimator, input_name="input", labels_as_str=False):
    proba = estimator.predict_proba(x).astype(np.float64)
    labels = estimator.predict(x)
    fixture = {
        "model": name,
        "input": input_name,
        "inputs": x.astype(np.float32).tolist(),
        "labels": [str(v) for v in labels] if labels_as_str else [int(v) for v in labels],
        "probabilities": proba.tolist(),
        "classes": [str(c) for c in estimator.classes_] if labels_as_str
        else [int(c) for c in estimator.classes_],
    }
    os.makedirs(fixtures_dir, exist_ok=True)
    with open(os.path.join(fixtures_dir, f"{name}.json"), "w") as f:
        json.dump(fixture, f)


def convert(estimator, n_features, zipmap):
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": zipmap}}
    return convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        options=options,
    )


def fraud(out_dir, fixtures_dir):
    x, y = make_classification(
        n_samples=20000, n_features=30, n_informative=12, n_redundant=6,
        weights=[0.97, 0.03], flip_y=0.005, class_sep=1.2, random_state=SEED,
    )
    x = x.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=SEED)
    model.fit(x_train, y_train)
    write_model(convert(model, 30, zipmap=False), out_dir, "fraud", config=(
        '# Fraud scoring: 30 transaction features -> label (0 legit, 1 fraud) and probabilities.\n'
        'instances = 2\n'
        '\n[labels]\nprobabilities = ["legit", "fraud"]\n'
    ))
    # Mix fraud cases into the fixture: the class is rare.
    # A second, different model of the same data: the ensemble example blends both.
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED))
    lr.fit(x_train, y_train)
    write_model(convert(lr, 30, zipmap=False), out_dir, "fraud_lr")
    pos = np.where(model.predict(x_test) == 1)[0][:16]
    rows = np.concatenate([x_test[pos], x_test[: FIXTURE_ROWS - len(pos)]])
    write_fixture(fixtures_dir, "fraud", rows, model)


def breast_cancer(out_dir, fixtures_dir):
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, data.target, test_size=0.25, random_state=SEED)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED))
    model.fit(x_train, y_train)
    # skl2onnx's defaults on purpose: the probability output is a ZipMap.
    onnx_model = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 30]))], target_opset=TARGET_OPSET,
    )
    write_model(onnx_model, out_dir, "breast_cancer")
    write_fixture(fixtures_dir, "breast_cancer", x_test[:FIXTURE_ROWS], model)


def digits_mlp(out_dir, fixtures_dir):
    data = load_digits()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, data.target, test_size=0.25, random_state=SEED)
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, random_state=SEED),
    )
    model.fit(x_train, y_train)
    pipe_options = {id(model.steps[-1][1]): {"zipmap": False}}
    onnx_model = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 64]))],
        target_opset=TARGET_OPSET, options=pipe_options,
    )
    classes = ", ".join(f'"{c}"' for c in model.classes_)
    write_model(onnx_model, out_dir, "digits_mlp", config=(
        "# 8x8 digit images (64 features) -> label and probabilities per digit.\n"
        f"\n[labels]\nprobabilities = [{classes}]\n"
    ))
    write_fixture(fixtures_dir, "digits_mlp", x_test[:FIXTURE_ROWS], model)


def iris(out_dir, fixtures_dir):
    data = load_iris()
    x = data.data.astype(np.float32)
    y = np.array([data.target_names[t] for t in data.target])
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.3, random_state=SEED)
    model = RandomForestClassifier(n_estimators=30, max_depth=5, random_state=SEED)
    model.fit(x_train, y_train)
    onnx_model = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=TARGET_OPSET,
    )
    write_model(onnx_model, out_dir, "iris")
    write_fixture(fixtures_dir, "iris", x_test, model, labels_as_str=True)


V2_TYPES = [
    ("BOOL", TensorProto.BOOL), ("UINT8", TensorProto.UINT8), ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32), ("UINT64", TensorProto.UINT64), ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16), ("INT32", TensorProto.INT32), ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16), ("FP32", TensorProto.FLOAT), ("FP64", TensorProto.DOUBLE),
    ("BYTES", TensorProto.STRING),
]


# Support tickets for the triage example: a TF-IDF + logistic regression urgency model.
URGENT_TICKETS = [
    "my card was stolen", "someone took money from my account", "fraud on my card please block it",
    "i cannot log in and my payment failed", "unauthorized charge of 900 dollars on my card",
    "my account was hacked, urgent help", "double charged and my rent is due today",
    "my card is blocked and i am stuck at the airport", "lost my wallet, block my cards now",
    "a suspicious transfer i did not make", "money missing from my savings account",
    "my salary payment bounced and i need it today",
]
CALM_TICKETS = [
    "how do i change my address", "what are your opening hours", "can i get a paper statement",
    "thanks for the quick help last week", "how do i update my email", "is there a mobile app",
    "what is the interest rate on savings", "please send me a new brochure",
    "i want to rename my account nickname", "do you offer student accounts",
    "where can i find my iban", "can i order a card in another colour",
]


def ticket_urgency(out_dir, fixtures_dir):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from skl2onnx.common.data_types import StringTensorType

    texts = URGENT_TICKETS + CALM_TICKETS
    labels = [1] * len(URGENT_TICKETS) + [0] * len(CALM_TICKETS)
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, random_state=SEED)).fit(texts, labels)
    onnx_model = convert_sklearn(
        model,
        initial_types=[("text", StringTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
        options={id(model.steps[-1][1]): {"zipmap": False}},
    )
    # skl2onnx's StringNormalizer asks for the en_US.UTF-8 locale, which slim containers lack
    # (ONNX Runtime then refuses the model); C.UTF-8 is always there and lowercases ASCII alike.
    for node in onnx_model.graph.node:
        if node.op_type == "StringNormalizer":
            node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
    write_model(onnx_model, out_dir, "ticket_urgency", config=(
        '# Support-ticket urgency: text [N, 1] -> label (1 urgent) and probabilities [N, 2].\n'
        '\n[labels]\nprobabilities = ["calm", "urgent"]\n'
    ))
    probe = ["my card was stolen yesterday", "what are your opening hours on sunday",
             "unauthorized payment on my account", "please update my email address"]
    fixture = {
        "model": "ticket_urgency",
        "input": "text",
        "inputs": [[t] for t in probe],
        "labels": [int(v) for v in model.predict(probe)],
        "probabilities": model.predict_proba(probe).tolist(),
        "classes": [0, 1],
    }
    with open(os.path.join(fixtures_dir, "ticket_urgency.json"), "w") as f:
        json.dump(fixture, f)


def all_types(test_dir):
    """Identity of every v2 datatype: each input `in_<type>` [batch, 3] comes back as `out_<type>`."""
    inputs, outputs, nodes = [], [], []
    for v2, onnx_type in V2_TYPES:
        lower = v2.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{lower}", onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{lower}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{lower}"], [f"out_{lower}"]))
    graph = helper.make_graph(nodes, "all_types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(test_dir, "all_types", "1")
    os.makedirs(path, exist_ok=True)
    onnx.save_model(model, os.path.join(path, "model.onnx"))


def fixed_add(test_dir):
    """Two fixed-shape FP32 inputs [2, 3] (no batch dimension) -> sum and product."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3])
    p = helper.make_tensor_value_info("product", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "fixed_add", [a, b], [s, p],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    for version in ("1", "2"):
        path = os.path.join(test_dir, "fixed_add", version)
        os.makedirs(path, exist_ok=True)
        onnx.save_model(model, os.path.join(path, "model.onnx"))


def broken(test_dir):
    path = os.path.join(test_dir, "broken", "1")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.onnx"), "wb") as f:
        f.write(b"this is not an ONNX model\n")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(root, "examples", "models"))
    parser.add_argument("--fixtures", default=os.path.join(root, "examples", "fixtures"))
    parser.add_argument("--testdata", default=os.path.join(root, "testdata", "models"))
    args = parser.parse_args()
    np.random.seed(SEED)
    fraud(args.out, args.fixtures)
    breast_cancer(args.out, args.fixtures)
    digits_mlp(args.out, args.fixtures)
    iris(args.out, args.fixtures)
    ticket_urgency(args.out, args.fixtures)
    all_types(args.testdata)
    fixed_add(args.testdata)
    broken(args.testdata)
    print(f"demo models in {args.out}, fixtures in {args.fixtures}, test models in {args.testdata}")


if __name__ == "__main__":
    main()
