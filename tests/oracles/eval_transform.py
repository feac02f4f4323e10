"""torchvision's eval transform on real photos, and variants of them (the oracle for petal's).

Usage: eval_transform.py OUTDIR IMAGE...
For each IMAGE writes OUTDIR/<stem>.png (as given), <stem>.jpg (PIL JPEG, quality 90),
<stem>-gray.png, <stem>-rgba.png, <stem>-cmyk.jpg, <stem>.webp (lossless); and OUTDIR/expected.safetensors with the
torchvision transform (Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet)) of each file,
keyed by file name, computed from PIL's decoding of that file converted to RGB.
"""
import os
import shutil
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
out = sys.argv[1]
files = []
for path in sys.argv[2:]:
    stem = os.path.splitext(os.path.basename(path))[0]
    img = Image.open(path).convert("RGB")
    shutil.copy(path, f"{out}/{stem}.png")
    img.save(f"{out}/{stem}.jpg", quality=90)
    img.convert("L").save(f"{out}/{stem}-gray.png")
    rgba = img.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(f"{out}/{stem}-rgba.png")
    img.convert("CMYK").save(f"{out}/{stem}-cmyk.jpg", quality=95)
    img.save(f"{out}/{stem}.webp", lossless=True)
    files += [f"{stem}.png", f"{stem}.jpg", f"{stem}-gray.png", f"{stem}-rgba.png", f"{stem}-cmyk.jpg", f"{stem}.webp"]
save_file({f: t(Image.open(f"{out}/{f}").convert("RGB")).contiguous() for f in files}, f"{out}/expected.safetensors")
print("\n".join(files))
