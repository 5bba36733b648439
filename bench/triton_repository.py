"""Writes one Triton model repository (config.pbtxt files, no config.toml): digits_mlp, fraud and
fraud_lr as ONNX models (2 instances, dynamic batching, `reshape` on the label outputs) and
fraud_pair, a Triton ensemble of the two fraud models. bench/triton_repository.sh serves it with
Triton and with kiln, unchanged, and compares.

  python bench/triton_repository.py REPO
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python" / "tests"))
from test_triton_config import ENSEMBLE  # noqa: E402  (the ensemble the test suite serves)

MODEL = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [
  {{ name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {classes} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
parameters {{ key: "inter_op_thread_count" value: {{ string_value: "1" }} }}
"""



def main(repo):
    repo = Path(repo)
    for name, features, classes in (("digits_mlp", 64, 10), ("fraud", 30, 2), ("fraud_lr", 30, 2)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "examples" / "models" / name / "1" / "model.onnx", repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(MODEL.format(name=name, features=features, classes=classes))
    (repo / "fraud_pair" / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version folder
    (repo / "fraud_pair" / "config.pbtxt").write_text(ENSEMBLE.replace("max_batch_size: 16", "max_batch_size: 64"))


if __name__ == "__main__":
    main(sys.argv[1])
