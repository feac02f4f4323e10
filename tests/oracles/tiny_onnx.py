"""Writes a small ONNX model for the ort test: y = relu(x @ W.T + b), W and b given on the command line.

Usage: tiny_onnx.py OUT.onnx  (W is 3x4 = 0.1*(i*4+j) - 0.5, b = [0.1, -0.2, 0.3])
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
w = (np.arange(12, dtype=np.float32).reshape(3, 4) * 0.1 - 0.5).astype(np.float32)
b = np.array([0.1, -0.2, 0.3], dtype=np.float32)
graph = helper.make_graph(
    [
        helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["y"]),
    ],
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 10
onnx.checker.check_model(model, full_check=True)
onnx.save(model, out)
