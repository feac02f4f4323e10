"""The references for `petal bench batch`: images/s at fixed batch sizes of onnxruntime's Python
`session.run` on the same ONNX file and provider, and of PyTorch eager (torchvision, fp32, eval)
on the same architecture. Either is skipped, with a note, where this Python lacks it.

Usage: bench_batch.py '{"onnx": …, "arch": …, "classes": …, "size": …, "batches": […],
                        "seconds": …, "provider": "CUDAExecutionProvider" | "CPUExecutionProvider"}'
Prints one JSON object: {"rows": {"64": {"python_ort": …, "torch_on_device": …, "torch_host": …}},
"about": "…", "notes": […]}. Python is a reference here, never part of petal.
"""
import json
import sys
import time

import numpy as np

a = json.loads(sys.argv[1])
rows = {str(b): {} for b in a["batches"]}
notes, about = [], []


def rate(run, batch):
    """Images/s of `run()` (one batch per call) over at least `seconds`, after two warm-up calls."""
    run()
    run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= a["seconds"]:
            return calls * batch / elapsed


def inputs(batch):
    """The very values petal's side sends (bench/batch.rs): with random weights the speed of a CPU
    run can depend on them (denormals), so both sides run on the same input."""
    n = batch * 3 * a["size"] * a["size"]
    x = (np.arange(n) % 251).astype(np.float32) / np.float32(251.0) - np.float32(0.5)
    return x.reshape(batch, 3, a["size"], a["size"])


try:
    import onnxruntime as ort

    if a["provider"] in ort.get_available_providers():
        sess = ort.InferenceSession(a["onnx"], providers=[a["provider"]])
        about.append(f"onnxruntime {ort.__version__} on {sess.get_providers()[0]}")
        for b in a["batches"]:
            x = inputs(b)
            rows[str(b)]["python_ort"] = rate(lambda: sess.run(["logits"], {"input": x}), b)
        del sess
    else:
        notes.append(f"python onnxruntime {ort.__version__} has no {a['provider']} "
                     f"(it has {', '.join(ort.get_available_providers())}): no python ort column")
except ImportError as e:
    notes.append(f"no onnxruntime in this python ({e}): no python ort column")

try:
    import torch
    import torchvision

    cuda = a["provider"] == "CUDAExecutionProvider" and torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, a["arch"])(weights=None, num_classes=a["classes"]).eval().to(dev)
    about.append(f"torch {torch.__version__} torchvision {torchvision.__version__} on {dev}"
                 f" (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32},"
                 f" matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32})")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        for b in a["batches"]:
            host = torch.from_numpy(inputs(b))
            on_dev = host.to(dev)

            def on_device():
                model(on_dev)
                sync()

            rows[str(b)]["torch_on_device"] = rate(on_device, b)
            if cuda:
                rows[str(b)]["torch_host"] = rate(lambda: model(host.to(dev)).cpu(), b)
            del on_dev
    if not cuda:
        notes.append("torch on the CPU: its input is already where it runs, so no separate host column")
except ImportError as e:
    notes.append(f"no torch/torchvision in this python ({e}): no torch columns")
except AttributeError:
    notes.append(f"torchvision has no model {a['arch']!r}: no torch columns")

print(json.dumps({"rows": rows, "about": "; ".join(about), "notes": notes}))
