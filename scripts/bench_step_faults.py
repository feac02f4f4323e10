"""Page faults of PyTorch's CPU training step (issue: CPU performance, BENCHMARKS.md).

Times the bare training step of a torchvision model (channels_last, Adam, synthetic batch, 2
threads) and counts the minor page faults it takes, under whatever allocator the process runs
with — e.g. glibc's default, `THP_MEM_ALLOC_ENABLE=1` (libtorch's huge pages), or jemalloc through
`LD_PRELOAD` with `MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`:

    .venv/bin/python scripts/bench_step_faults.py mobilenet_v2 16 [STEPS] [float32|bfloat16]

With `bfloat16` the forward pass runs under `torch.autocast("cpu", dtype=torch.bfloat16)` (float32
weights, gradients and Adam state), as petal's CPU mixed precision does.

Python here is a reference measurement only, never part of petal."""
import resource
import sys
import time

import torch
import torchvision

arch, batch = sys.argv[1], int(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
bf16 = len(sys.argv) > 4 and sys.argv[4] == "bfloat16"
torch.set_num_threads(2)
torch.manual_seed(0)
m = getattr(torchvision.models, arch)(weights=None).to(memory_format=torch.channels_last).train()
opt = torch.optim.Adam(m.parameters(), lr=1e-4, fused=True)
x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 102, (batch,))


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = m(x)
    torch.nn.functional.cross_entropy(out.float(), y).backward()
    opt.step()


for _ in range(3):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter()
for _ in range(steps):
    step()
ms = (time.perf_counter() - t0) / steps * 1e3
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
print(f"{arch} batch {batch} {'bfloat16' if bf16 else 'float32'}: {ms:.1f} ms a step, {faults:.0f} minor page faults a step")
