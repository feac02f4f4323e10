"""Writes the seed inputs of petal's fuzz targets to fuzz/seeds/{target}/ (small, committed).
Run with the project venv: `.venv/bin/python scripts/fuzz_seeds.py`. Deterministic."""
import io, json, os, struct, tarfile, zipfile
from pathlib import Path

from PIL import Image, ImageDraw

root = Path(__file__).resolve().parent.parent
seeds = root / "fuzz" / "seeds"


def put(target, name, data):
    d = seeds / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def shape(kind, size=16, mode="RGB"):
    img = Image.new("RGB", (size, size), (20, 40, 60))
    draw = ImageDraw.Draw(img)
    if kind == 0:
        draw.ellipse((3, 3, size - 3, size - 3), fill=(230, 200, 10))
    elif kind == 1:
        draw.rectangle((4, 4, size - 4, size - 4), fill=(10, 200, 230))
    else:
        draw.rectangle((size // 2 - 2, 1, size // 2 + 2, size - 1), fill=(200, 10, 100))
    return img.convert(mode)


def encoded(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# image: every format and colour model the decoder handles.
put("image", "rgb.png", encoded(shape(0), "PNG"))
put("image", "rgba.png", encoded(shape(1, mode="RGBA"), "PNG"))
put("image", "gray.png", encoded(shape(2, mode="L"), "PNG"))
put("image", "palette.png", encoded(shape(0, mode="P"), "PNG"))
put("image", "gray16.png", encoded(shape(1).convert("I;16"), "PNG"))
put("image", "rgb.jpg", encoded(shape(1), "JPEG", quality=80))
put("image", "progressive.jpg", encoded(shape(2), "JPEG", quality=70, progressive=True))
put("image", "gray.jpg", encoded(shape(0, mode="L"), "JPEG"))
put("image", "cmyk.jpg", encoded(shape(1, mode="CMYK"), "JPEG"))
# Large enough (shorter side over 4 x the target's resize of 32) to be shrunk while decoded.
put("image", "large.jpg", encoded(shape(0, size=136), "JPEG", quality=80))
put("image", "large-progressive.jpg", encoded(shape(2, size=136), "JPEG", quality=70, progressive=True))
put("image", "lossy.webp", encoded(shape(2), "WEBP", quality=60))
put("image", "lossless.webp", encoded(shape(0, mode="RGBA"), "WEBP", lossless=True))
frames = [shape(k) for k in range(3)]
b = io.BytesIO()
frames[0].save(b, "PNG", save_all=True, append_images=frames[1:])
put("image", "animated.png", b.getvalue())
# Formats petal refuses (JPEG, PNG and WebP only): the refusal is a path to fuzz too.
b = io.BytesIO()
frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
put("image", "refused-animated.gif", b.getvalue())
put("image", "refused-rgb.bmp", encoded(shape(2), "BMP"))

# archive: class folders in zip, tar and tar.gz; an Oxford-like layout is left to the fuzzer.
files = {f"shapes/{c}/{i}.png": encoded(shape(k, 16), "PNG") for k, c in enumerate(["disc", "square", "bar"]) for i in range(2)}
b = io.BytesIO()
with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
    for n, d in sorted(files.items()):
        z.writestr(n, d)
put("archive", "classes.zip", b.getvalue())
for mode, name in (("w", "classes.tar"), ("w:gz", "classes.tar.gz")):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode=mode) as t:
        for n, d in sorted(files.items()):
            info = tarfile.TarInfo(n)
            info.size, info.mtime = len(d), 0
            t.addfile(info, io.BytesIO(d))
    put("archive", name, b.getvalue())

# request: first byte 0 spec JSON, 1 classify JSON, 2 classify multipart, 3 finetune multipart.
spec = {"model": "shapes", "backbones": ["mobilenet_v2"], "device": "cpu", "epochs1": 1, "epochs2": 1,
        "batch_size": 8, "dataset": {"name": "shapes", "terms": "any use"}, "split": {"val_fraction": 0.34}}
put("request", "spec.json", b"\x00" + json.dumps(spec).encode())
import base64
png = encoded(shape(0), "PNG")
put("request", "classify.json", b"\x01" + json.dumps({"images": [base64.b64encode(png).decode(),
    "data:image/png;base64," + base64.b64encode(png).decode()]}).encode())


def part(name, data, filename=None, ctype=None):
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--xYzZY\r\nContent-Disposition: {disp}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "") + "\r\n"
    return head.encode() + data + b"\r\n"


put("request", "classify_form", b"\x02\x07" + part("image", png, "a.png", "image/png") + part("image", png, "b.png") + b"--xYzZY--\r\n")
zipped = (seeds / "archive" / "classes.zip").read_bytes()
put("request", "finetune_form", b"\x03\x40" + part("spec", json.dumps(spec).encode(), None, "application/json")
    + part("dataset", zipped, "shapes.zip", "application/zip") + b"--xYzZY--\r\n")

# weights: zip .pth, legacy .pth, safetensors, each of a tiny state dict.
import torch
state = {"features.0.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
         "features.0.bias": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)}
b = io.BytesIO(); torch.save(state, b); put("weights", "state.pth", b.getvalue())
b = io.BytesIO(); torch.save(state, b, _use_new_zipfile_serialization=False); put("weights", "legacy.pth", b.getvalue())
header = {}
payload = b""
for k, t in state.items():
    raw = t.numpy().tobytes()
    dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
    header[k] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [len(payload), len(payload) + len(raw)]}
    payload += raw
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
put("weights", "state.safetensors", struct.pack("<Q", len(h)) + h + payload)

# manifest: first byte 0 a version manifest, 1 a job record, 2 a MATLAB v5 file.
manifest = (root / "registry/models/flowers102/versions/00000001.json").read_bytes()
put("manifest", "version.json", b"\x00" + manifest)
job = {"id": "0b6f3c1e-8d7a-4c1b-9e51-3f1f0c2a9d10", "state": "queued", "spec": spec,
       "dataset": {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "name": "shapes"},
       "created_at": "2026-11-28T10:00:00Z", "progress": {"stage": "queued", "percent": 0.0}, "epochs": []}
put("manifest", "job.json", b"\x01" + json.dumps(job).encode())


def element(kind, data):
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


labels = [1.0, 2.0, 3.0, 1.0]
matrix = (element(6, struct.pack("<II", 6, 0)) + element(5, struct.pack("<ii", 1, len(labels)))
          + element(1, b"labels") + element(9, struct.pack(f"<{len(labels)}d", *labels)))
header = b"MATLAB 5.0 MAT-file, written by petal's fuzz seeds".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
put("manifest", "labels.mat", b"\x02" + header + element(14, matrix))
print("seeds in", seeds)
