"""The reference for `petal bench preprocess`: PIL + torchvision's eval transform, one thread.

Usage: bench_preprocess.py SECONDS IMAGE...
Prints JSON: for each image, milliseconds per call of decode (PIL open + convert("RGB")),
Resize(256) + CenterCrop(224) on the decoded image, ToTensor + Normalize on the crop, and the
whole transform from the encoded bytes — what a PIL/torchvision server does per request.
"""
import io
import json
import sys
import timeit

import torch
import torchvision
from PIL import Image
import torchvision.transforms as T

torch.set_num_threads(1)
seconds = float(sys.argv[1])
resize_crop = T.Compose([T.Resize(256), T.CenterCrop(224)])
to_input = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def per_call_ms(f):
    """Milliseconds per call of f, over about `seconds` (timeit sizes the loop)."""
    timer = timeit.Timer(f)
    calls, took = timer.autorange()
    calls = max(1, round(calls * seconds / took))
    return timer.timeit(calls) * 1000 / calls


out = {"images": [], "pillow": Image.__version__, "torchvision": torchvision.__version__}
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    decode = lambda: Image.open(io.BytesIO(data)).convert("RGB")
    img = decode()
    crop = resize_crop(img)
    out["images"].append({
        "decode_ms": per_call_ms(decode),
        "resize_crop_ms": per_call_ms(lambda: resize_crop(img)),
        "normalise_ms": per_call_ms(lambda: to_input(crop)),
        "total_ms": per_call_ms(lambda: to_input(resize_crop(decode()))),
    })
print(json.dumps(out))
