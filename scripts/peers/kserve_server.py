"""KServe 0.21 custom Python predictor for the flower classifier's ONNX file (onnxruntime, CPU).

As KServe's custom-model docs write one: a kserve.Model whose load() makes the model ready,
preprocess decodes the v1 protocol's {"instances": [{"image": {"b64": ...}}]}, predict runs it,
postprocess gives the top 5; kserve.ModelServer(...).start([model]) serves it (workers: default).
  python kserve_server.py --model_name NAME --onnx FILE --labels labels.json --http_port P --grpc_port G
"""
import argparse
import base64
import json
from typing import Dict

import numpy as np
import onnxruntime as ort

import kserve
from kserve import Model, ModelServer

from peer_transform import preprocess as transform_image
from peer_transform import top5


class OnnxImageClassifier(Model):
    def __init__(self, name: str, onnx: str, labels: str):
        super().__init__(name)
        self.name = name
        self.onnx, self.labels_file = onnx, labels
        self.load()

    def load(self):
        self.session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        with open(self.labels_file, encoding="utf-8") as f:
            self.labels = json.load(f)
        self.ready = True

    def preprocess(self, payload: Dict, headers: Dict[str, str] = None) -> np.ndarray:
        img_data = payload["instances"][0]["image"]["b64"]
        return transform_image(base64.b64decode(img_data))

    def predict(self, payload: np.ndarray, headers: Dict[str, str] = None) -> np.ndarray:
        return self.session.run(None, {self.input_name: payload})[0]

    def postprocess(self, result: np.ndarray, headers: Dict[str, str] = None, response_headers=None) -> Dict:
        return {"predictions": [top5(row, self.labels) for row in result]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--labels", required=True)
    args, _ = parser.parse_known_args()  # --model_name, --http_port, --grpc_port: KServe's own
    model = OnnxImageClassifier(args.model_name, args.onnx, args.labels)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])
