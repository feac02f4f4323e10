// The whole story through a TypeScript client generated from the committed OpenAPI document by
// openapi-generator `typescript-fetch` (compiled with `tsc --strict`, run on Node): check an
// upload, upload it, retry with the same Idempotency-Key, follow the job's events, promote the
// version, classify a held-out image, read the card, queue a second job on the stored dataset with
// `POST /jobs` and cancel it, and read typed errors.
//
// usage: node story.js BASE_URL TOKEN DATASET_ZIP SPEC_JSON HELD_OUT_IMAGE EXPECTED_CLASS
// (the generated client is in ./client)
import { readFileSync } from "node:fs";

import {
    Configuration,
    ErrorBodyFromJSON,
    InferenceApi,
    JobEvent,
    JobEventFromJSON,
    JobSpec,
    JobSpecFromJSON,
    JobSpecToJSON,
    ModelsApi,
    ResponseError,
    TrainingApi,
} from "./client";

function check(condition: boolean, what: string, detail?: unknown): asserts condition {
    if (!condition) {
        throw new Error(`${what}: ${JSON.stringify(detail)}`);
    }
}

async function main(): Promise<void> {
    const [base, token, zipPath, specJson, imagePath, expected] = process.argv.slice(2);
    const config = new Configuration({ basePath: base, accessToken: async () => token });
    const training = new TrainingApi(config);
    const inference = new InferenceApi(config);
    const models = new ModelsApi(config);

    const spec: JobSpec = JobSpecFromJSON(JSON.parse(specJson));
    // The spec part is JSON text: the model's own serializer writes the wire names.
    const specText = JSON.stringify(JobSpecToJSON(spec));
    const dataset = new Blob([readFileSync(zipPath)], { type: "application/zip" });

    // The dry run answers what petal read, and queues nothing.
    const checked = await training.checkFinetune({ spec: specText, dataset });
    check(checked.dataset.trainImages > 0 && checked.sha256.length === 64, "the dry run", checked);

    // Upload; a retry with the same key gets the same job.
    const key = `ts-story-${Date.now()}`;
    const job = await training.finetune({ spec: specText, dataset, idempotencyKey: key });
    check(job.spec.model === spec.model, "the queued job", job);
    const retried = await training.finetuneRaw({ spec: specText, dataset, idempotencyKey: key });
    check(retried.raw.status === 202, "the retry's status", retried.raw.status);
    check(retried.raw.headers.get("idempotent-replayed") === "true", "the retry is a replay");
    check((await retried.value()).id === job.id, "the retry answers the first job");

    // Follow the job through its server-sent events until the stream closes after the final state.
    const stream = await (await training.jobEvents({ id: job.id })).text();
    const events: JobEvent[] = [];
    let name = "";
    for (const line of stream.split("\n")) {
        if (line.startsWith("event: ")) {
            name = line.slice("event: ".length);
        } else if (line.startsWith("data: ")) {
            events.push(JobEventFromJSON({ event: name, data: JSON.parse(line.slice("data: ".length)) }));
        }
    }
    const kinds = new Set(events.map((e) => e.event));
    check(kinds.has("state") && kinds.has("progress") && kinds.has("epoch"), "the event kinds", [...kinds]);
    const last = events[events.length - 1];
    check(last.event === "state" && last.data.state === "succeeded", "the final event", last);
    const done = await training.getJob({ id: job.id });
    check(done.state === "succeeded" && done.result != null, "the finished job", done);
    const model = done.result.model;
    const version = done.result.version;

    // Promote it (compare-and-swap from "no alias yet"), then classify a held-out image by alias.
    const entry = await models.promote({
        name: model,
        alias: "production",
        promoteRequest: { version, reason: "typescript story" },
        ifMatch: "0",
    });
    check(entry.version === version && entry.seq === 1, "the alias entry", entry);
    const image = new Blob([readFileSync(imagePath)], { type: "image/png" });
    const answer = await inference.classify({ image, model, alias: "production", topK: 1 });
    check(answer.predictions[0].name === expected, "the answer", answer);
    check(answer.version === version, "the answering version", answer);

    // The model card (Markdown) and the ONNX file come back as they are.
    const card = await (await models.getCard({ name: model, version })).text();
    check(card.includes(`# ${model} — version ${version}`), "the card", card.slice(0, 200));
    const onnx = new Uint8Array(await (await models.downloadOnnx({ name: model, version })).arrayBuffer());
    check(onnx.length > 1000, "the ONNX file", onnx.length);

    // A second job on the stored dataset, by JSON, then canceled.
    const second = await training.createJob({
        jobSpec: { ...spec, dataset: { ...spec.dataset, sha256: done.dataset.sha256 } },
    });
    check(second.dataset.sha256 === done.dataset.sha256, "the second job's dataset", second);
    const canceled = await training.cancelJob({ id: second.id });
    check(canceled.id === second.id, "the canceled job", canceled);

    // Errors are typed by their body, whatever the status.
    for (const [call, status, code] of [
        [() => training.getJob({ id: "00000000-0000-4000-8000-000000000000" }), 404, "not_found"],
        [() => models.getModel({ name: "no-such-model" }), 404, "not_found"],
        [() => new TrainingApi(new Configuration({ basePath: base, accessToken: async () => "wrong-token-0123456789" })).listJobs(), 401, "unauthorized"],
    ] as const) {
        try {
            await call();
            check(false, `expected ${status}`);
        } catch (e) {
            check(e instanceof ResponseError, "a ResponseError", String(e));
            const body = ErrorBodyFromJSON(await e.response.json());
            check(e.response.status === status && body.error.code === code, "the error", [e.response.status, body]);
        }
    }
    console.log(JSON.stringify({ job: job.id, version, events: events.length, answer: answer.predictions[0].name }));
}

main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
});
