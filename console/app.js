// petal's web console. Plain JavaScript, no framework and no build step: every page is made of DOM
// nodes built here (text always as text, never parsed as HTML), and every byte it shows comes from
// petal's public API, with the token given in this tab (kept in sessionStorage: this tab only).
"use strict";
(() => {
  const TOKEN_KEY = "petal.token";
  const MAX_IMAGES = 64; // POST /classify's limit per request
  const main = document.getElementById("main");
  let pageAbort = null; // aborts the current page's requests and streams when it is left
  let objectUrls = []; // blob: URLs of the current page, revoked when it is left

  // --- DOM ---------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    add(el, children);
    return el;
  }
  function add(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    return add(el, children);
  }
  const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "–" : (100 * x).toFixed(x >= 0.9995 || x < 0.0005 ? 1 : 2) + " %");
  const ms = (x) => (x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) + " ms" : x.toFixed(1) + " ms");
  const bytes = (n) => (n >= 1 << 30 ? (n / 2 ** 30).toFixed(2) + " GiB" : n >= 1 << 20 ? (n / 2 ** 20).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B");
  const duration = (sec) => {
    if (sec === null || sec === undefined || !Number.isFinite(sec)) return "–";
    sec = Math.round(sec);
    return sec >= 3600 ? `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min` : sec >= 60 ? `${Math.floor(sec / 60)} min ${sec % 60} s` : `${sec} s`;
  };
  const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "–");
  const enc = encodeURIComponent;
  function stat(label, value, id) {
    return h("div", { class: "stat" }, h("b", { id, text: value }), h("span", { text: label }));
  }
  // Replaces the page's content (lists of nodes are flattened, as h() does).
  function show(...children) {
    main.replaceChildren();
    add(main, children);
  }
  // Says something to screen readers without moving focus (a live region outside <main>).
  function announce(text) {
    const region = document.getElementById("announce");
    region.textContent = "";
    setTimeout(() => (region.textContent = text), 50);
  }
  function objectUrl(blob) {
    const u = URL.createObjectURL(blob);
    objectUrls.push(u);
    return u;
  }

  // --- the API -----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message, requestId) {
      super(message);
      Object.assign(this, { status, code, requestId });
    }
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function logCall(method, path, status, millis) {
    const log = document.getElementById("call-log");
    log.append(h("li", { text: `${method} ${path} → ${status}${millis === undefined ? "" : ` (${Math.round(millis)} ms)`}` }));
    while (log.children.length > 100) log.firstElementChild.remove();
  }

  async function errorOf(status, statusText, headers, textPromise) {
    let code = `http_${status}`;
    let message = statusText || "request failed";
    let requestId = headers.get("x-request-id");
    try {
      const v = JSON.parse(await textPromise);
      const e = v.error && typeof v.error === "object" ? v.error : v;
      if (e.code) code = String(e.code);
      if (e.message || e.detail || typeof v.error === "string") message = String(e.message || e.detail || v.error);
      if (e.request_id) requestId = e.request_id;
    } catch (_) {
      /* not JSON: keep the status line */
    }
    return new ApiError(status, code, message, requestId);
  }

  async function api(method, path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (token()) headers.set("Authorization", `Bearer ${token()}`);
    let body = opts.body;
    if (opts.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(opts.json);
    }
    const started = performance.now();
    let r;
    try {
      r = await fetch(path, { method, headers, body, signal: opts.signal, cache: "no-cache" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      logCall(method, path, "network error");
      throw new ApiError(0, "network_error", `petal could not be reached (${e.message})`);
    }
    logCall(method, path, r.status, performance.now() - started);
    if (!r.ok) throw await errorOf(r.status, r.statusText, r.headers, r.text());
    return r;
  }
  const getJson = async (path, opts) => (await api("GET", path, opts)).json();

  // An upload with progress (fetch cannot report it): resolves to { status, headers, json }.
  function upload(method, path, form, headers, onProgress, signal) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, path);
      if (token()) xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
      for (const [k, v] of Object.entries(headers || {})) xhr.setRequestHeader(k, v);
      const started = performance.now();
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded, e.total);
      xhr.onerror = () => {
        logCall(method, path, "network error");
        reject(new ApiError(0, "network_error", "the upload did not reach petal (connection lost or refused)"));
      };
      xhr.onabort = () => reject(new DOMException("aborted", "AbortError"));
      xhr.onload = async () => {
        logCall(method, path, xhr.status, performance.now() - started);
        const hdrs = { get: (k) => xhr.getResponseHeader(k) };
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve({ status: xhr.status, headers: hdrs, json: JSON.parse(xhr.responseText) });
          } catch (e) {
            reject(new ApiError(xhr.status, "unreadable_answer", `petal's answer is not JSON: ${e.message}`));
          }
        } else reject(await errorOf(xhr.status, xhr.statusText, hdrs, Promise.resolve(xhr.responseText)));
      };
      if (signal) signal.addEventListener("abort", () => xhr.abort());
      xhr.send(form);
    });
  }

  // Server-sent events over fetch (EventSource cannot send a token): calls onEvent(name, data).
  async function follow(path, signal, onEvent) {
    const r = await api("GET", path, { signal, headers: { Accept: "text/event-stream" } });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let name = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) onEvent(name, JSON.parse(data.join("\n")));
          name = "message";
          data = [];
        } else if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }

  // --- errors and the token ----------------------------------------------------------------------
  function errorBox(err, what) {
    if (!(err instanceof ApiError)) err = new ApiError(0, "console_error", String(err && err.message ? err.message : err));
    const parts = err.message.split(/\n|; /).map((x) => x.trim()).filter(Boolean);
    return h(
      "div",
      { class: "error", role: "alert", "data-code": err.code },
      h("p", {}, what ? h("strong", { text: `${what}: ` }) : null, h("span", { class: "code", text: err.code }), err.status ? h("span", { class: "muted", text: ` (HTTP ${err.status})` }) : null),
      parts.length > 1 ? h("ul", { class: "problems" }, parts.map((p) => h("li", { text: p }))) : h("p", { text: err.message }),
      err.requestId ? h("p", { class: "muted" }, "Request id ", h("code", { text: err.requestId })) : null
    );
  }

  // What every action's error handler does first: a request stopped because its page was left
  // needs nothing; a refused token asks for another. True when the error was dealt with so.
  function interrupted(e) {
    if (e.name === "AbortError") return true;
    if (e instanceof ApiError && e.status === 401) {
      tokenPage(e);
      return true;
    }
    return false;
  }

  // A version's evaluation report, or null when it has none (404).
  const evaluationOf = (base, signal) =>
    getJson(`${base}/evaluation`, { signal }).catch((e) => {
      if (e.status === 404) return null;
      throw e;
    });

  function renderWho() {
    const who = document.getElementById("who");
    if (token()) {
      who.replaceChildren(
        h("span", { text: "Token given for this tab" }),
        h("button", { type: "button", class: "secondary", id: "forget-token", onclick: () => { sessionStorage.removeItem(TOKEN_KEY); renderWho(); render(); } }, "Forget token")
      );
    } else {
      who.replaceChildren(h("button", { type: "button", class: "secondary", id: "give-token", onclick: () => tokenPage(null) }, "Give a token"));
    }
  }

  function tokenPage(err) {
    leave();
    const input = h("input", { type: "password", id: "token-input", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
    const form = h(
      "form",
      {
        id: "token-form",
        onsubmit: (e) => {
          e.preventDefault();
          if (!input.value.trim()) return input.focus();
          sessionStorage.setItem(TOKEN_KEY, input.value.trim());
          renderWho();
          render();
        },
      },
      h("label", { for: "token-input" }, "API token"),
      input,
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Use this token"))
    );
    show(
      h("h1", { text: "An API token, please" }),
      h("p", { text: "This petal has bearer tokens configured (auth.tokens). The token is kept in this browser tab only and sent as Authorization: Bearer with each call; closing the tab forgets it." }),
      err && token() ? errorBox(err, "The token was refused") : null,
      form
    );
    input.focus();
  }

  // --- pages -------------------------------------------------------------------------------------
  const routes = [
    [/^#\/try(?:\?(.*))?$/, tryPage, "Try a model"],
    [/^#\/train$/, trainPage, "Train"],
    [/^#\/jobs\/([0-9a-fA-F-]{36})$/, jobPage, "Job"],
    [/^#\/models$/, modelsPage, "Models"],
    [/^#\/models\/([^/?#]+)$/, modelPage, "Model"],
    [/^#\/models\/([^/?#]+)\/(\d+)$/, versionPage, "Version"],
  ];

  // Leaves the current page: its requests and streams stop, its blob: URLs are released.
  function leave() {
    if (pageAbort) pageAbort.abort();
    pageAbort = new AbortController();
    for (const u of objectUrls) URL.revokeObjectURL(u);
    objectUrls = [];
    return pageAbort.signal;
  }

  async function render(moveFocus) {
    const signal = leave();
    const hash = location.hash.startsWith("#/") ? location.hash : "#/try";
    let found = routes.find(([re]) => re.test(hash));
    if (!found) found = routes[0];
    const [re, page, title] = found;
    const section = hash.split(/[/?]/)[1];
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === section || (section === "jobs" && a.dataset.nav === "train")) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = `${title} · petal console`;
    show(h("p", { class: "muted", text: "Loading…" }));
    try {
      let args;
      try {
        args = (hash.match(re) || []).slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x)));
      } catch (_) {
        throw new ApiError(0, "bad_address", `This page's address is malformed: ${hash}`);
      }
      await page(signal, ...args);
      if (moveFocus && !signal.aborted) main.focus();
    } catch (e) {
      if (signal.aborted || interrupted(e)) return;
      show(h("h1", { text: title }), errorBox(e));
    }
  }

  function dropZone(id, label, accept, multiple, onFiles) {
    const text = `${label} ${multiple ? "choose files:" : "choose a file:"}`;
    const input = h("input", { type: "file", id, accept, multiple, onchange: () => input.files.length && onFiles([...input.files]) });
    // The native file input is the keyboard's way in (focusable, labelled); the zone around it
    // takes drops.
    const zone = h(
      "div",
      {
        class: "drop",
        role: "group",
        "aria-label": text,
        ondragover: (e) => {
          e.preventDefault();
          zone.classList.add("over");
        },
        ondragleave: () => zone.classList.remove("over"),
        ondrop: (e) => {
          e.preventDefault();
          zone.classList.remove("over");
          if (e.dataTransfer.files.length) onFiles([...e.dataTransfer.files]);
        },
      },
      h("p", {}, h("label", { for: id }, h("strong", { text }))),
      input
    );
    return { zone, input };
  }

  // Try a model: images in, top-k classes out.
  async function tryPage(signal, query) {
    const params = new URLSearchParams(query || "");
    const { models } = await getJson("/models", { signal });
    show(h("h1", { text: "Try a model" }));
    if (!models.length) {
      main.append(h("p", { class: "notice" }, "The registry has no model yet. ", h("a", { href: "#/train" }, "Train one"), " or publish one with petal publish."));
      return;
    }
    const modelSel = h("select", { id: "try-model", name: "model" }, models.map((m) => h("option", { value: m.name, text: m.name })));
    const refSel = h("select", { id: "try-ref", name: "ref" });
    const topK = h("input", { type: "number", id: "try-topk", name: "top_k", min: "1", max: "100", value: "5", inputmode: "numeric" });
    const results = h("section", { id: "try-results", "aria-live": "polite", "aria-label": "Results" });
    const fillRefs = () => {
      const m = models.find((x) => x.name === modelSel.value);
      refSel.replaceChildren();
      add(refSel, [
        h("option", { value: "", text: "default (served, else latest)" }),
        Object.entries(m.aliases).map(([a, v]) => h("option", { value: `alias:${a}`, text: `alias ${a} → version ${v}` })),
        [...m.versions].reverse().map((v) => h("option", { value: `version:${v}`, text: `version ${v}` })),
      ]);
    };
    const preferred = params.get("model") || (models.find((m) => m.aliases.production) || models[0]).name;
    if (models.some((m) => m.name === preferred)) modelSel.value = preferred;
    fillRefs();
    if (params.get("ref")) refSel.value = params.get("ref");
    modelSel.addEventListener("change", fillRefs);
    let last = [];
    // Each run supersedes the one before: an older answer arriving late is dropped, and the
    // previous run's thumbnails are released once the new ones show.
    let runs = 0;
    let shown = [];
    const run = async (files) => {
      const ticket = ++runs;
      const urls = await classify(files, { model: modelSel.value, ref: refSel.value, topK: topK.value }, results, signal, () => ticket === runs);
      if (ticket !== runs) return urls.forEach((u) => URL.revokeObjectURL(u));
      shown.forEach((u) => URL.revokeObjectURL(u));
      shown = urls;
    };
    const { zone } = dropZone("try-files", "Drop images here, paste them, or", "image/jpeg,image/png,image/webp", true, (f) => run((last = f)));
    main.append(
      h("p", { class: "muted", text: "Images go to POST /classify (JPEG, PNG or WebP; several at once). Nothing is stored." }),
      h("div", { class: "fields" }, h("label", { for: "try-model" }, "Model", modelSel), h("label", { for: "try-ref" }, "Version or alias", refSel), h("label", { for: "try-topk" }, "Classes to show", topK)),
      zone,
      h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "try-again", onclick: () => last.length && run(last) }, "Classify again")),
      results
    );
    document.addEventListener(
      "paste",
      (e) => {
        const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
        if (files.length) run((last = files));
      },
      { signal }
    );
  }

  // Classifies `files` and shows the answers while `current()` holds; returns the blob: URLs made.
  async function classify(files, choice, results, signal, current) {
    const images = files.filter((f) => /^image\//.test(f.type) || /\.(jpe?g|png|webp)$/i.test(f.name));
    if (!images.length) {
      results.replaceChildren(errorBox(new ApiError(0, "not_an_image", "Choose JPEG, PNG or WebP images.")));
      return [];
    }
    const q = new URLSearchParams({ model: choice.model, top_k: String(Math.min(100, Math.max(1, parseInt(choice.topK, 10) || 5))) });
    if (choice.ref) {
      const [kind, value] = choice.ref.split(":");
      q.set(kind, value);
    }
    results.replaceChildren(h("p", { class: "muted", text: `Classifying ${images.length} image${images.length > 1 ? "s" : ""}…` }));
    const cards = [];
    const summaries = [];
    const urls = [];
    try {
      for (let start = 0; start < images.length; start += MAX_IMAGES) {
        const batch = images.slice(start, start + MAX_IMAGES);
        const form = new FormData();
        for (const f of batch) form.append("image", f, f.name);
        const t0 = performance.now();
        const v = await (await api("POST", `/classify?${q}`, { body: form, signal })).json();
        const roundTrip = performance.now() - t0;
        summaries.push(
          h(
            "p",
            { class: "timings", "data-model": v.model, "data-version": v.version },
            `${v.model} version ${v.version} on ${v.provider} · ${batch.length} image${batch.length > 1 ? "s" : ""}: decode and transform ${ms(v.timings.preprocess_ms)}, queue and model ${ms(v.timings.infer_ms)}, server total ${ms(v.timings.total_ms)}, round trip ${ms(roundTrip)}`
          )
        );
        v.results.forEach((r, i) => {
          urls.push(objectUrl(batch[i])); // released by the next run, or when the page is left
          cards.push(resultCard(batch[i], urls[urls.length - 1], r.predictions));
        });
      }
      if (!current()) return urls;
      results.replaceChildren(...summaries, h("div", { class: "results" }, cards));
      announce(`${images.length} image${images.length > 1 ? "s" : ""} classified; first: ${cards[0].querySelector(".top-class").textContent}`);
    } catch (e) {
      if (!interrupted(e) && current()) results.replaceChildren(errorBox(e, "Classification failed"));
    }
    return urls;
  }

  function resultCard(file, url, predictions) {
    const list = h("ol", { class: "preds", "aria-label": `Classes for ${file.name}` });
    predictions.forEach((p, j) => {
      const bar = h("span");
      bar.style.width = `${Math.max(0.5, 100 * p.probability).toFixed(1)}%`;
      list.append(
        h(
          "li",
          { "data-class": p.name, "data-probability": p.probability },
          h(j === 0 ? "strong" : "span", { class: j === 0 ? "name top-class" : "name", text: p.name }),
          h("span", { class: "p", text: pct(p.probability) }),
          h("span", { class: "bar", "aria-hidden": "true" }, bar)
        )
      );
    });
    return h("article", { class: "result" }, h("figure", {}, h("img", { src: url, alt: file.name }), h("figcaption", { text: file.name })), list);
  }

  // Train: a dataset archive and a spec, checked, then submitted and followed.
  async function trainPage(signal) {
    const doc = await getJson("/openapi.json", { signal }).catch((e) => {
      if (e.name === "AbortError") throw e;
      return null; // the form falls back to the common backbones
    });
    const schema = (name) => (doc && doc.components && doc.components.schemas && doc.components.schemas[name]) || {};
    const archs = schema("Arch").enum || ["mobilenet_v2", "resnet18", "resnet50", "efficientnet_b0"];
    const field = (id, label, attrs) => h("label", { for: id }, label, h("input", Object.assign({ id, name: id }, attrs)));
    const check = (id, label, attrs) => h("label", { class: "check", for: id }, h("input", Object.assign({ type: "checkbox", id, name: id }, attrs)), label);
    let file = null;
    const chosen = h("p", { id: "dataset-chosen", class: "muted", "aria-live": "polite", text: "No dataset chosen." });
    const { zone } = dropZone("dataset-file", "Drop the dataset archive (zip, tar or tar.gz of an ImageFolder), or", ".zip,.tar,.tgz,.gz,application/zip,application/x-tar,application/gzip", false, (files) => {
      file = files[0];
      chosen.textContent = `${file.name}, ${bytes(file.size)}`;
      invalidate();
    });
    const form = h(
      "form",
      { id: "train-form", novalidate: true, onsubmit: (e) => e.preventDefault(), oninput: () => invalidate(), onchange: () => invalidate() },
      h("fieldset", {}, h("legend", { text: "Dataset" }), zone, chosen, h("div", { class: "fields" }, field("dataset-name", "Name (for provenance)", { type: "text", placeholder: "e.g. my flowers" }), field("dataset-terms", "Terms it may be used under", { type: "text", placeholder: "e.g. CC BY 4.0, internal use only" }))),
      h(
        "fieldset",
        {},
        h("legend", { text: "Model" }),
        h("div", { class: "fields" }, field("model-name", "Publish as model", { type: "text", required: true, pattern: "[a-z0-9][a-z0-9._-]{0,63}", placeholder: "e.g. flowers", autocomplete: "off" }), field("promote", "Then move alias (optional)", { type: "text", placeholder: "e.g. staging", pattern: "[a-z0-9][a-z0-9._-]{0,63}" })),
        h("fieldset", { class: "inner" }, h("legend", { text: "Backbones (the best validation accuracy wins)" }), h("div", { class: "fields" }, archs.map((a) => check(`bb-${a}`, a, { value: a, checked: a === "mobilenet_v2", "data-backbone": a })))),
        check("acknowledge", "Acknowledge the non-commercial terms of ImageNet-pretrained weights (needed to promote where this deployment's use is commercial)")
      ),
      h(
        "fieldset",
        {},
        h("legend", { text: "Recipe (empty fields keep the reference recipe)" }),
        h(
          "div",
          { class: "fields" },
          field("epochs1", "Phase 1 epochs (head only)", { type: "number", min: "1", max: "1000", placeholder: "reference" }),
          field("epochs2", "Phase 2 epochs (every layer)", { type: "number", min: "0", max: "1000", placeholder: "reference" }),
          field("batch-size", "Batch size", { type: "number", min: "1", max: "4096", placeholder: "reference" }),
          field("lr1", "Phase 1 learning rate", { type: "number", step: "any", min: "0", placeholder: "reference" }),
          field("lr2", "Phase 2 learning rate (top group)", { type: "number", step: "any", min: "0", placeholder: "reference" }),
          field("val-fraction", "Validation share (datasets without a split)", { type: "number", step: "any", min: "0", max: "1", placeholder: "0.2" }),
          h("label", { for: "device" }, "Device", h("select", { id: "device", name: "device" }, ["auto", "cpu", "cuda"].map((d) => h("option", { value: d, text: d })))),
          check("cached-features", "Phase 1 on features computed once (faster on a CPU)"),
          check("skip-bad", "Leave undecodable images out instead of refusing the dataset")
        ),
        h("details", {}, h("summary", { text: "More of the job spec (JSON merged over the form)" }), h("label", { for: "extra-spec" }, "Job spec fields (schema JobSpec in the API document)", h("textarea", { id: "extra-spec", name: "extra", spellcheck: "false", placeholder: '{"recipe": {"label_smoothing": 0.1}}' })))
      ),
      h("div", { class: "actions" }, h("button", { type: "button", id: "check-button", class: "secondary", onclick: () => go(false) }, "Check the dataset"), h("button", { type: "button", id: "submit-button", onclick: () => go(true) }, "Start training"))
    );
    const report = h("section", { id: "check-report", "aria-live": "polite", "aria-label": "Dataset check" });
    const jobs = h("section", { id: "jobs", "aria-label": "Recent jobs" });
    show(h("h1", { text: "Train a model" }), h("p", { class: "muted", text: "The archive and spec go to POST /finetune/check (read and checked, nothing stored), then to POST /finetune, which queues the job." }), form, report, jobs);

    let idempotencyKey = null; // the same key for retries of one unchanged submission
    function invalidate() {
      idempotencyKey = null;
    }
    const val = (id) => document.getElementById(id).value.trim();
    function spec() {
      const out = { model: val("model-name") };
      const backbones = archs.filter((a) => document.getElementById(`bb-${a}`).checked);
      if (backbones.length) out.backbones = backbones;
      for (const [id, key, parse] of [["epochs1", "epochs1", parseInt], ["epochs2", "epochs2", parseInt], ["batch-size", "batch_size", parseInt], ["lr1", "lr1", parseFloat], ["lr2", "lr2", parseFloat]]) {
        if (val(id) !== "") out[key] = parse(val(id), 10);
      }
      if (val("val-fraction") !== "") out.split = { val_fraction: parseFloat(val("val-fraction")) };
      if (val("device") !== "auto") out.device = val("device");
      if (document.getElementById("cached-features").checked) out.cached_features = true;
      if (document.getElementById("skip-bad").checked) out.skip_bad_images = true;
      if (val("dataset-name") || val("dataset-terms")) out.dataset = Object.assign({ name: val("dataset-name") }, val("dataset-terms") ? { terms: val("dataset-terms") } : {});
      if (val("promote")) out.promote = val("promote");
      if (document.getElementById("acknowledge").checked) out.acknowledge_terms = true;
      if (val("extra-spec")) {
        let extra;
        try {
          extra = JSON.parse(val("extra-spec"));
        } catch (e) {
          throw new ApiError(0, "invalid_json", `More of the job spec: ${e.message}`);
        }
        merge(out, extra);
      }
      return out;
    }
    async function go(queue) {
      let body;
      try {
        if (!val("model-name")) throw new ApiError(0, "model_name_missing", "Give the model a name: the job publishes its winner as a version of it.");
        if (!file) throw new ApiError(0, "dataset_missing", "Choose a dataset archive first.");
        body = new FormData();
        body.append("spec", JSON.stringify(spec()));
        body.append("dataset", file, file.name);
      } catch (e) {
        report.replaceChildren(errorBox(e, "Not sent"));
        return;
      }
      const buttons = [document.getElementById("check-button"), document.getElementById("submit-button")];
      buttons.forEach((b) => (b.disabled = true));
      const progress = h("progress", { max: "100", value: "0", "aria-label": "Upload" });
      report.replaceChildren(h("p", { text: queue ? "Uploading and queueing…" : "Uploading and checking…" }), progress);
      try {
        if (queue && !idempotencyKey) idempotencyKey = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
        const r = await upload("POST", queue ? "/finetune" : "/finetune/check", body, queue ? { "Idempotency-Key": idempotencyKey } : {}, (done, total) => (progress.value = (100 * done) / total), signal);
        if (queue) {
          location.hash = `#/jobs/${r.json.id}`;
          return;
        }
        report.replaceChildren(checkReport(r.json));
        report.querySelector("h2").focus();
        announce("The dataset passed every check.");
      } catch (e) {
        if (interrupted(e)) return;
        report.replaceChildren(errorBox(e, queue ? "The job was not queued" : "The dataset did not pass"));
        report.querySelector(".error").setAttribute("tabindex", "-1");
        report.querySelector(".error").focus();
      } finally {
        buttons.forEach((b) => (b.disabled = false));
      }
    }
    const list = await jobsTable(signal).catch((e) => {
      if (e.name === "AbortError") throw e;
      return errorBox(e, "The jobs could not be listed");
    });
    jobs.replaceChildren(h("h2", { text: "Recent jobs" }), list);
  }

  function merge(into, extra) {
    for (const [k, v] of Object.entries(extra)) {
      if (v && typeof v === "object" && !Array.isArray(v) && into[k] && typeof into[k] === "object" && !Array.isArray(into[k])) merge(into[k], v);
      else into[k] = v;
    }
    return into;
  }

  function checkReport(c) {
    const d = c.dataset;
    const max = Math.max(1, ...(d.class_counts || []));
    const names = d.class_names || d.classes;
    return h(
      "div",
      { id: "check-ok" },
      h("h2", { text: "What petal read", tabindex: "-1" }),
      h("p", { class: "ok", text: "The dataset and the spec pass every check. Nothing was stored." }),
      h(
        "div",
        { class: "stats" },
        stat("classes", d.classes.length, "check-classes"),
        stat("training images", d.train_images, "check-train"),
        stat("validation images", d.val_images, "check-val"),
        d.test_images ? stat("test images", d.test_images) : null,
        stat("imbalance (largest / smallest class)", d.imbalance ? `${d.imbalance.toFixed(2)}×` : "–", "check-imbalance"),
        stat("images left out", d.warnings, "check-warnings"),
        stat("archive", bytes(c.size))
      ),
      d.imbalance >= 3 ? h("p", { class: "notice", text: `The classes are imbalanced: the largest has ${d.imbalance.toFixed(1)}× the training images of the smallest. Consider the recipe's imbalance counter-measures (recipe.imbalance).` }) : null,
      d.warnings ? h("p", { class: "notice", text: `${d.warnings} image(s) will be left out (skip_bad_images).` }) : null,
      h("p", { class: "muted" }, `Layout ${d.layout}; split: ${d.split}; sha256 `, h("code", { text: c.sha256 })),
      h(
        "div",
        { class: "scroll", tabindex: "0" },
        h(
          "table",
          { id: "check-classes-table" },
          h("caption", { class: "sr-only", text: "Training images per class" }),
          h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Class" }), h("th", { scope: "col", text: "Folder" }), h("th", { scope: "col", class: "num", text: "Training images" }), h("th", { scope: "col", text: "" }))),
          h(
            "tbody",
            {},
            d.classes.map((cls, i) => {
              const n = (d.class_counts || [])[i];
              const bar = h("span", { class: "countbar" });
              bar.style.width = `${n === undefined ? 0 : Math.max(2, (120 * n) / max)}px`;
              return h("tr", {}, h("td", { text: names[i] || cls }), h("td", {}, h("code", { text: cls })), h("td", { class: "num", text: n === undefined ? "–" : n }), h("td", { "aria-hidden": "true" }, bar));
            })
          )
        )
      ),
      h("details", {}, h("summary", { text: "The recipe the job would run" }), h("pre", { tabindex: "0", text: JSON.stringify(c.recipe, null, 2) }))
    );
  }

  async function jobsTable(signal) {
    const { jobs } = await getJson("/jobs?limit=20", { signal });
    if (!jobs.length) return h("p", { class: "muted", text: "No jobs yet." });
    return h(
      "div",
      { class: "scroll", tabindex: "0" },
      h(
        "table",
        { id: "jobs-table" },
        h("thead", {}, h("tr", {}, ["Created", "Model", "State", "Progress", "Result"].map((x) => h("th", { scope: "col", text: x })))),
        h(
          "tbody",
          {},
          jobs.map((j) =>
            h(
              "tr",
              {},
              h("td", {}, h("a", { href: `#/jobs/${j.id}`, text: when(j.created_at) })),
              h("td", { text: j.spec.model }),
              h("td", {}, h("span", { class: `badge ${j.state}`, text: j.state })),
              h("td", { class: "num", text: `${Math.round(j.progress.percent)} %` }),
              h("td", {}, j.result ? h("a", { href: `#/models/${enc(j.result.model)}/${j.result.version}`, text: `version ${j.result.version}, ${pct(j.result.best_val_accuracy)}` }) : j.error ? h("code", { text: j.error.code }) : "")
            )
          )
        )
      )
    );
  }

  // A job, live: its state, progress and curves as the server-sent events arrive.
  async function jobPage(signal, id) {
    let job = await getJson(`/jobs/${id}`, { signal });
    const badge = h("span", { id: "job-state", class: "badge" });
    const stage = h("p", { id: "job-stage", tabindex: "-1" });
    const bar = h("progress", { id: "job-progress", max: "100", value: "0", "aria-label": "Training progress" });
    const stats = h("div", { class: "stats", id: "job-stats" });
    const cancel = h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel the job");
    const outcome = h("section", { id: "job-outcome" });
    const charts = h("div", { class: "charts", id: "job-charts" });
    const table = h("details", { id: "job-epochs" });
    show(
      h("h1", {}, "Job ", h("code", { text: id.slice(0, 8) }), " ", badge),
      h("p", { class: "muted" }, `Model ${job.spec.model} · backbones ${job.spec.backbones.join(", ")} · submitted ${when(job.created_at)}${job.owner ? ` by ${job.owner}` : ""}`),
      stage,
      bar,
      stats,
      h("div", { class: "actions" }, cancel),
      outcome,
      h("h2", { text: "Loss and accuracy per epoch" }),
      charts,
      table
    );
    const terminal = () => ["succeeded", "failed", "canceled"].includes(job.state);
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        job = await (await api("POST", `/jobs/${id}/cancel`, { signal })).json();
        stage.focus();
        announce(terminal() ? "The job is canceled." : "The job was asked to stop; it stops at its next step.");
        drawAll();
      } catch (e) {
        if (interrupted(e)) return;
        outcome.replaceChildren(errorBox(e, "Not canceled"));
        cancel.disabled = false;
      }
    });
    // Progress comes several times a second: it changes only its own nodes; an epoch redraws the
    // curves; a change of state the rest (and is announced).
    function drawProgress() {
      const p = job.progress;
      const where = [p.backbone, p.phase ? `phase ${p.phase}` : null, p.epoch ? `epoch ${p.epoch}${p.epochs ? ` of ${p.epochs}` : ""}` : null, p.step && p.steps ? `step ${p.step} of ${p.steps}` : null].filter(Boolean).join(" · ");
      stage.textContent = `Stage: ${p.stage}${where ? ` — ${where}` : ""}`;
      bar.value = p.percent || 0;
      bar.textContent = `${Math.round(p.percent || 0)} %`;
      stats.replaceChildren(
        stat("done", `${(p.percent || 0).toFixed(1)} %`, "job-percent"),
        stat("time left (estimate)", duration(p.eta_s), "job-eta"),
        stat("training images per second", p.images_per_s ? p.images_per_s.toFixed(1) : "–", "job-speed"),
        stat("epochs finished", job.epochs.length, "job-epoch-count")
      );
    }
    function drawEpochs() {
      const open = table.open;
      charts.replaceChildren(...curves(job.epochs, job.spec));
      table.replaceChildren(h("summary", { text: "Every epoch's numbers" }), epochTable(job.epochs));
      table.open = open;
    }
    function drawState() {
      if (badge.textContent !== job.state) {
        if (badge.textContent) announce(`The job is ${job.state}.`);
        badge.textContent = job.state;
        badge.className = `badge ${job.state}`;
      }
      cancel.hidden = terminal();
      const parts = [];
      if (job.result) {
        const r = job.result;
        parts.push(
          h(
            "p",
            { class: "ok", id: "job-result" },
            "Published ",
            h("a", { href: `#/models/${enc(r.model)}/${r.version}`, text: `${r.model} version ${r.version}` }),
            `: ${r.winner} won with ${pct(r.best_val_accuracy)} validation accuracy${r.promoted ? `; alias ${r.promoted} moved to it` : ""}. `,
            h("a", { href: `#/try?model=${enc(r.model)}&ref=${enc(`version:${r.version}`)}`, text: "Try it" })
          )
        );
        const others = Object.entries(r.backbones);
        if (others.length > 1) parts.push(h("p", { class: "muted", text: `Every backbone: ${others.map(([b, a]) => `${b} ${pct(a)}`).join(", ")}` }));
      }
      if (job.error) parts.push(errorBox(new ApiError(0, job.error.code, job.error.message), job.state === "canceled" ? "Canceled" : "The job failed"));
      if (job.warnings && job.warnings.length) parts.push(h("ul", { class: "notice" }, job.warnings.map((w) => h("li", { text: w }))));
      outcome.replaceChildren(...parts);
    }
    function drawAll() {
      drawState();
      drawProgress();
      drawEpochs();
    }
    drawAll();
    // Follow the events (in the background: the page is shown now); after a dropped connection,
    // look again and follow again.
    (async () => {
      while (!terminal() && !signal.aborted) {
        let lost = null;
        try {
          await follow(`/jobs/${id}/events`, signal, (name, data) => {
            if (name === "state") {
              job = data;
              drawAll();
            } else if (name === "progress") {
              job.progress = data;
              drawProgress();
            } else if (name === "epoch") {
              job.epochs.push(data);
              drawEpochs();
              drawProgress();
            } else if (name === "resumed") {
              // A run went on from a checkpoint: its backbone's epochs are those it restored.
              job.epochs = job.epochs.filter((e) => e.backbone !== data.backbone).concat(data.epochs || []);
              drawEpochs();
            }
          });
          if (!terminal() && !signal.aborted) job = await getJson(`/jobs/${id}`, { signal });
        } catch (e) {
          if (signal.aborted || interrupted(e)) return;
          lost = e;
        }
        drawAll();
        if (lost) outcome.append(errorBox(lost, "Lost the job's events; trying again"));
        if (!terminal()) await new Promise((r) => setTimeout(r, 1500));
      }
    })();
  }

  const PALETTE = ["#5b1f6b", "#1a5fd0", "#b3461a", "#1d6b2c", "#8a4b00", "#006d77", "#a1151b", "#444"];

  // Loss and accuracy charts from epoch metrics (one line per backbone and split).
  function curves(epochs, spec) {
    const byBackbone = new Map();
    for (const e of epochs) {
      if (!byBackbone.has(e.backbone)) byBackbone.set(e.backbone, []);
      byBackbone.get(e.backbone).push(e);
    }
    const charts = [];
    for (const [title, keys, unit] of [["Accuracy", ["train_accuracy", "val_accuracy"], 1], ["Loss", ["train_loss", "val_loss"], null]]) {
      const series = [];
      [...byBackbone.entries()].forEach(([backbone, list], b) => {
        for (const key of keys) {
          series.push({ name: `${backbone} ${key.startsWith("val") ? "validation" : "training"}`, color: PALETTE[b % PALETTE.length], dashed: key.startsWith("train"), points: list.map((e, i) => [i + 1, e[key]]).filter((p) => Number.isFinite(p[1])) });
        }
      });
      const boundary = [...byBackbone.values()][0];
      const phase1 = boundary ? boundary.filter((e) => e.phase === 1).length : 0;
      charts.push(lineChart(title, series, { yMax: unit, boundary: phase1 && boundary.length > phase1 ? phase1 + 0.5 : null, planned: spec ? (spec.epochs1 || 0) + (spec.epochs2 || 0) : 0 }));
    }
    return charts;
  }

  function lineChart(title, series, opts) {
    const W = 480, H = 260, L = 46, R = 12, T = 14, B = 34;
    const xs = series.flatMap((x) => x.points.map((p) => p[0]));
    const ys = series.flatMap((x) => x.points.map((p) => p[1]));
    const xMax = Math.max(2, opts.planned || 0, ...xs);
    const yMax = opts.yMax || Math.max(0.1, ...ys) * 1.08;
    const X = (x) => L + ((x - 1) / (xMax - 1)) * (W - L - R);
    const Y = (y) => T + (1 - y / yMax) * (H - T - B);
    const last = series.filter((x) => x.points.length).map((x) => `${x.name} ${opts.yMax ? pct(x.points[x.points.length - 1][1]) : x.points[x.points.length - 1][1].toFixed(3)}`);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title} per epoch. ${last.length ? `Latest: ${last.join(", ")}.` : "No epoch finished yet."}`, "data-chart": title.toLowerCase() });
    for (let i = 0; i <= 4; i++) {
      const y = (yMax * i) / 4;
      svg.append(s("line", { x1: L, x2: W - R, y1: Y(y), y2: Y(y), stroke: "#e3e3ea" }), s("text", { x: L - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#4a4a55" }, opts.yMax ? `${Math.round(100 * y)}%` : y.toFixed(2)));
    }
    const step = Math.max(1, Math.ceil((xMax - 1) / 10));
    for (let x = 1; x <= xMax; x += step) svg.append(s("text", { x: X(x), y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#4a4a55" }, x));
    svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11, fill: "#4a4a55" }, "epoch"));
    if (opts.boundary) svg.append(s("line", { x1: X(opts.boundary), x2: X(opts.boundary), y1: T, y2: H - B, stroke: "#77778a", "stroke-dasharray": "2 3" }), s("text", { x: X(opts.boundary) + 4, y: T + 10, "font-size": 10, fill: "#4a4a55" }, "phase 2"));
    for (const line of series) {
      if (!line.points.length) continue;
      svg.append(s("polyline", { fill: "none", stroke: line.color, "stroke-width": 2, "stroke-dasharray": line.dashed ? "5 4" : null, points: line.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" "), "data-series": line.name, "data-points": line.points.length }));
      for (const [x, y] of line.points) svg.append(s("circle", { cx: X(x).toFixed(1), cy: Y(y).toFixed(1), r: 2.5, fill: line.color }, s("title", {}, `${line.name}, epoch ${x}: ${opts.yMax ? pct(y) : y.toFixed(4)}`)));
    }
    const legend = h("p", { class: "legend" }, series.map((x) => h("span", {}, h("i", { class: x.dashed ? "dashed" : "" }), x.name)));
    legend.querySelectorAll("i").forEach((el, i) => (el.style.borderTopColor = series[i].color));
    return h("figure", { class: "chart" }, h("figcaption", {}, h("strong", { text: title })), svg, legend);
  }

  function epochTable(epochs) {
    if (!epochs.length) return h("p", { class: "muted", text: "No epoch finished yet." });
    return h(
      "div",
      { class: "scroll", tabindex: "0" },
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["Backbone", "Phase", "Epoch", "LR", "Train loss", "Train acc.", "Val loss", "Val acc.", "Images/s", "Seconds"].map((x) => h("th", { scope: "col", text: x })))),
        h(
          "tbody",
          {},
          epochs.map((e) =>
            h(
              "tr",
              {},
              h("td", { text: e.backbone }),
              h("td", { class: "num", text: e.phase }),
              h("td", { class: "num", text: e.epoch }),
              h("td", { class: "num", text: e.lr.toExponential(1) }),
              h("td", { class: "num", text: e.train_loss.toFixed(4) }),
              h("td", { class: "num", text: pct(e.train_accuracy) }),
              h("td", { class: "num", text: e.val_loss.toFixed(4) }),
              h("td", { class: "num" }, pct(e.val_accuracy), e.best ? " ★" : ""),
              h("td", { class: "num", text: e.images_per_s.toFixed(1) }),
              h("td", { class: "num", text: e.seconds.toFixed(1) })
            )
          )
        )
      )
    );
  }

  // Models: every model, its versions side by side, aliases and their history, promotion.
  async function modelsPage(signal) {
    const { models } = await getJson("/models", { signal });
    // Each model's versions (metrics, terms) for the glance columns, at most 50 models at a time.
    const details = new Map();
    await Promise.all(
      models.slice(0, 50).map(async (m) => {
        if (m.versions.length) details.set(m.name, await getJson(`/models/${enc(m.name)}`, { signal }));
      })
    );
    const latestOf = (m) => {
      const d = details.get(m.name);
      return d && d.versions.find((v) => v.version === m.latest);
    };
    show(h("h1", { text: "Models" }));
    if (!models.length) {
      main.append(h("p", { class: "notice" }, "No model yet. ", h("a", { href: "#/train" }, "Train one"), "."));
      return;
    }
    main.append(
      h(
        "div",
        { class: "scroll", tabindex: "0" },
        h(
          "table",
          { id: "models-table" },
          h("thead", {}, h("tr", {}, ["Model", "Versions", "Latest", "Latest's validation top-1", "Latest's terms", "Aliases"].map((x) => h("th", { scope: "col", text: x })))),
          h(
            "tbody",
            {},
            models.map((m) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/models/${enc(m.name)}`, text: m.name })),
                h("td", { class: "num", text: m.versions.length }),
                h("td", { class: "num", text: m.latest === null || m.latest === undefined ? "–" : m.latest }),
                h("td", { class: "num", text: latestOf(m) && latestOf(m).metrics.val_top1 !== undefined ? pct(latestOf(m).metrics.val_top1) : "–" }),
                h("td", {}, latestOf(m) ? termsBadge(latestOf(m)) : "–"),
                h("td", {}, Object.entries(m.aliases).map(([a, v]) => h("span", { class: "chip", text: `${a} → ${v}` })))
              )
            )
          )
        )
      )
    );
  }

  const METRICS = [["val_top1", "Validation top-1"], ["eval_top1", "Eval top-1"], ["eval_top5", "Eval top-5"], ["eval_macro_f1", "Macro F1"], ["eval_ece", "ECE"], ["val_loss", "Val loss"]];

  async function modelPage(signal, name) {
    const m = await getJson(`/models/${enc(name)}`, { signal });
    const histories = {};
    for (const alias of Object.keys(m.aliases)) {
      histories[alias] = (await getJson(`/models/${enc(name)}/aliases/${enc(alias)}/history`, { signal })).entries;
    }
    // Where each version comes from (base weights, dataset), from the newest 50 manifests.
    const manifests = new Map();
    await Promise.all(
      [...m.versions]
        .reverse()
        .slice(0, 50)
        .map(async (v) => manifests.set(v.version, await getJson(`/models/${enc(name)}/versions/${v.version}`, { signal })))
    );
    const origin = (v) => {
      const p = (manifests.get(v.version) || {}).provenance || {};
      const b = p.base_weights;
      const d = p.dataset;
      return [b ? `${b.arch}${b.catalog ? ` (${b.catalog})` : ""}` : "–", d ? `${d.name || "unnamed"} · ${d.class_names ? d.class_names.length : "?"} classes` : "–"];
    };
    const shown = METRICS.filter(([k]) => m.versions.some((v) => k in v.metrics));
    const aliasesOf = (v) => Object.entries(m.aliases).filter(([, x]) => x === v).map(([a]) => a);
    const best = Math.max(...m.versions.map((v) => v.metrics.val_top1 ?? -1));
    show(
      h("h1", {}, "Model ", h("code", { text: m.name })),
      h("h2", { text: "Versions" }),
      h(
        "div",
        { class: "scroll", tabindex: "0" },
        h(
          "table",
          { id: "versions-table" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Version" }), h("th", { scope: "col", text: "Published" }), h("th", { scope: "col", text: "Base model" }), h("th", { scope: "col", text: "Dataset" }), shown.map(([, label]) => h("th", { scope: "col", class: "num", text: label })), h("th", { scope: "col", text: "Aliases" }), h("th", { scope: "col", text: "Terms" }))),
          h(
            "tbody",
            {},
            [...m.versions].reverse().map((v) =>
              h(
                "tr",
                { "data-version": v.version },
                h("td", {}, h("a", { href: `#/models/${enc(m.name)}/${v.version}`, text: `version ${v.version}` })),
                h("td", { text: when(v.created_at) }),
                origin(v).map((x) => h("td", { text: x })),
                shown.map(([k]) => h("td", { class: "num" }, k in v.metrics ? (k.includes("loss") || k.includes("ece") ? v.metrics[k].toFixed(4) : pct(v.metrics[k])) : "–", k === "val_top1" && v.metrics[k] === best && m.versions.length > 1 ? " (best)" : "")),
                h("td", { class: "aliases" }, aliasesOf(v.version).map((a) => h("span", { class: "chip", "data-alias": a, text: a }))),
                h("td", {}, termsBadge(v))
              )
            )
          )
        )
      ),
      m.versions.some((v) => v.non_commercial.length) ? h("p", { class: "notice" }, h("strong", { text: "Non-commercial terms: " }), "versions marked non-commercial carry terms of their lineage that forbid commercial use (for instance ImageNet-pretrained weights, for non-commercial research). Open a version for its licences.") : null,
      m.versions.length > 1 ? compareForm(m, signal) : null,
      promoteForm(m, histories, signal),
      h("h2", { text: "Aliases and their history" }),
      Object.keys(m.aliases).length ? Object.entries(histories).map(([alias, entries]) => aliasHistory(alias, entries)) : h("p", { class: "muted", text: "No alias yet." })
    );
  }

  // A version's terms at a glance (VersionSummary.non_commercial: the registry's own reading).
  function termsBadge(v) {
    return v.non_commercial.length
      ? h("span", { class: "badge nc", title: v.non_commercial.join("; "), text: "non-commercial" })
      : h("span", { class: "badge succeeded", text: "commercial use allowed" });
  }

  // Two versions side by side: their metrics, their evaluations class by class, their curves.
  function compareForm(m, signal) {
    const newest = [...m.versions].reverse();
    const pick = (id, label, value) =>
      h("label", { for: id }, label, h("select", { id, name: id }, newest.map((v) => h("option", { value: v.version, text: `version ${v.version}`, selected: String(v.version) === String(value) }))));
    const served = m.aliases.production;
    const a = pick("compare-a", "Version A", served !== undefined && served !== newest[0].version ? served : newest[1].version);
    const b = pick("compare-b", "Version B", newest[0].version);
    const out = h("div", { id: "compare-result", "aria-live": "polite" });
    const form = h(
      "form",
      {
        id: "compare-form",
        onsubmit: async (e) => {
          e.preventDefault();
          const [va, vb] = ["compare-a", "compare-b"].map((id) => document.getElementById(id).value);
          out.replaceChildren(h("p", { class: "muted", text: "Reading both versions…" }));
          try {
            const read = async (v) => {
              const base = `/models/${enc(m.name)}/versions/${v}`;
              const manifest = await getJson(base, { signal });
              return { v, manifest, evaluation: await evaluationOf(base, signal) };
            };
            out.replaceChildren(comparison(await read(va), await read(vb)));
          } catch (err) {
            if (interrupted(err)) return;
            out.replaceChildren(errorBox(err, "Not compared"));
          }
        },
      },
      h("h2", { text: "Compare two versions" }),
      h("div", { class: "fields" }, a, b),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "secondary", id: "compare-button" }, "Compare")),
      out
    );
    return form;
  }

  function comparison(A, B) {
    const metric = (x, key) => {
      const e = x.evaluation;
      const best = (x.manifest.provenance && x.manifest.provenance.metrics && x.manifest.provenance.metrics.best) || {};
      if (e && key in { top1: 1, top5: 1, macro_f1: 1, ece: 1 }) return e[key];
      return { top1: best.eval_top1 ?? best.val_top1, top5: best.eval_top5, macro_f1: best.eval_macro_f1, ece: best.eval_ece, val_loss: best.val_loss }[key];
    };
    const rows = [["top1", "Top-1", pct], ["top5", "Top-5", pct], ["macro_f1", "Macro F1", (x) => x.toFixed(4)], ["ece", "Calibration error (ECE, lower is better)", (x) => x.toFixed(4)], ["val_loss", "Validation loss (lower is better)", (x) => x.toFixed(4)]];
    const num = (x) => typeof x === "number" && Number.isFinite(x);
    const table = h(
      "table",
      { id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Measure" }), h("th", { scope: "col", class: "num", text: `Version ${A.v}` }), h("th", { scope: "col", class: "num", text: `Version ${B.v}` }), h("th", { scope: "col", class: "num", text: "B − A" }))),
      h(
        "tbody",
        {},
        rows.map(([key, label, fmt]) => {
          const [x, y] = [metric(A, key), metric(B, key)];
          const delta = num(x) && num(y) ? y - x : null;
          return h("tr", { "data-measure": key }, h("th", { scope: "row", text: label }), h("td", { class: "num", text: num(x) ? fmt(x) : "–" }), h("td", { class: "num", text: num(y) ? fmt(y) : "–" }), h("td", { class: "num", text: delta === null ? "–" : `${delta >= 0 ? "+" : "−"}${key === "top1" || key === "top5" ? pct(Math.abs(delta)) : Math.abs(delta).toFixed(4)}` }));
        })
      )
    );
    const parts = [h("div", { class: "scroll", tabindex: "0" }, table)];
    if (A.evaluation && B.evaluation) {
      const f1 = (e) => new Map(e.per_class.map((c) => [c.class, c.f1]));
      const [fa, fb] = [f1(A.evaluation), f1(B.evaluation)];
      const moved = [...fb.keys()].filter((c) => fa.has(c)).map((c) => [c, fa.get(c), fb.get(c)]).filter(([, x, y]) => x !== y).sort((p, q) => Math.abs(q[2] - q[1]) - Math.abs(p[2] - p[1])).slice(0, 10);
      parts.push(
        h("h3", { text: "Classes that changed most (F1 on each version's evaluation images)" }),
        moved.length
          ? h("div", { class: "scroll", tabindex: "0" }, h("table", { id: "compare-classes" }, h("thead", {}, h("tr", {}, ["Class", `Version ${A.v}`, `Version ${B.v}`, "B − A"].map((x, i) => h("th", { scope: "col", class: i ? "num" : null, text: x })))), h("tbody", {}, moved.map(([c, x, y]) => h("tr", {}, h("td", { text: c }), h("td", { class: "num", text: x.toFixed(3) }), h("td", { class: "num", text: y.toFixed(3) }), h("td", { class: "num", text: `${y >= x ? "+" : "−"}${Math.abs(y - x).toFixed(3)}` }))))))
          : h("p", { class: "muted", text: "No class's F1 differs." })
      );
      if (A.evaluation.dataset_digest !== B.evaluation.dataset_digest) parts.push(h("p", { class: "notice", text: "The two versions were evaluated on different datasets: compare their numbers with care." }));
    } else {
      const missing = [A, B].filter((x) => !x.evaluation).map((x) => `version ${x.v}`);
      parts.push(h("p", { class: "muted", text: `No evaluation report for ${missing.join(" and ")}: classes cannot be compared.` }));
    }
    // Both versions' validation accuracy per epoch, one line each.
    const epochs = (x) => ((x.manifest.provenance && x.manifest.provenance.metrics && x.manifest.provenance.metrics.per_epoch) || []).filter((e) => !x.manifest.provenance.hyperparameters || !x.manifest.provenance.hyperparameters.winner || e.backbone === x.manifest.provenance.hyperparameters.winner);
    const series = [A, B].map((x, i) => ({ name: `version ${x.v} validation`, color: PALETTE[i], dashed: i === 0, points: epochs(x).map((e, k) => [k + 1, e.val_accuracy]).filter((p) => Number.isFinite(p[1])) }));
    if (series.some((x) => x.points.length)) parts.push(h("div", { class: "charts" }, lineChart("Validation accuracy", series, { yMax: 1 })));
    return h("div", {}, parts);
  }

  function aliasHistory(alias, entries) {
    return h(
      "section",
      { class: "alias", "data-alias": alias },
      h("h3", {}, `${alias} → version ${entries[entries.length - 1].version}`),
      h(
        "div",
        { class: "scroll", tabindex: "0" },
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["Seq", "From", "To", "When", "By", "Why"].map((x) => h("th", { scope: "col", text: x })))),
          h("tbody", {}, [...entries].reverse().map((e) => h("tr", {}, h("td", { class: "num", text: e.seq }), h("td", { class: "num", text: e.from ?? "–" }), h("td", { class: "num", text: e.version }), h("td", { text: when(e.at) }), h("td", { text: e.by }), h("td", { text: e.reason || "" }))))
        )
      )
    );
  }

  function promoteForm(m, histories, signal) {
    const versionSel = h("select", { id: "promote-version", name: "version" }, [...m.versions].reverse().map((v) => h("option", { value: v.version, text: `version ${v.version}` })));
    const alias = h("input", { id: "promote-alias", name: "alias", type: "text", value: m.aliases.production !== undefined || !Object.keys(m.aliases).length ? "production" : Object.keys(m.aliases)[0], list: "alias-names", required: true, autocomplete: "off" });
    const reason = h("input", { id: "promote-reason", name: "reason", type: "text", placeholder: "e.g. beats version 1 on the held-out set" });
    const ack = h("input", { id: "promote-ack", name: "acknowledge_terms", type: "checkbox" });
    const terms = h("p", { id: "promote-terms", class: "notice", "aria-live": "polite" });
    const status = h("div", { id: "promote-status", "aria-live": "polite" });
    const showTerms = () => {
      const v = m.versions.find((x) => String(x.version) === versionSel.value);
      terms.hidden = !v.non_commercial.length;
      terms.textContent = v.non_commercial.length ? `Version ${v.version} is for non-commercial use only, because of: ${v.non_commercial.join("; ")}.` : "";
    };
    versionSel.addEventListener("change", showTerms);
    showTerms();
    const form = h(
      "form",
      {
        id: "promote-form",
        onsubmit: async (e) => {
          e.preventDefault();
          const name = alias.value.trim();
          if (!name) return alias.focus();
          // Compare-and-swap: the seq this page read, or 0 for a new alias.
          const seen = histories[name];
          const ifMatch = seen && seen.length ? String(seen[seen.length - 1].seq) : "0";
          try {
            const entry = await (
              await api("PUT", `/models/${enc(m.name)}/aliases/${enc(name)}`, { signal, headers: { "If-Match": `"${ifMatch}"` }, json: { version: Number(versionSel.value), reason: reason.value.trim(), acknowledge_terms: ack.checked } })
            ).json();
            await render();
            const said = `${name} now points to version ${entry.version} (seq ${entry.seq}).`;
            const done = document.getElementById("promote-status");
            if (done) {
              done.replaceChildren(h("p", { class: "ok", tabindex: "-1", text: said }));
              done.firstChild.focus();
            }
            announce(said);
          } catch (err) {
            if (interrupted(err)) return;
            const hint = err.status === 412 ? " Someone moved it since this page was loaded: reload to see where it points now." : "";
            status.replaceChildren(errorBox(new ApiError(err.status, err.code, err.message + hint, err.requestId), "Not promoted"));
          }
        },
      },
      h("h2", { text: "Promote" }),
      h(
        "div",
        { class: "fields" },
        h("label", { for: "promote-version" }, "Version", versionSel),
        h("label", { for: "promote-alias" }, "Alias", alias, h("datalist", { id: "alias-names" }, Object.keys(m.aliases).map((a) => h("option", { value: a })))),
        h("label", { for: "promote-reason" }, "Why", reason)
      ),
      terms,
      h("label", { class: "check", for: "promote-ack" }, ack, "I acknowledge the version's licence terms (required where this deployment's use is commercial)"),
      h("div", { class: "actions" }, h("button", { type: "submit", id: "promote-button" }, "Move the alias")),
      status
    );
    return form;
  }

  async function versionPage(signal, name, version) {
    const base = `/models/${enc(name)}/versions/${version}`;
    const manifest = await getJson(base, { signal });
    // The registry's own word on what forbids commercial use (licence records, and dataset terms
    // given without one).
    const summary = (await getJson(`/models/${enc(name)}`, { signal })).versions.find((v) => String(v.version) === String(version));
    const card = await (await api("GET", `${base}/card`, { signal })).text();
    const evaluation = await evaluationOf(base, signal);
    const p = manifest.provenance || {};
    const restricted = summary ? summary.non_commercial : [];
    const licences = [...((p.base_weights && p.base_weights.licences) || []), ...((p.dataset && p.dataset.licences) || [])];
    const downloadStatus = h("span", { id: "download-status", class: "muted" });
    const download = h("button", { type: "button", class: "secondary", id: "download-onnx" }, "Download the ONNX file");
    download.addEventListener("click", async () => {
      // Fetched with the token (a plain link could not send it), then handed to the browser.
      download.disabled = true;
      downloadStatus.textContent = " downloading…";
      try {
        const blob = await (await api("GET", `${base}/onnx`, { signal })).blob();
        const url = URL.createObjectURL(blob);
        const a = h("a", { href: url, download: `${name}-v${version}.onnx` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10_000);
        downloadStatus.textContent = ` ${bytes(blob.size)} downloaded.`;
      } catch (e) {
        if (interrupted(e)) return;
        downloadStatus.replaceChildren(errorBox(e, "Not downloaded"));
      } finally {
        download.disabled = false;
        download.focus();
      }
    });
    const pictures = h("div", { class: "pictures", id: "pictures" });
    show(
      h("h1", {}, h("a", { href: `#/models/${enc(name)}`, text: name }), ` version ${version}`),
      h("p", { class: "muted", text: `Published ${when(manifest.created_at)}` }),
      restricted.length
        ? h(
            "div",
            { class: "notice", id: "terms-notice" },
            h("p", {}, h("strong", { text: "Non-commercial use only, " }), `because of the terms of: ${restricted.join("; ")}.`),
            licences.filter((l) => !l.commercial_use).map((l) => h("p", {}, h("strong", { text: `${l.component}: ` }), l.terms)),
            p.dataset && p.dataset.terms && !(p.dataset.licences || []).length ? h("p", {}, h("strong", { text: "Dataset terms given at upload: " }), p.dataset.terms) : null
          )
        : h("p", { class: "ok", id: "terms-notice", text: "Every component's terms allow commercial use." }),
      h("div", { class: "actions" }, h("a", { href: `#/try?model=${enc(name)}&ref=${enc(`version:${version}`)}` }, "Try this version"), download, downloadStatus),
      provenance(p),
      evaluation ? evaluationSection(evaluation) : h("p", { class: "muted", text: "No evaluation report (versions published from files have none)." }),
      (p.metrics && p.metrics.per_epoch && p.metrics.per_epoch.length) ? h("section", {}, h("h2", { text: "Training curves" }), h("div", { class: "charts" }, curves(p.metrics.per_epoch, null))) : null,
      pictures,
      h("h2", { text: "Model card" }),
      h("article", { class: "card", id: "model-card" }, markdown(card))
    );
    for (const [file, alt] of [["confusion.png", "Confusion matrix as a heat map: rows the true class, columns the predicted one"], ["curves.png", "Training curves as recorded when the version was published"]]) {
      if (!(manifest.artifacts || []).some((a) => a.name === file)) continue;
      try {
        const blob = await (await api("GET", `${base}/${file}`, { signal })).blob();
        pictures.append(h("figure", {}, h("img", { src: objectUrl(blob), alt }), h("figcaption", { class: "muted", text: file })));
      } catch (e) {
        if (e.name === "AbortError") return;
      }
    }
  }

  // Where a version comes from, at a glance (the card below has all of it).
  function provenance(p) {
    const rows = [];
    const b = p.base_weights;
    if (b) rows.push(["Base model", `${b.arch}${b.catalog ? ` · ${b.catalog}` : " · an imported file"}`]);
    const d = p.dataset;
    if (d) rows.push(["Dataset", `${d.name || "unnamed"} · ${d.class_names ? d.class_names.length : "?"} classes · digest ${String(d.digest || "").slice(0, 12)}`], ["Dataset terms", d.terms || "none given"]);
    const hp = p.hyperparameters || {};
    if (hp.winner) rows.push(["Winner", `${hp.winner}${hp.backbones && hp.backbones.length > 1 ? ` of ${hp.backbones.join(", ")}` : ""}`]);
    if (p.hardware && p.hardware.device) rows.push(["Trained on", `${p.hardware.device}${p.hardware.cpu ? ` · ${p.hardware.cpu}` : ""}`]);
    if (p.code) rows.push(["petal", `${p.code.petal_version || "?"}${p.code.git_commit ? ` (commit ${p.code.git_commit})` : ""}`]);
    if (!rows.length) return null;
    return h("section", { id: "provenance" }, h("h2", { text: "Provenance" }), h("div", { class: "scroll", tabindex: "0" }, h("table", {}, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { text: v })))))));
  }

  function evaluationSection(ev) {
    const worst = [...ev.per_class].sort((a, b) => a.f1 - b.f1).slice(0, 10);
    return h(
      "section",
      { id: "evaluation" },
      h("h2", { text: "Evaluation" }),
      h("p", { class: "muted", text: `On ${ev.images} images (${ev.split}), through the serving path.` }),
      h("div", { class: "stats" }, stat("top-1", pct(ev.top1), "eval-top1"), stat("top-5", pct(ev.top5)), stat("macro F1", ev.macro_f1.toFixed(4)), stat("calibration error (ECE)", ev.ece.toFixed(4))),
      h("h3", { text: "Worst classes" }),
      h(
        "div",
        { class: "scroll", tabindex: "0" },
        h(
          "table",
          { id: "worst-classes" },
          h("thead", {}, h("tr", {}, ["Class", "Images", "Precision", "Recall", "F1"].map((x, i) => h("th", { scope: "col", class: i ? "num" : null, text: x })))),
          h("tbody", {}, worst.map((c) => h("tr", {}, h("td", { text: c.class }), h("td", { class: "num", text: c.images }), h("td", { class: "num", text: pct(c.precision) }), h("td", { class: "num", text: pct(c.recall) }), h("td", { class: "num", text: c.f1.toFixed(3) }))))
        )
      ),
      ev.confusions.length
        ? [
            h("h3", { text: "Most frequent confusions" }),
            h(
              "div",
              { class: "scroll", tabindex: "0" },
              h(
                "table",
                {},
                h("thead", {}, h("tr", {}, ["True class", "Taken for", "Images"].map((x, i) => h("th", { scope: "col", class: i === 2 ? "num" : null, text: x })))),
                h("tbody", {}, ev.confusions.slice(0, 10).map((c) => h("tr", {}, h("td", { text: c.actual }), h("td", { text: c.predicted }), h("td", { class: "num", text: c.count }))))
              )
            ),
          ]
        : null
    );
  }

  // --- Markdown, safely: a small subset (headings, paragraphs, lists, tables, code, emphasis,
  // links) rendered as DOM nodes. Raw HTML in the text stays text; links go only to http(s) or
  // this server's paths.
  function markdown(text) {
    const out = document.createDocumentFragment();
    const lines = text.replace(/\r\n?/g, "\n").split("\n");
    const isBlockStart = (l) => /^(#{1,6}\s|```|\s*[-*+]\s|\s*\d+\.\s|\|)/.test(l);
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (/^```/.test(line)) {
        const body = [];
        for (i++; i < lines.length && !/^```/.test(lines[i]); i++) body.push(lines[i]);
        i++;
        out.append(h("pre", { tabindex: "0" }, h("code", { text: body.join("\n") })));
      } else if (/^#{1,6}\s/.test(line)) {
        const level = line.match(/^#+/)[0].length;
        out.append(add(h(`h${Math.min(6, level + 2)}`), inline(line.replace(/^#+\s*/, ""))));
        i++;
      } else if (/^\s*([-*+]|\d+\.)\s/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const list = h(ordered ? "ol" : "ul");
        for (; i < lines.length && /^\s*([-*+]|\d+\.)\s/.test(lines[i]); i++) list.append(add(h("li"), inline(lines[i].replace(/^\s*([-*+]|\d+\.)\s+/, ""))));
        out.append(list);
      } else if (/^\|/.test(line)) {
        const rows = [];
        for (; i < lines.length && /^\|/.test(lines[i]); i++) rows.push(splitRow(lines[i]));
        const table = h("table");
        const head = rows.length > 1 && rows[1].every((c) => /^:?-{3,}:?$/.test(c.trim()));
        if (head) table.append(h("thead", {}, h("tr", {}, rows[0].map((c) => add(h("th", { scope: "col" }), inline(c))))));
        table.append(h("tbody", {}, rows.slice(head ? 2 : 0).map((r) => h("tr", {}, r.map((c) => add(h("td"), inline(c)))))));
        out.append(h("div", { class: "scroll", tabindex: "0" }, table));
      } else if (line.trim() === "") {
        i++;
      } else {
        const para = [];
        for (; i < lines.length && lines[i].trim() !== "" && (para.length === 0 || !isBlockStart(lines[i])); i++) para.push(lines[i]);
        out.append(add(h("p"), inline(para.join(" "))));
      }
    }
    return out;
  }

  function splitRow(line) {
    const cells = [];
    let cur = "";
    const body = line.trim().replace(/^\|/, "").replace(/\|$/, "");
    for (let k = 0; k < body.length; k++) {
      if (body[k] === "\\" && body[k + 1] === "|") {
        cur += "\\|";
        k++;
      } else if (body[k] === "|") {
        cells.push(cur.trim());
        cur = "";
      } else cur += body[k];
    }
    cells.push(cur.trim());
    return cells;
  }

  const ENTITIES = { "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'" };
  function safeHref(url) {
    url = url.trim();
    // A card links its version's report and pictures (API paths a plain link cannot send a token
    // to): the console's page of that version shows them.
    const own = url.match(/^\/models\/([^/?#]+)\/versions\/(\d+)(?:[/?#]|$)/);
    if (own) return `#/models/${own[1]}/${own[2]}`;
    if (/^https?:\/\//i.test(url) || /^#/.test(url) || (/^\//.test(url) && !/^\/\//.test(url))) return url;
    return null;
  }
  // Inline Markdown: backslash escapes are set aside first (so an escaped `*` never closes
  // emphasis), then code spans, strong, links and emphasis; the rest is text.
  function inline(text) {
    const escaped = [];
    const marked = text.replace(/\\([\\`*_[\]{}()#+\-.!|~<>&])/g, (_, c) => {
      escaped.push(c);
      return `\uE000${escaped.length - 1}\uE001`;
    });
    const restore = (t) => t.replace(/&(lt|gt|amp|quot|#39);/g, (m) => ENTITIES[m]).replace(/\uE000(\d+)\uE001/g, (_, n) => escaped[Number(n)]);
    const parse = (t) => {
      const nodes = [];
      let buf = "";
      const flush = () => {
        if (buf) nodes.push(document.createTextNode(restore(buf)));
        buf = "";
      };
      for (let k = 0; k < t.length; ) {
        const rest = t.slice(k);
        let m;
        if ((m = rest.match(/^`([^`]+)`/))) {
          flush();
          nodes.push(h("code", { text: restore(m[1]) }));
        } else if ((m = rest.match(/^\*\*(.+?)\*\*/))) {
          flush();
          nodes.push(add(h("strong"), parse(m[1])));
        } else if ((m = rest.match(/^!?\[([^\]]*)\]\(([^)\s]+)\)/))) {
          flush();
          const href = safeHref(restore(m[2]));
          nodes.push(href ? add(h("a", { href, rel: "noopener noreferrer" }), parse(m[1])) : document.createTextNode(restore(m[1])));
        } else if ((m = rest.match(/^\*([^*\s][^*]*?)\*/))) {
          flush();
          nodes.push(add(h("em"), parse(m[1])));
        } else {
          buf += rest[0];
          k += 1;
          continue;
        }
        k += m[0].length;
      }
      flush();
      return nodes;
    };
    return parse(marked);
  }

  // --- start ------------------------------------------------------------------------------------
  // Only "#/..." addresses are pages; the skip link moves focus without leaving the page.
  window.addEventListener("hashchange", () => location.hash.startsWith("#/") && render(true));
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    main.focus();
  });
  renderWho();
  render(false);
})();
