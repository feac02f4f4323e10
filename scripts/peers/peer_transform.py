"""The peers' eval transform and answer, shared by every peer so that they all do the same work.

torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize(ImageNet), written with PIL and
numpy as a server without torchvision would: decode, RGB, shorter side to 256 (bilinear), centre
crop 224, [0, 1], (x - mean) / std, NCHW float32 with a batch of 1. Top-5 after a softmax.
"""
import io

import numpy as np
from PIL import Image

RESIZE = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes) -> np.ndarray:
    """Encoded image bytes -> float32 [1, 3, 224, 224]."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (RESIZE, int(RESIZE * h / w))
    else:
        size = (int(RESIZE * w / h), RESIZE)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0))
    img = img.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def top5(logits: np.ndarray, labels: list) -> list:
    """One image's logits [C] -> [{"index", "name", "probability"}] for its 5 most probable classes."""
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    best = np.argsort(-p)[:5]
    return [{"index": int(i), "name": labels[i], "probability": float(p[i])} for i in best]
