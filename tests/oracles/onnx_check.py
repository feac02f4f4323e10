"""Checks an exported model with the onnx package and runs it in onnxruntime (Python).

Usage: onnx_check.py MODEL.onnx INPUT.safetensors OUT.safetensors
Runs onnx.checker.check_model(full_check=True), then writes onnxruntime's output for the tensor
"input" as "logits", and prints the model's metadata as JSON.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

model = onnx.load(sys.argv[1])
onnx.checker.check_model(model, full_check=True)
x = load_file(sys.argv[2])["input"]
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(y,) = sess.run(["logits"], {"input": x})
save_file({"logits": np.ascontiguousarray(y)}, sys.argv[3])
print(json.dumps({
    "opset": model.opset_import[0].version,
    "ir_version": model.ir_version,
    "metadata": {p.key: p.value for p in model.metadata_props},
    "input_shape": [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],
}))
