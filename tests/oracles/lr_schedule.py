"""PyTorch's learning rate per epoch for petal's schedules, as JSON: StepLR(step_size, gamma), or
SequentialLR([LinearLR(start_factor, 1.0, total_iters=warmup), CosineAnnealingLR(T_max=epochs -
warmup)], milestones=[warmup]). Usage: lr_schedule.py step EPOCHS STEP_SIZE GAMMA
                                      lr_schedule.py cosine EPOCHS WARMUP START_FACTOR"""
import json
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
kind, epochs = sys.argv[1], int(sys.argv[2])
param = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([param], lr=1.0)
if kind == "step":
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(sys.argv[3]), gamma=float(sys.argv[4]))
else:
    warmup, start = int(sys.argv[3]), float(sys.argv[4])
    parts, milestones = [], []
    if warmup > 0:
        parts.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup))
        milestones.append(warmup)
    parts.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs - warmup, 1)))
    sched = parts[0] if len(parts) == 1 else torch.optim.lr_scheduler.SequentialLR(opt, parts, milestones)
lrs = []
for _ in range(epochs):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
print(json.dumps(lrs))
