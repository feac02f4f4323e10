"""The raw reference: onnxruntime's Python session.run of the model on the image, preprocessed once.

  bench_session.py MODEL.onnx IMAGE labels.json SECONDS [CLIENTS]
Default session options, CPUExecutionProvider, batch 1, 2 s of warm-up. For 1 caller and for
CLIENTS (default 32) Python threads calling one session (onnxruntime releases the GIL in run):
images/s and per-call latency percentiles. Prints JSON with the image's top 5 too.
"""
import json
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

from peer_transform import preprocess, top5

model, image, labels_file, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
many = int(sys.argv[5]) if len(sys.argv) > 5 else 32
with open(labels_file, encoding="utf-8") as f:
    labels = json.load(f)
with open(image, "rb") as f:
    x = preprocess(f.read())
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
answer = top5(sess.run(None, {name: x})[0][0], labels)

warm = time.perf_counter() + 2.0
while time.perf_counter() < warm:
    sess.run(None, {name: x})


def measure(clients):
    lat = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def work(i):
        mine = lat[i]
        while True:
            t = time.perf_counter()
            if t >= stop:
                return
            sess.run(None, {name: x})
            mine.append(time.perf_counter() - t)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.concatenate([np.array(v) for v in lat]) * 1000.0
    return {
        "clients": clients,
        "requests": int(ms.size),
        "rps": ms.size / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


print(json.dumps({"top5": answer, "one": measure(1), "many": measure(many),
                  "onnxruntime": ort.__version__}))
