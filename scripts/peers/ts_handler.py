"""TorchServe 0.12 custom handler for the flower classifier's ONNX file (onnxruntime on the CPU).

BaseHandler's initialize/preprocess/inference/postprocess overridden as TorchServe's custom-handler
docs describe; the .mar holds this file, the ONNX file (--serialized-file), peer_transform.py and
labels.json (--extra-files). The body of POST /predictions/<name> is the raw image.
"""
import base64
import json
import os

import numpy as np
import onnxruntime as ort
from ts.torch_handler.base_handler import BaseHandler

from peer_transform import preprocess as transform_image
from peer_transform import top5


class OnnxImageClassifier(BaseHandler):
    def initialize(self, context):
        self.context = context
        model_dir = context.system_properties.get("model_dir")
        serialized_file = context.manifest["model"]["serializedFile"]
        self.session = ort.InferenceSession(
            os.path.join(model_dir, serialized_file), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        with open(os.path.join(model_dir, "labels.json"), encoding="utf-8") as f:
            self.labels = json.load(f)
        self.initialized = True

    def preprocess(self, data):
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            images.append(transform_image(bytes(image)))
        return np.concatenate(images)

    def inference(self, data, *args, **kwargs):
        return self.session.run(None, {self.input_name: data})[0]

    def postprocess(self, data):
        return [top5(row, self.labels) for row in data]
