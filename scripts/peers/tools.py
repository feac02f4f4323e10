"""Helpers of scripts/bench_peers.sh (standard library only).

  tools.py resolve REGISTRY MODEL ALIAS LABELS_OUT    -> "VERSION SHA256 PATH" of the alias's model.onnx
  tools.py top1 KIND RESPONSE                         -> "INDEX<TAB>NAME" of the answer's best class
  tools.py kserve-body IMAGE OUT                      -> the v1 protocol request for IMAGE
  tools.py mar-sha MAR MEMBER                         -> sha256 of a file inside the .mar
  tools.py record OUT LABEL TOP1 ONE MANY             -> one server's row from its two oha JSON reports
                                                         (exit 1 unless every answer was 200)
  tools.py record-session OUT LABEL BENCH             -> the session.run row from bench_session.py's JSON
  tools.py meta OUT KEY=VALUE... image=PATH...         -> the run's facts
  tools.py header META                                -> the machine, versions, model, load, images
  tools.py report META RESULTS_DIR                    -> the table and ratios; JSON to $PEERS_JSON if set
"""
import base64
import glob
import hashlib
import json
import os
import sys
import zipfile


def resolve(registry, model, alias, labels_out):
    moves = sorted(glob.glob(os.path.join(registry, "models", model, "aliases", alias, "*.json")))
    if not moves:
        sys.exit(f"{model}@{alias}: no such alias in {registry}")
    latest = max((json.load(open(m, encoding="utf-8")) for m in moves), key=lambda d: d["seq"])
    version = latest["version"]
    manifest = json.load(open(os.path.join(registry, "models", model, "versions", f"{version:08d}.json"),
                              encoding="utf-8"))
    art = next(a for a in manifest["artifacts"] if a["name"] == "model.onnx")
    path = os.path.join(registry, art["path"])
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if sha != art["sha256"]:
        sys.exit(f"{path}: sha256 {sha}, the manifest says {art['sha256']}")
    with open(labels_out, "w", encoding="utf-8") as f:
        json.dump(manifest["provenance"]["dataset"]["class_names"], f)
    print(version, sha, os.path.abspath(path))


def top1(kind, response):
    r = json.load(open(response, encoding="utf-8"))
    best = {
        "session": lambda: r["top5"][0],
        "petal": lambda: r["predictions"][0],  # {"model", "version", "predictions": [...], "results", ...}
        "torchserve": lambda: r[0],  # the handler's list for the request
        "kserve": lambda: r["predictions"][0][0],  # v1: {"predictions": [one list per instance]}
    }[kind]()
    print(f"{best['index']}\t{best['name']}")


def mar_sha(mar, member):
    with zipfile.ZipFile(mar) as z:
        print(hashlib.sha256(z.read(member)).hexdigest())


def kserve_body(image, out):
    b64 = base64.b64encode(open(image, "rb").read()).decode()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"instances": [{"image": {"b64": b64}}]}, f)


def oha_summary(report):
    """One oha --output-format json report -> requests, images/s, p50 and p99 in ms."""
    r = json.load(open(report, encoding="utf-8"))
    s, p = r["summary"], r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {}) or {}
    errors = r.get("errorDistribution", {}) or {}
    out = {
        "requests": sum(codes.values()),
        "rps": s["requestsPerSec"],
        "p50_ms": (p.get("p50") or 0) * 1000,
        "p99_ms": (p.get("p99") or 0) * 1000,
        "codes": codes,
        "errors": errors,
    }
    bad = {c: n for c, n in codes.items() if c != "200"}
    if bad or errors or not codes:
        sys.exit(f"{report}: answers other than 200 {bad}, connection errors {errors}")
    return out


def record(out, label, top1_line, one, many):
    index, name = top1_line.split("\t", 1)
    row = {"label": label, "top1": {"index": int(index), "name": name},
           "one": oha_summary(one), "many": oha_summary(many)}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(row, f)
    print(_line(row))


def _line(row):
    a, b = row["one"], row["many"]
    return (f"  {row['label']}: 1 client {a['rps']:.1f} img/s p50 {a['p50_ms']:.2f} p99 {a['p99_ms']:.2f} ms; "
            f"many {b['rps']:.1f} img/s p50 {b['p50_ms']:.2f} p99 {b['p99_ms']:.2f} ms")


def record_session(out, label, bench):
    r = json.load(open(bench, encoding="utf-8"))
    row = {"label": label, "top1": {"index": r["top5"][0]["index"], "name": r["top5"][0]["name"]},
           "one": r["one"], "many": r["many"]}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(row, f)
    print(_line(row))


def _sums(metrics_file):
    """Prometheus text -> {series: value} of every _sum and _count."""
    import re

    out = {}
    for line in open(metrics_file, encoding="utf-8"):
        m = re.match(r"^(\S+?_(?:sum|count))(\{[^}]*\})?\s+(\S+)$", line.strip())
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def stages(label, clients, before, after, oha):
    """Where petal's time went during one measurement: the mean per request of its histograms
    (decode + transform, waiting in the model's queue, session.run) between two /metrics scrapes,
    and the rest of the client's mean latency (reading the body, HTTP, JSON, the client itself)."""
    a, b = _sums(before), _sums(after)

    def mean(name):
        keys = [k for k in b if k.startswith(name + "_sum")]
        total = sum(b[k] - a.get(k, 0) for k in keys)
        count = sum(b[k.replace("_sum", "_count", 1)] - a.get(k.replace("_sum", "_count", 1), 0) for k in keys)
        return 1000 * total / count if count else float("nan")

    r = json.load(open(oha, encoding="utf-8"))
    latency = 1000 * r["summary"]["average"]
    pre, queue, run = (mean("petal_inference_" + n) for n in ("preprocess_seconds", "queue_seconds", "compute_seconds"))
    rest = latency - pre - queue - run
    print(f"  {label}, {clients} client(s), mean ms a request: decode + transform {pre:.2f}, queue {queue:.2f}, "
          f"session.run {run:.2f}, the rest (body, HTTP, JSON, client) {rest:.2f}; client's mean {latency:.2f}")


def meta(out, *pairs):
    from PIL import Image

    m = {"images": [], "versions": {}}  # KEY=VALUE, version.NAME=VALUE, image=PATH (in order)
    for pair in pairs:
        key, value = pair.split("=", 1)
        if key == "image":
            with Image.open(value) as im:
                w, h = im.size
            m["images"].append({"path": value, "bytes": os.path.getsize(value), "width": w, "height": h})
        elif key.startswith("version."):
            m["versions"][key[len("version."):]] = value
        else:
            m[key] = int(value) if key in ("nproc", "seconds", "warmup_s", "clients") else value
    with open(out, "w", encoding="utf-8") as f:
        json.dump(m, f)


ORDER = ["session", "petal", "torchserve", "kserve"]


def report(meta_file, results):
    meta = json.load(open(meta_file, encoding="utf-8"))
    images = []
    for n, image in enumerate(meta["images"]):
        rows = {}
        for server in ORDER:
            f = os.path.join(results, f"{n}.{server}.json")
            if os.path.exists(f):
                rows[server] = json.load(open(f, encoding="utf-8"))
        tops = {r["label"]: f"{r['top1']['index']} {r['top1']['name']}" for r in rows.values()}
        if len(set(tops.values())) != 1:
            sys.exit(f"image {image['path']}: the servers' top-1 classes differ: {tops}")
        image["top1"] = next(iter(tops.values()))
        images.append({"image": image, "rows": rows, "ratios": ratios(rows)})
    out = {"meta": meta, "images": images}
    m = meta
    for n, img in enumerate(images):
        im = img["image"]
        if n:
            print()
        print(f"image {im['path']} ({im['bytes']} bytes, {im['width']}x{im['height']}); "
              f"top-1 everywhere: {im['top1']}")
        c = m["clients"]
        head = ["server", "img/s @1", "p50 ms @1", "p99 ms @1", f"img/s @{c}", f"p50 ms @{c}", f"p99 ms @{c}"]
        table = [head]
        for server in ORDER:
            r = img["rows"].get(server)
            if not r:
                continue
            a, b = r["one"], r["many"]
            table.append([r["label"], f"{a['rps']:.1f}", f"{a['p50_ms']:.2f}", f"{a['p99_ms']:.2f}",
                          f"{b['rps']:.1f}", f"{b['p50_ms']:.2f}", f"{b['p99_ms']:.2f}"])
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for i, row in enumerate(table):
            print("  ".join(cell.ljust(widths[0]) if j == 0 else cell.rjust(widths[j]) for j, cell in enumerate(row)))
            if i == 0:
                print("  ".join("-" * w for w in widths))
        rt = img["ratios"]
        print()
        if "petal/session_many" in rt:
            print(f"petal / session.run, img/s at {c} clients: {rt['petal/session_many']:.2f}")
        for peer, label in (("torchserve", "TorchServe"), ("kserve", "KServe")):
            if f"petal/{peer}_one" in rt:
                print(f"petal / {label}, img/s: {rt[f'petal/{peer}_one']:.2f} at 1 client, "
                      f"{rt[f'petal/{peer}_many']:.2f} at {c} clients; p99 at 1 client "
                      f"{img['rows']['petal']['one']['p99_ms']:.2f} vs {img['rows'][peer]['one']['p99_ms']:.2f} ms "
                      f"(petal/{label} {rt[f'petal/{peer}_p99_one']:.2f})")
    if os.environ.get("PEERS_JSON"):
        with open(os.environ["PEERS_JSON"], "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
        print(f"\nJSON: {os.environ['PEERS_JSON']}")


def header(meta_file):
    m = json.load(open(meta_file, encoding="utf-8"))
    print(f"petal /classify vs its peers on the same ONNX file — {m['date']}, commit {m['commit']}")
    print(f"machine: nproc {m['nproc']}, {m['cpu']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    print(f"model: {m['model']}, sha256 {m['sha256']}")
    print(f"load: oha, keep-alive, {m['warmup_s']} s warm-up at {m['clients']} clients, then {m['seconds']} s "
          f"at 1 client and {m['seconds']} s at {m['clients']}")
    print("images: " + ", ".join(f"{i['path']} ({i['bytes']} bytes, {i['width']}x{i['height']})"
                                 for i in m["images"]))


def ratios(rows):
    out = {}
    p = rows.get("petal")
    if not p:
        return out
    if "session" in rows:
        out["petal/session_many"] = p["many"]["rps"] / rows["session"]["many"]["rps"]
    for peer in ("torchserve", "kserve"):
        if peer in rows:
            q = rows[peer]
            out[f"petal/{peer}_one"] = p["one"]["rps"] / q["one"]["rps"]
            out[f"petal/{peer}_many"] = p["many"]["rps"] / q["many"]["rps"]
            out[f"petal/{peer}_p99_one"] = p["one"]["p99_ms"] / q["one"]["p99_ms"]
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"resolve": resolve, "top1": top1, "mar-sha": mar_sha, "kserve-body": kserve_body, "record": record,
     "record-session": record_session, "meta": meta, "header": header, "report": report, "stages": stages}[cmd](*args)
