"""Preprocesses photos with torchvision's ImageNet eval transform (the oracle for the real-weights test).

Usage: imagenet_input.py OUT.safetensors IMAGE...   → tensor "input" [N, 3, 224, 224]
"""
import sys

import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

t = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
batch = torch.stack([t(Image.open(p).convert("RGB")) for p in sys.argv[2:]])
save_file({"input": batch.contiguous()}, sys.argv[1])
