"""The reference training stack for `petal bench train` (the reference notebook's, docs/reference_experiment.md): PIL + torchvision
transforms + DataLoader, a torchvision model, torch.optim.Adam. Measures, on the images listed in
the given file: the input pipeline alone (one process, and through a DataLoader with workers),
end-to-end full fine-tuning through the DataLoader, and the bare training step on synthetic
tensors. Prints one JSON object. Python is a reference here, never part of petal."""
import json
import sys
import time

import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
dev = torch.device(a["device"])
if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
eval_tf = [T.Resize(a["resize"]), T.CenterCrop(a["crop"]), T.ToTensor(), T.Normalize(MEAN, STD)]
train_tf = T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(brightness=0.3, contrast=0.3),
                      T.RandomAffine(degrees=30, shear=20)] + eval_tf)
items = [(p, int(l)) for p, l in (line.rstrip("\n").split("\t") for line in open(a["list"]))]


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return len(items)

    def __getitem__(self, i):
        path, label = items[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return train_tf(img), label


ds = Images()
out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "device": str(dev)}

# 1. The input pipeline alone, in this one process, on one core (one torch thread, as in a
#    DataLoader worker: more threads only spin on these small tensors).
n = min(len(ds), a["pipeline_images"])
torch.set_num_threads(1)
ds[0]
t0 = time.perf_counter()
for i in range(n):
    ds[i]
out["pipeline_one_core"] = n / (time.perf_counter() - t0)
torch.set_num_threads(a["threads"])


# 2. The model, as the notebook builds it, trained fully (phase 2).
model = getattr(torchvision.models, a["arch"])(weights=None)
if a["arch"].startswith("resnet"):
    model.fc = torch.nn.Linear(model.fc.in_features, a["classes"])
elif a["arch"].startswith("vgg"):
    model.classifier[6] = torch.nn.Linear(4096, a["classes"])
else:
    model.classifier[-1] = torch.nn.Linear(model.classifier[-1].in_features, a["classes"])
model = model.to(dev)
fmt = torch.channels_last if a["channels_last"] else torch.contiguous_format
model = model.to(memory_format=fmt)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
# Mixed precision as torch.amp does it: float16 with loss scaling on CUDA, bfloat16 on the CPU.
amp = a["amp"]
half = torch.float16 if dev.type == "cuda" else torch.bfloat16
scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
model.train()


def step(x, y):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=half, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


# 3. Bare training step on synthetic tensors already on the device.
x = torch.randn(a["batch"], 3, a["crop"], a["crop"], device=dev).contiguous(memory_format=fmt)
y = torch.randint(0, a["classes"], (a["batch"],), device=dev)
for _ in range(a["warmup_steps"]):
    step(x, y)
sync()
t0 = time.perf_counter()
for _ in range(a["steps"]):
    step(x, y)
sync()
out["bare_step"] = a["steps"] * a["batch"] / (time.perf_counter() - t0)
# The same steps again, timed part by part (seconds per step: forward with the loss, backward,
# optimiser; the device synchronised at each mark).
parts = [0.0, 0.0, 0.0]
for _ in range(a["steps"]):
    sync()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=half, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    sync()
    t1 = time.perf_counter()
    scaler.scale(loss).backward()
    sync()
    t2 = time.perf_counter()
    scaler.step(opt)
    scaler.update()
    sync()
    t3 = time.perf_counter()
    parts = [parts[0] + t1 - t0, parts[1] + t2 - t1, parts[2] + t3 - t2]
out["step_parts"] = [p / a["steps"] for p in parts]

# 4. The pipeline through a DataLoader with its workers (a warm-up pass starts them), then end to
#    end: training through the same loader (the notebook reuses one DataLoader across epochs).
def loader(dataset):
    return torch.utils.data.DataLoader(dataset, batch_size=a["batch"], shuffle=True, num_workers=a["workers"],
                                       pin_memory=dev.type == "cuda", drop_last=True,
                                       persistent_workers=a["workers"] > 0)


if a["workers"] > 0:
    sub = loader(torch.utils.data.Subset(ds, range(min(len(ds), a["pipeline_images"]))))
    for _ in sub:
        pass
    t0 = time.perf_counter()
    k = sum(xb.shape[0] for xb, _ in sub)
    out["pipeline_loader"] = k / (time.perf_counter() - t0)
    del sub
train_loader = loader(ds)
steps = 0
seen = 0
t0 = None
while steps < a["warmup_steps"] + a["steps"]:
    for xb, yb in train_loader:
        if steps == a["warmup_steps"]:
            sync()
            t0 = time.perf_counter()
            seen = 0
        xb = xb.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        step(xb, yb.to(dev, non_blocking=True))
        seen += xb.shape[0]
        steps += 1
        if steps >= a["warmup_steps"] + a["steps"]:
            break
sync()
out["end_to_end"] = seen / (time.perf_counter() - t0)
print(json.dumps(out))
