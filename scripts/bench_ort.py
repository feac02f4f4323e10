"""The reference for `petal bench infer`: onnxruntime's Python `session.run` on the same model and input.

Usage: bench_ort.py MODEL.onnx INPUT.safetensors SECONDS PROVIDER CLIENTS...
Prints JSON: batch-1 latency percentiles (one client), and images/s for each client count
(each client a thread calling session.run with one image; onnxruntime releases the GIL).
"""
import json
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

model, inp, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
provider = sys.argv[4]
clients = [int(c) for c in sys.argv[5:]]
if provider not in ort.get_available_providers():
    sys.exit(f"python onnxruntime {ort.__version__} has no {provider} (it has {ort.get_available_providers()}); "
             "run the bench with --provider cpu, or with a Python whose onnxruntime has it")
x = load_file(inp)["input"]
sess = ort.InferenceSession(model, providers=[provider])
for _ in range(10):
    sess.run(["logits"], {"input": x})

lat = []
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    t = time.perf_counter()
    sess.run(["logits"], {"input": x})
    lat.append(time.perf_counter() - t)
lat_ms = np.array(lat) * 1000
out = {"p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)), "throughput": {}}

for n in clients:
    count = [0] * n
    stop = time.perf_counter() + seconds

    def work(i):
        while time.perf_counter() < stop:
            sess.run(["logits"], {"input": x})
            count[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["throughput"][str(n)] = sum(count) / (time.perf_counter() - start)
print(json.dumps(out))
