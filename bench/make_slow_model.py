"""A deliberately slow ONNX model (each row costs two size^3 matrix products), for overload
benchmarks and for the tests of queues and timeouts: x FP32 [batch, 1] -> y FP32 [batch, 1].

    python bench/make_slow_model.py OUT.onnx [--size 384]
"""

import argparse

import onnx
from onnx import TensorProto, helper


def slow_model(size=384):
    """The model's serialized bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    init = [
        helper.make_tensor("shape", TensorProto.INT64, [3], [1, size, size]),
        helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "one"], ["x3"]),
        helper.make_node("Expand", ["x3", "shape"], ["m"]),
        helper.make_node("MatMul", ["m", "m"], ["p"]),
        helper.make_node("MatMul", ["p", "m"], ["q"]),
        helper.make_node("ReduceMean", ["q", "axes"], ["r"], keepdims=0),
        helper.make_node("Unsqueeze", ["r", "one"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "slow", [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    with open(args.out, "wb") as f:
        f.write(slow_model(args.size))
