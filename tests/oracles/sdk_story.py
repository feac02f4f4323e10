"""The whole story through a Python SDK generated from the committed OpenAPI document by
openapi-python-client: check a dataset, upload it, follow the job to success through its events, promote the
version, classify a held-out image, read the model card and the provenance.

usage: sdk_story.py BASE_URL TOKEN DATASET_ZIP SPEC_JSON HELD_OUT_IMAGE EXPECTED_CLASS
(the generated package `petal_client` must be on PYTHONPATH)
"""
import json
import sys

import httpx
from petal_client import AuthenticatedClient
from petal_client.api.inference import classify
from petal_client.api.models import alias_history, get_card, get_confusion, get_curves, get_evaluation, get_model, get_version, promote
from petal_client.api.training import check_finetune, finetune, get_job, job_events
from petal_client.models import ClassifyForm, ClassifyResponse, FinetuneCheck, FinetuneForm, Job, JobSpec, PromoteRequest
from petal_client.types import File

base, token, zip_path, spec_json, image_path, expected = sys.argv[1:7]
client = AuthenticatedClient(base_url=base, token=token, timeout=httpx.Timeout(300.0))

# The spec part is JSON text: the model's own serializer writes it.
spec_text = json.dumps(JobSpec.from_dict(json.loads(spec_json)).to_dict())
with open(zip_path, "rb") as f:
    checked = check_finetune.sync(client=client, body=FinetuneForm(spec=spec_text, dataset=File(payload=f, file_name="shapes.zip")))
assert isinstance(checked, FinetuneCheck) and checked.dataset.train_images > 0, checked
with open(zip_path, "rb") as f:
    r = finetune.sync_detailed(client=client, body=FinetuneForm(spec=spec_text, dataset=File(payload=f, file_name="shapes.zip")))
assert r.status_code == 202, (r.status_code, r.content)
job = r.parsed
assert isinstance(job, Job), job
assert r.headers["location"] == f"/jobs/{job.id}"

# Follow the job through its server-sent events until the stream closes after the final state.
stream = job_events.sync(job.id, client=client).payload.read().decode()
events = []
name = None
for line in stream.splitlines():
    if line.startswith("event: "):
        name = line[len("event: "):]
    elif line.startswith("data: "):
        events.append((name, json.loads(line[len("data: "):])))
kinds = {n for n, _ in events}
assert {"state", "progress", "epoch"} <= kinds, kinds
final = events[-1]
assert final[0] == "state" and final[1]["state"] == "succeeded", final
done = get_job.sync(job.id, client=client)
assert done.state.value == "succeeded" and done.result.version >= 1, done
version = done.result.version

# Promote it (compare-and-swap from "no alias yet"), then classify a held-out image by alias.
entry = promote.sync(done.result.model, "production", client=client, body=PromoteRequest(version=version, reason="sdk story"), if_match="0")
assert entry.version == version and entry.seq == 1, entry
history = alias_history.sync(done.result.model, "production", client=client)
assert [e.version for e in history.entries] == [version]
with open(image_path, "rb") as f:
    form = ClassifyForm(image=File(payload=f, file_name="held-out.png", mime_type="image/png"))
    answer = classify.sync(client=client, body=form, model=done.result.model, alias="production", top_k=1)
assert isinstance(answer, ClassifyResponse), answer
assert answer.predictions[0].name == expected, answer.to_dict()

# The model card and the provenance.
card = get_card.sync(done.result.model, version, client=client).payload.read().decode()
assert f"# {done.result.model} — version {version}" in card, card
manifest = get_version.sync(done.result.model, version, client=client)
prov = manifest.provenance.to_dict()
assert prov["dataset"]["digest"] and prov["base_weights"]["catalog"] == "MobileNet_V2_Weights.IMAGENET1K_V1", prov
# The version's evaluation report and its pictures.
report = get_evaluation.sync(done.result.model, version, client=client)
assert report.version == version and report.images == len(report.predictions) > 0, report
assert 0.0 <= report.ece <= 1.0 and 0.0 <= report.macro_f1 <= 1.0, report
assert sum(c.images for c in report.per_class) == report.images, report
for picture in (get_curves, get_confusion):
    png = picture.sync_detailed(done.result.model, version, client=client).content
    assert png.startswith(b"\x89PNG"), png[:8]
model = get_model.sync(done.result.model, client=client)
assert model.aliases.to_dict() == {"production": version}, model.aliases.to_dict()
print(json.dumps({"job": job.id, "version": version, "events": len(events), "answer": answer.predictions[0].name}))
