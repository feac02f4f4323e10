"""Reference outputs for the backbone parity test (torchvision is the oracle).

Usage: torchvision_parity.py ARCH OUTDIR [SIZE]
Writes OUTDIR/ARCH.pth (torch.save zip of a randomly initialised state_dict, batch-norm
statistics randomised too) and OUTDIR/ARCH-io.safetensors with:
  input          [2, 3, SIZE, SIZE]
  eval           logits in eval mode
  train          logits in training mode, with dropout and stochastic depth set to p=0
  after.<name>   every batch-norm running statistic after that training-mode forward
  projection     a random tensor the shape of the logits
  grad.<name>    every parameter's gradient of sum(training-mode logits * projection), from a
                 second training-mode forward (after the statistics above were taken)
"""
import sys

import torch
import torchvision
from safetensors.torch import save_file

arch, outdir = sys.argv[1], sys.argv[2]
size = int(sys.argv[3]) if len(sys.argv) > 3 else 96
torch.manual_seed(0)
model = torchvision.models.get_model(arch, weights=None, num_classes=1000)
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
torch.save(model.state_dict(), f"{outdir}/{arch}.pth")

x = torch.randn(2, 3, size, size)
model.eval()
with torch.no_grad():
    eval_out = model(x)

for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
    if isinstance(m, torchvision.ops.StochasticDepth):
        m.p = 0.0
model.train()
with torch.no_grad():
    train_out = model(x)
tensors = {"input": x, "eval": eval_out, "train": train_out}
for name, t in model.state_dict().items():
    if name.endswith("running_mean") or name.endswith("running_var"):
        tensors[f"after.{name}"] = t.clone()
projection = torch.randn_like(train_out)
model.zero_grad(set_to_none=True)
(model(x) * projection).sum().backward()
tensors["projection"] = projection
for name, p in model.named_parameters():
    tensors[f"grad.{name}"] = p.grad.contiguous()
save_file(tensors, f"{outdir}/{arch}-io.safetensors")
print(float(eval_out.abs().max()), float(train_out.abs().max()))
