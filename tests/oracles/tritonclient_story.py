"""tritonclient (PyPI `tritonclient[http]`, unchanged) against a live petal: the Open Inference
Protocol as Triton's own clients speak it.

Usage: tritonclient_story.py HOST:PORT MODEL MODEL.ONNX PHOTO...
MODEL.ONNX is the served version's file (for onnxruntime here); each PHOTO a JPEG. Checks liveness,
readiness, model metadata, inference with the preprocessed FP32 tensor (torchvision's eval
transform, binary and JSON) and with encoded images (BYTES, binary and JSON), binary and JSON
outputs, the classification extension, that the FP32 and BYTES paths agree with each other and
with /classify, errors, and an async client at 32 concurrent requests getting only 200 or 429.
"""
import asyncio
import io
import json
import os
import sys
import urllib.request

import numpy as np
import onnxruntime
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from PIL import Image
from torchvision import transforms
from tritonclient.utils import InferenceServerException

url, model, onnx_file, photos = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
local = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live(), "not live"
assert client.is_server_ready(), "not ready"
assert client.is_model_ready(model), "model not ready"
server = client.get_server_metadata()
assert "binary_tensor_data" in server["extensions"] and "classification" in server["extensions"], server
meta = client.get_model_metadata(model)
assert meta["platform"] == "onnxruntime_onnx", meta
inputs = {i["name"]: i for i in meta["inputs"]}
outputs = {o["name"]: o for o in meta["outputs"]}
assert inputs["input"]["datatype"] == "FP32" and inputs["input"]["shape"][1:] == [3, 224, 224], meta
assert inputs["image"]["datatype"] == "BYTES", meta
classes = outputs["logits"]["shape"][1]
assert classes == 102, meta
print("metadata:", json.dumps(meta)[:200])

eval_transform = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])


def classify(photo):
    """petal's own /classify: the top classes with probabilities."""
    with open(photo, "rb") as f:
        req = urllib.request.Request(f"http://{url}/classify?model={model}&top_k=5", data=f.read(),
                                     headers={"content-type": "image/jpeg"})
    return json.load(urllib.request.urlopen(req))["predictions"]


def infer_tensor(x, binary_in, binary_out):
    i = httpclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary_in)
    outs = [httpclient.InferRequestedOutput("logits", binary_data=binary_out)]
    return client.infer(model, [i], outputs=outs).as_numpy("logits")


def infer_images(encoded, binary_in, outputs=None):
    data = np.array(encoded, dtype=np.object_)
    if not binary_in:
        import base64
        data = np.array([base64.b64encode(e) for e in encoded], dtype=np.object_)
    i = httpclient.InferInput("image", [len(encoded)], "BYTES")
    i.set_data_from_numpy(data, binary_data=binary_in)
    return client.infer(model, [i], outputs=outputs)


encoded = [open(p, "rb").read() for p in photos]
# Encoded images, binary, every output by default (tritonclient asks for binary outputs then).
everything = infer_images(encoded, True)
logits_bytes = everything.as_numpy("logits")
probabilities = everything.as_numpy("probabilities")
assert logits_bytes.shape == (len(photos), classes) and logits_bytes.dtype == np.float32, logits_bytes.shape
softmax = np.exp(logits_bytes - logits_bytes.max(1, keepdims=True))
softmax /= softmax.sum(1, keepdims=True)
assert np.abs(softmax - probabilities).max() <= 1e-5

for n, (photo, enc) in enumerate(zip(photos, encoded)):
    # One image at a time, as /classify runs it (a batch of several may round differently).
    alone = infer_images([enc], True).as_numpy("logits")[0]
    assert np.abs(alone - logits_bytes[n]).max() <= 1e-4, photo
    # The FP32 path on torchvision's eval transform of the photo, against the BYTES path on the
    # same pixels: a PNG of them (a lossless decode, the same in PIL and petal; JPEG decoders may
    # differ by a level here and there).
    pixels = Image.open(photo).convert("RGB")
    buf = io.BytesIO()
    pixels.save(buf, format="PNG")
    from_png = infer_images([buf.getvalue()], True).as_numpy("logits")[0]
    x = eval_transform(pixels).numpy()[None].astype(np.float32)
    for binary_in, binary_out in [(True, True), (False, False)]:
        logits = infer_tensor(x, binary_in, binary_out)
        # The FP32 path is the model on the tensor given: onnxruntime here says the same.
        exact = np.abs(logits[0] - local.run(None, {"input": x})[0][0]).max()
        assert exact <= 1e-5, f"{photo}: the FP32 path differs from onnxruntime by {exact}"
        # The BYTES path transforms the pixels as torchvision does, up to float32 rounding (a few
        # ulps of the largest logit: petal normalises in another order of operations).
        diff = np.abs(logits[0] - from_png).max()
        assert diff <= 1e-6 * np.abs(from_png).max(), f"{photo}: FP32 and BYTES logits differ by {diff}"
    # /classify on the photo: the BYTES path's classes and probabilities.
    ours = classify(photo)
    top = int(np.argmax(alone))
    assert ours[0]["index"] == top, (photo, ours[0], top)
    p_alone = np.exp(alone - alone.max())
    p_alone /= p_alone.sum()
    for p in ours:
        assert abs(p["probability"] - float(p_alone[p["index"]])) <= 1e-5, (photo, p)
    # Encoded images as base64 strings in JSON, JSON outputs.
    r = infer_images([enc], False, [httpclient.InferRequestedOutput("logits", binary_data=False)])
    assert np.abs(r.as_numpy("logits")[0] - alone).max() <= 1e-5, photo
    print(f"{os.path.basename(photo)}: top-1 {ours[0]['name']} ({ours[0]['probability']:.3f}); FP32 = BYTES = /classify")

# The classification extension, binary and JSON: "score:index:label", best first.
for binary in (True, False):
    r = infer_images(encoded, True, [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)])
    top3 = r.as_numpy("probabilities")
    assert top3.shape == (len(photos), 3), top3.shape
    for n, row in enumerate(top3):
        entries = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in row]
        assert int(entries[0][1]) == int(np.argmax(logits_bytes[n])), entries
        assert abs(float(entries[0][0]) - float(probabilities[n].max())) <= 1e-5, entries
        assert [float(e[0]) for e in entries] == sorted((float(e[0]) for e in entries), reverse=True), entries
        assert entries[0][2], entries
print("classification:", [e.decode() if isinstance(e, bytes) else e for e in top3[0]])

# Errors come back as the protocol's `{"error": …}`.
for bad in [lambda: client.get_model_metadata("no-such-model"),
            lambda: infer_images([b"not an image"], True)]:
    try:
        bad()
        raise AssertionError("an error was expected")
    except InferenceServerException as e:
        assert e.status() in ("404", "422"), (e.status(), e.message())
        assert e.message(), e

# 32 concurrent requests from the async client: each answered 200, or 429 when the queue is full.


async def crowd():
    async with aioclient.InferenceServerClient(url=url) as c:
        async def one():
            i = aioclient.InferInput("image", [1], "BYTES")
            i.set_data_from_numpy(np.array([encoded[0]], dtype=np.object_))
            try:
                await c.infer(model, [i])
                return "200"
            except InferenceServerException as e:
                return str(e.status())
        return await asyncio.gather(*[one() for _ in range(32)])

statuses = asyncio.run(crowd())
assert set(statuses) <= {"200", "429"}, statuses
assert "200" in statuses, statuses
print("32 concurrent:", {s: statuses.count(s) for s in set(statuses)})
