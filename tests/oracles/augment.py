"""torchvision's train augmentations on PIL images, with given parameters (the oracle for
petal's `train::augment`): an optional RandomResizedCrop region first, then flip, jitter, affine.
Reads DIR/cases.json, writes DIR/out_<i>.png."""
import json
import sys

from PIL import Image
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

d = sys.argv[1]
cases = json.load(open(f"{d}/cases.json"))
for i, c in enumerate(cases):
    img = Image.open(f"{d}/{c['image']}").convert("RGB")
    if c.get("rrc"):
        top, left, height, width, size = c["rrc"]
        img = F.resized_crop(img, top, left, height, width, [size, size], InterpolationMode.BILINEAR, antialias=True)
    if c["flip"]:
        img = F.hflip(img)
    ops = []
    if c["brightness"] is not None:
        ops.append(("b", c["brightness"]))
    if c["contrast"] is not None:
        ops.append(("c", c["contrast"]))
    if c["contrast_first"]:
        ops.reverse()
    for kind, f in ops:
        img = F.adjust_brightness(img, f) if kind == "b" else F.adjust_contrast(img, f)
    img = F.affine(img, angle=c["angle"], translate=[0, 0], scale=1.0, shear=[c["shear_x"], 0.0],
                   interpolation=InterpolationMode.NEAREST, fill=0)
    img.save(f"{d}/out_{i}.png")
print(len(cases))
