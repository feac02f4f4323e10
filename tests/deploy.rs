//! The deployment artefacts, checked statically (there is no Docker engine and no cluster here):
//! the Dockerfile lints clean with hadolint and copies only what exists and is not ignored; each
//! kustomization (k8s/base, k8s/overlays/local, k8s/overlays/gpu) renders with `kubectl kustomize`
//! and validates with `kubernetes-validate --strict`; and the rendered objects keep the properties a
//! careless edit would break (non-root, probes, GPU requests, Secret and ConfigMap references).
//!
//! hadolint, kubectl and kubernetes-validate come from the venv (scripts/requirements.txt) and are
//! found on PATH, which scripts/env.sh puts first; YAML is read by the venv's Python (PyYAML, a
//! dependency of kubernetes-validate).
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The Kubernetes version the rendered manifests are validated against (one that
/// kubernetes-validate bundles; the oldest the manifests promise to support).
const KUBERNETES_VERSION: &str = "1.33.0";
/// Secrets the base and the gpu overlay reference but leave to the operator (k8s/README.md).
const USER_CREATED_SECRETS: [&str; 2] = ["petal-s3", "petal-api-tokens"];
/// The top-level sections of petal's configuration, as `PETAL__SECTION__KEY` names them.
const CONFIG_SECTIONS: [&str; 8] = ["server", "log", "registry", "onnxruntime", "weights", "inference", "jobs", "auth"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).current_dir(root()).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): run the tests through scripts/env.sh after scripts/setup.sh")
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --- Dockerfile ----------------------------------------------------------------------------------

#[test]
fn hadolint_reports_nothing() {
    let out = run("hadolint", &["--no-color", "Dockerfile"]);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "hadolint Dockerfile ({}):\n{report}", out.status);
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let source = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in source.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        instructions.push(current);
    }
    instructions
}

/// The build-context sources of every COPY/ADD without `--from`.
fn context_sources() -> Vec<String> {
    let mut sources = Vec::new();
    for instruction in dockerfile_instructions() {
        let (keyword, rest) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
        if !keyword.eq_ignore_ascii_case("COPY") && !keyword.eq_ignore_ascii_case("ADD") {
            continue;
        }
        let mut words: Vec<String> = Vec::new();
        let mut rest = rest.trim();
        while let Some(flag) = rest.strip_prefix("--") {
            let (flag, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
            words.push(format!("--{flag}"));
            rest = tail.trim_start();
        }
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let args: Vec<String> = if rest.starts_with('[') {
            serde_json::from_str(rest).unwrap_or_else(|e| panic!("{instruction}: bad JSON form ({e})"))
        } else {
            rest.split_whitespace().map(str::to_string).collect()
        };
        assert!(args.len() >= 2, "{instruction}: needs a source and a destination");
        sources.extend(args[..args.len() - 1].iter().cloned());
    }
    sources
}

/// `.dockerignore`'s patterns in order, each with whether it re-includes (`!`).
fn dockerignore() -> Vec<(bool, Vec<String>)> {
    let source = std::fs::read_to_string(root().join(".dockerignore")).unwrap_or_default();
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negated, pattern) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let parts = pattern.trim_start_matches('/').split('/').filter(|p| !p.is_empty() && *p != ".");
            (negated, parts.map(str::to_string).collect())
        })
        .collect()
}

/// One path component against one pattern component (`*`, `?` and literals).
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            component_matches(&pattern[1..], name) || (!name.is_empty() && component_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => component_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => component_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// A path (components) against a pattern (components, `**` for any number of them).
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|skip| path_matches(&pattern[1..], &path[skip..])),
        Some(p) => {
            !path.is_empty()
                && component_matches(p.as_bytes(), path[0].as_bytes())
                && path_matches(&pattern[1..], &path[1..])
        }
    }
}

/// Whether Docker leaves `path` (relative to the context) out: the last pattern that matches it or
/// one of its parent folders decides.
fn ignored(patterns: &[(bool, Vec<String>)], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut excluded = false;
    for (negated, pattern) in patterns {
        if (1..=parts.len()).any(|n| path_matches(pattern, &parts[..n])) {
            excluded = !negated;
        }
    }
    excluded
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

#[test]
fn dockerignore_matching_follows_docker() {
    let patterns = vec![
        (false, vec!["target".to_string()]),
        (false, vec!["**".to_string(), "*.pyc".to_string()]),
        (false, vec!["docs".to_string()]),
        (true, vec!["docs".to_string(), "keep.md".to_string()]),
    ];
    assert!(ignored(&patterns, "target"));
    assert!(ignored(&patterns, "target/release/petal"));
    assert!(!ignored(&patterns, "src/target.rs"));
    assert!(ignored(&patterns, "scripts/x.pyc"));
    assert!(ignored(&patterns, "a/b/c/x.pyc"));
    assert!(ignored(&patterns, "docs/other.md"));
    assert!(!ignored(&patterns, "docs/keep.md"));
    assert!(!ignored(&patterns, "Cargo.toml"));
}

#[test]
fn dockerfile_copies_only_existing_unignored_sources() {
    let patterns = dockerignore();
    let sources = context_sources();
    assert!(sources.iter().any(|s| s == "src"), "no COPY of src/ found in {sources:?}: is the parser broken?");
    let mut problems = Vec::new();
    for source in &sources {
        assert!(!source.contains(['*', '?', '[']), "{source}: name the paths the image needs, without globs");
        let path = root().join(source);
        if !path.exists() {
            problems.push(format!("{source}: not in the repository"));
            continue;
        }
        if ignored(&patterns, source) {
            problems.push(format!("{source}: excluded by .dockerignore"));
            continue;
        }
        if path.is_dir() {
            let mut files = Vec::new();
            files_under(&path, &mut files);
            for file in files {
                let rel = relative(&file);
                let generated = rel.ends_with(".pyc") || rel.contains("__pycache__/");
                if !generated && ignored(&patterns, &rel) {
                    problems.push(format!("{rel}: under COPY {source} but excluded by .dockerignore"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `include_str!`/`include_bytes!` in src/ name files outside src/ (catalogs, benchmark scripts):
/// the image's build must be given each of them.
#[test]
fn files_compiled_in_are_copied_into_the_build() {
    let patterns = dockerignore();
    let sources = context_sources();
    let mut files = Vec::new();
    files_under(&root().join("src"), &mut files);
    let mut problems = Vec::new();
    let mut seen = 0;
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        let code = std::fs::read_to_string(file).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(macro_name) {
                let literal = &code[at + macro_name.len()..];
                let Some(end) = literal.find('"') else { continue };
                seen += 1;
                let mut target = file.parent().unwrap().to_path_buf();
                for part in Path::new(&literal[..end]).components() {
                    match part {
                        Component::ParentDir => {
                            target.pop();
                        }
                        Component::Normal(name) => target.push(name),
                        _ => {}
                    }
                }
                let rel = relative(&target);
                let copied =
                    sources.iter().any(|s| rel == *s || rel.starts_with(&format!("{}/", s.trim_end_matches('/'))));
                if !target.is_file() || !copied || ignored(&patterns, &rel) {
                    problems.push(format!("{} includes {rel}: missing, not COPYed or ignored", relative(file)));
                }
            }
        }
    }
    assert!(seen > 0, "found no include_str! in src/: is the scan broken?");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The numeric user the image runs as (`USER uid[:gid]`), checked against the pods' runAsUser.
fn image_uid() -> i64 {
    let user = dockerfile_instructions()
        .into_iter()
        .filter_map(|i| i.strip_prefix("USER ").map(|u| u.trim().to_string()))
        .next_back()
        .expect("the Dockerfile sets USER");
    let uid: i64 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert!(uid > 0, "the image runs as root");
    uid
}

#[test]
fn image_runs_petal_as_a_numeric_non_root_user_with_a_healthcheck() {
    image_uid();
    let instructions = dockerfile_instructions();
    let has = |prefix: &str| instructions.iter().any(|i| i.starts_with(prefix));
    assert!(has("HEALTHCHECK "), "no HEALTHCHECK");
    assert!(has("EXPOSE 8080"), "port 8080 is not exposed");
    assert!(has("ENTRYPOINT [\"petal\"]"), "the entrypoint is not petal");
    assert!(instructions.iter().any(|i| i.contains("cargo build --release --locked")), "not a --locked release build");
}

// --- Kubernetes ----------------------------------------------------------------------------------

/// `kubectl kustomize k8s/DIR`, validated by kubernetes-validate, as JSON objects.
fn render(dir: &str) -> Vec<Value> {
    let path = format!("k8s/{dir}");
    let out = run("kubectl", &["kustomize", &path]);
    assert!(out.status.success(), "kubectl kustomize {path}: {}", text(&out.stderr));
    let yaml = out.stdout;

    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{}.yaml", dir.replace('/', "-")));
    std::fs::write(&file, &yaml).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let out = run("kubernetes-validate", &["--strict", "--quiet", "-k", KUBERNETES_VERSION, &file_arg]);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "kubernetes-validate on {path}:\n{report}");

    let python = std::env::var("PETAL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let out = run(&python, &["-c", script, &file_arg]);
    assert!(out.status.success(), "YAML to JSON with {python}: {}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!docs.is_empty(), "{path} renders nothing");
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The pod template of a workload.
fn pod_spec(workload: &Value) -> &Value {
    workload.pointer("/spec/template/spec").unwrap_or_else(|| panic!("{} has no pod template", workload["kind"]))
}

fn petal_container<'a>(pod: &'a Value, what: &str) -> &'a Value {
    array_at(pod, "/containers")
        .iter()
        .find(|c| c["name"] == "petal")
        .unwrap_or_else(|| panic!("{what}: no petal container"))
}

/// The GPUs a container asks for (`nvidia.com/gpu` in requests or limits).
fn gpus(container: &Value) -> Option<String> {
    ["/resources/limits/nvidia.com~1gpu", "/resources/requests/nvidia.com~1gpu"]
        .iter()
        .find_map(|p| container.pointer(p))
        .map(|v| v.to_string().trim_matches('"').to_string())
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    array_at(container, "/env").iter().find(|e| e["name"] == name)
}

/// Everything a hardened petal pod must have; `what` names it in failures.
fn check_petal_pod(docs: &[Value], workload: &Value, what: &str, uid: i64) {
    let pod = pod_spec(workload);
    let c = petal_container(pod, what);
    let either = |pointer: &str| c.pointer(pointer).or_else(|| pod.pointer(pointer));

    assert_eq!(either("/securityContext/runAsNonRoot"), Some(&Value::Bool(true)), "{what}: runAsNonRoot");
    assert!(either("/securityContext/runAsUser").is_some(), "{what}: no runAsUser");
    for level in [pod, c] {
        if let Some(run_as) = level.pointer("/securityContext/runAsUser") {
            assert_eq!(run_as.as_i64(), Some(uid), "{what}: runAsUser should be the image's user {uid}");
        }
    }
    assert_eq!(
        either("/securityContext/seccompProfile/type").and_then(Value::as_str),
        Some("RuntimeDefault"),
        "{what}"
    );
    assert_eq!(c.pointer("/securityContext/allowPrivilegeEscalation"), Some(&Value::Bool(false)), "{what}");
    assert_eq!(c.pointer("/securityContext/readOnlyRootFilesystem"), Some(&Value::Bool(true)), "{what}");
    assert!(array_at(c, "/securityContext/capabilities/drop").iter().any(|v| v == "ALL"), "{what}: drop ALL");
    assert_eq!(pod.pointer("/automountServiceAccountToken"), Some(&Value::Bool(false)), "{what}");
    if let Some(account) = str_at(pod, "/serviceAccountName") {
        let account = find(docs, "ServiceAccount", account);
        assert_eq!(account.pointer("/automountServiceAccountToken"), Some(&Value::Bool(false)), "{what}'s account");
    }

    // The writable paths of a read-only root: /tmp and petal's state, each backed by a volume.
    let volumes: BTreeSet<&str> = array_at(pod, "/volumes").iter().filter_map(|v| v["name"].as_str()).collect();
    let mounts: Vec<(&str, &str)> = array_at(c, "/volumeMounts")
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or("")))
        .collect();
    for path in ["/tmp", "/var/lib/petal"] {
        assert!(mounts.iter().any(|(p, _)| *p == path), "{what}: nothing writable mounted at {path}");
    }
    for (path, name) in &mounts {
        assert!(volumes.contains(name), "{what}: {path} mounts the missing volume {name}");
    }

    // Probes: liveness on /healthz and readiness on /readyz, on the port petal listens on.
    let ports: Vec<&Value> = array_at(c, "/ports").iter().collect();
    let port_number = |port: &Value| -> Option<i64> {
        port.as_i64().or_else(|| ports.iter().find(|p| p["name"] == *port).and_then(|p| p["containerPort"].as_i64()))
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = c.pointer(&format!("/{probe}/httpGet")).unwrap_or_else(|| panic!("{what}: no HTTP {probe}"));
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(port_number(&get["port"]), Some(8080), "{what}: {probe} port");
    }
    if let Some(get) = c.pointer("/startupProbe/httpGet") {
        assert_eq!(port_number(&get["port"]), Some(8080), "{what}: startupProbe port");
    }

    let args: Vec<&str> = array_at(c, "/args").iter().filter_map(Value::as_str).collect();
    let host = args.iter().position(|a| *a == "--host").and_then(|i| args.get(i + 1));
    assert_eq!(host, Some(&"0.0.0.0"), "{what}: must listen beyond loopback for probes and the Service: {args:?}");
    assert!(array_at(c, "/ports").iter().any(|p| p["containerPort"] == 8080), "{what}: port 8080 not declared");
    if args.first() == Some(&"serve") {
        // The API binds a non-loopback address only with tokens configured.
        let tokens = env_var(c, "PETAL__AUTH__TOKENS").unwrap_or_else(|| panic!("{what}: no PETAL__AUTH__TOKENS"));
        assert!(tokens.pointer("/valueFrom/secretKeyRef").is_some(), "{what}: tokens must come from a Secret");
    } else {
        // A worker serves only open endpoints: it has no use for the API's tokens.
        assert!(env_var(c, "PETAL__AUTH__TOKENS").is_none(), "{what}: a worker needs no API tokens");
    }
    let image = c["image"].as_str().unwrap_or("");
    assert!(pinned(image), "{what}: image {image} is not pinned by tag");
}

/// An image reference with a tag other than `latest`, or a digest.
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    matches!(last.split_once(':'), Some((_, tag)) if !tag.is_empty() && tag != "latest")
}

fn api(docs: &[Value]) -> &Value {
    find(docs, "Deployment", "petal-api")
}

fn worker(docs: &[Value]) -> &Value {
    find(docs, "Deployment", "petal-worker")
}

fn check_roles(docs: &[Value], dir: &str) {
    let uid = image_uid();
    let api = api(docs);
    check_petal_pod(docs, api, &format!("{dir}: petal-api"), uid);
    let api_container = petal_container(pod_spec(api), "petal-api");
    let args: Vec<&str> = array_at(api_container, "/args").iter().filter_map(Value::as_str).collect();
    assert_eq!(args.get(..3), Some(&["serve", "--role", "api"][..]), "{dir}: petal-api args {args:?}");
    assert_eq!(gpus(api_container), None, "{dir}: the API pods must not hold GPUs");

    let worker = worker(docs);
    check_petal_pod(docs, worker, &format!("{dir}: petal-worker"), uid);
    let pod = pod_spec(worker);
    let c = petal_container(pod, "petal-worker");
    assert_eq!(str_at(c, "/args/0"), Some("worker"), "{dir}: petal-worker runs `petal worker`");
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    assert!(grace >= 60, "{dir}: a worker needs time to stop its job and release the lease, has {grace}s");
    let name = env_var(c, "PETAL__JOBS__WORKER_NAME").unwrap_or_else(|| panic!("{dir}: no worker name"));
    assert_eq!(str_at(name, "/valueFrom/fieldRef/fieldPath"), Some("metadata.name"), "{dir}: worker name from the pod");

    // Every PETAL__ variable names a real section (a typo would stop petal at start).
    let mut names: Vec<String> = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        names.extend(d["data"].as_object().into_iter().flat_map(|m| m.keys().cloned()));
    }
    for c in [api_container, c] {
        names.extend(array_at(c, "/env").iter().filter_map(|e| e["name"].as_str().map(str::to_string)));
    }
    // PETAL_CONFIG names a file; any other single-underscore PETAL_ name is a typo petal ignores.
    for name in names.iter().filter(|n| n.starts_with("PETAL") && *n != "PETAL_CONFIG") {
        let section = name.strip_prefix("PETAL__").and_then(|rest| rest.split("__").next()).unwrap_or("");
        let known = CONFIG_SECTIONS.iter().any(|s| section.eq_ignore_ascii_case(s)) && name.split("__").count() >= 3;
        assert!(known, "{dir}: {name} is not PETAL__SECTION__KEY with a known section");
    }
}

/// Every workload's pod specs (Deployments, Jobs, …) with a name for messages.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let owner =
                format!("{} {}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?"));
            d.pointer("/spec/template/spec").map(|p| (owner, p))
        })
        .collect()
}

/// (kind, name, key) of every Secret and ConfigMap a pod reads; key is None for whole-object uses.
fn references(pod: &Value) -> Vec<(&'static str, String, Option<String>)> {
    let mut refs = Vec::new();
    let name = |v: &Value, field: &str| v[field].as_str().unwrap_or("").to_string();
    let containers = array_at(pod, "/containers").iter().chain(array_at(pod, "/initContainers"));
    for c in containers {
        for e in array_at(c, "/env") {
            if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                refs.push(("Secret", name(r, "name"), Some(name(r, "key"))));
            }
            if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                refs.push(("ConfigMap", name(r, "name"), Some(name(r, "key"))));
            }
        }
        for e in array_at(c, "/envFrom") {
            if let Some(r) = e.get("secretRef") {
                refs.push(("Secret", name(r, "name"), None));
            }
            if let Some(r) = e.get("configMapRef") {
                refs.push(("ConfigMap", name(r, "name"), None));
            }
        }
    }
    for v in array_at(pod, "/volumes") {
        if let Some(s) = v.get("secret") {
            refs.push(("Secret", name(s, "secretName"), None));
        }
        if let Some(m) = v.get("configMap") {
            refs.push(("ConfigMap", name(m, "name"), None));
        }
        for source in array_at(v, "/projected/sources") {
            if let Some(s) = source.get("secret") {
                refs.push(("Secret", name(s, "name"), None));
            }
            if let Some(m) = source.get("configMap") {
                refs.push(("ConfigMap", name(m, "name"), None));
            }
        }
    }
    refs
}

/// Each Secret/ConfigMap reference resolves to a rendered object holding the key, or (where
/// `user_created` allows) to a Secret the README tells the operator to create, with that key.
fn check_references(docs: &[Value], dir: &str, user_created: &[&str]) {
    let readme = std::fs::read_to_string(root().join("k8s/README.md")).unwrap();
    let mut problems = Vec::new();
    for (owner, pod) in pod_specs(docs) {
        for (kind, name, key) in references(pod) {
            let rendered = docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name.as_str());
            match rendered {
                Some(object) => {
                    if let Some(key) = &key {
                        let has = ["data", "stringData", "binaryData"].iter().any(|f| object[f].get(key).is_some());
                        if !has {
                            problems.push(format!("{owner}: {kind} {name} has no key {key}"));
                        }
                    }
                }
                None if kind == "Secret" && user_created.contains(&name.as_str()) => {
                    if !readme.contains(&format!("`{name}`")) {
                        problems.push(format!("{owner}: Secret {name} is not documented in k8s/README.md"));
                    }
                    if let Some(key) = key.filter(|k| !readme.contains(&format!("`{k}`"))) {
                        problems
                            .push(format!("{owner}: key {key} of Secret {name} is not documented in k8s/README.md"));
                    }
                }
                None => {
                    problems.push(format!("{owner}: {kind} {name} is neither rendered nor documented as user-created"))
                }
            }
        }
    }
    assert!(problems.is_empty(), "{dir}:\n{}", problems.join("\n"));
}

/// The Service, HPA and PDB point at the API Deployment and its pods only.
fn check_api_plumbing(docs: &[Value], dir: &str) {
    let api = api(docs);
    let worker_labels = worker(docs).pointer("/spec/template/metadata/labels").cloned().unwrap_or_default();
    let labels = api.pointer("/spec/template/metadata/labels").cloned().unwrap_or_default();
    let selects = |selector: &Value, labels: &Value| {
        selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };

    let service = find(docs, "Service", "petal-api");
    let selector = &service["spec"]["selector"];
    assert!(selects(selector, &labels), "{dir}: Service petal-api does not select the API pods");
    assert!(!selects(selector, &worker_labels), "{dir}: Service petal-api also selects workers");
    let container = petal_container(pod_spec(api), "petal-api");
    for port in array_at(service, "/spec/ports") {
        let target = &port["targetPort"];
        let ok = array_at(container, "/ports").iter().any(|p| p["name"] == *target || p["containerPort"] == *target);
        assert!(ok, "{dir}: Service petal-api targets {target}, which the API container does not declare");
    }
    assert!(array_at(service, "/spec/ports").iter().any(|p| p["port"] == 80), "{dir}: Service petal-api: port 80");

    let pdb = find(docs, "PodDisruptionBudget", "petal-api");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], &labels), "{dir}: the PDB does not select the API pods");
    assert!(!selects(&pdb["spec"]["selector"]["matchLabels"], &worker_labels), "{dir}: the PDB selects workers");

    let hpa = find(docs, "HorizontalPodAutoscaler", "petal-api");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2", "{dir}");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment", "{dir}");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "petal-api", "{dir}");
    assert!(api.pointer("/spec/replicas").is_none(), "{dir}: the HPA owns petal-api's replicas");
    let cpu_request = container.pointer("/resources/requests/cpu");
    assert!(cpu_request.is_some(), "{dir}: CPU utilisation needs a CPU request");
}

fn check_on_gpus(docs: &[Value], dir: &str) {
    let pod = pod_spec(worker(docs));
    let c = petal_container(pod, "petal-worker");
    assert_eq!(gpus(c).as_deref(), Some("1"), "{dir}: the worker asks for one nvidia.com/gpu");
    let tolerated =
        array_at(pod, "/tolerations").iter().any(|t| t["key"] == "nvidia.com/gpu" && t["effect"] == "NoSchedule");
    assert!(tolerated, "{dir}: the worker does not tolerate the nvidia.com/gpu taint");
    assert!(
        pod.pointer("/nodeSelector/nvidia.com~1gpu.present").is_some(),
        "{dir}: the worker is not sent to GPU nodes"
    );
}

fn check_all_images_pinned(docs: &[Value], dir: &str) {
    for (owner, pod) in pod_specs(docs) {
        for c in array_at(pod, "/containers").iter().chain(array_at(pod, "/initContainers")) {
            let image = c["image"].as_str().unwrap_or("");
            assert!(pinned(image), "{dir}: {owner} uses {image:?}, not pinned by tag");
        }
    }
}

/// What the base and the gpu overlay share: GPU workers, and Secrets left to the operator.
fn check_for_operators(dir: &str, name: &str) -> Vec<Value> {
    let docs = render(dir);
    check_roles(&docs, name);
    check_api_plumbing(&docs, name);
    check_on_gpus(&docs, name);
    check_references(&docs, name, &USER_CREATED_SECRETS);
    check_all_images_pinned(&docs, name);
    assert!(!docs.iter().any(|d| d["kind"] == "Secret"), "{name}: Secrets are the operator's, not the repository's");
    docs
}

#[test]
fn base_renders_validates_and_keeps_secrets_out() {
    check_for_operators("base", "base");
}

#[test]
fn gpu_overlay_renders_validates_and_trains_on_gpus() {
    let docs = check_for_operators("overlays/gpu", "gpu");
    let replicas = worker(&docs).pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    assert!(replicas >= 1, "gpu: no worker");
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("gpu: a ConfigMap");
    assert_eq!(config["data"]["PETAL__REGISTRY__BACKEND"], "s3", "gpu: the roles share an S3 registry");
    assert!(config["data"]["PETAL__REGISTRY__S3__BUCKET"].is_string(), "gpu: no bucket");
}

#[test]
fn local_overlay_renders_validates_and_is_self_contained_on_cpu() {
    let docs = render("overlays/local");
    check_roles(&docs, "local");
    check_api_plumbing(&docs, "local");
    // Everything is rendered: no user-created Secret.
    check_references(&docs, "local", &[]);
    check_all_images_pinned(&docs, "local");

    let pod = pod_spec(worker(&docs));
    let c = petal_container(pod, "petal-worker");
    assert_eq!(gpus(c), None, "local: the worker must not ask for a GPU");
    let mentions_gpu = |v: Option<&Value>| v.is_some_and(|v| v.to_string().contains("nvidia.com/gpu"));
    assert!(!mentions_gpu(pod.get("tolerations")), "local: GPU toleration left on the worker");
    assert!(!mentions_gpu(pod.get("nodeSelector")), "local: the worker still wants GPU nodes");

    // petal's S3 endpoint is the in-cluster server, over plain http, and the bucket Job creates the
    // bucket petal uses.
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("local: a ConfigMap");
    assert_eq!(config["data"]["PETAL__REGISTRY__BACKEND"], "s3", "local");
    assert_eq!(config["data"]["PETAL__REGISTRY__S3__ALLOW_HTTP"], "true", "local: http needs allow_http");
    let endpoint = config["data"]["PETAL__REGISTRY__S3__ENDPOINT"].as_str().expect("local: an S3 endpoint");
    let authority = endpoint.strip_prefix("http://").expect("local: an http endpoint").trim_end_matches('/');
    let (host, port) = authority.split_once(':').expect("local: the endpoint names its port");
    let service = find(&docs, "Service", host);
    let port: i64 = port.parse().unwrap();
    assert!(array_at(service, "/spec/ports").iter().any(|p| p["port"] == port), "local: {host} does not serve {port}");
    let storage = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d.pointer("/spec/selector/matchLabels").is_some_and(|s| *s == service["spec"]["selector"])
        })
        .unwrap_or_else(|| panic!("local: nothing behind Service {host}"));
    let bucket_job = docs.iter().find(|d| d["kind"] == "Job").expect("local: a Job that creates the bucket");
    let job_env = array_at(pod_spec(bucket_job), "/containers/0/env");
    let keys: Vec<&str> =
        job_env.iter().filter_map(|e| e.pointer("/valueFrom/configMapKeyRef/key").and_then(Value::as_str)).collect();
    assert!(
        keys.contains(&"PETAL__REGISTRY__S3__BUCKET"),
        "local: the bucket Job should read petal's bucket: {keys:?}"
    );
    assert!(pinned(str_at(storage, "/spec/template/spec/containers/0/image").unwrap_or("")), "local: S3 image");
    assert_eq!(
        docs.iter().filter(|d| d["kind"] == "Namespace").count(),
        1,
        "local: the overlay creates its own namespace"
    );
}

/// The environment a petal container of `workload` starts with: the image's `ENV`, its
/// ConfigMaps, its literal `env`, Secrets (rendered ones decoded; the operator's replaced by
/// `stand_ins`) and the pod name.
fn container_env(docs: &[Value], workload: &Value, stand_ins: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = dockerfile_instructions()
        .iter()
        .skip_while(|i| !i.starts_with("FROM ") || !i.contains(" AS runtime"))
        .filter_map(|i| i.strip_prefix("ENV "))
        .flat_map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.trim_end_matches('\\').to_string())))
        .filter(|(k, _)| k.starts_with("PETAL__"))
        .collect();
    let c = petal_container(pod_spec(workload), "workload");
    for from in array_at(c, "/envFrom") {
        let name = str_at(from, "/configMapRef/name").expect("envFrom a ConfigMap");
        let map = find(docs, "ConfigMap", name);
        for (k, v) in map["data"].as_object().unwrap() {
            env.push((k.clone(), v.as_str().unwrap().to_string()));
        }
    }
    for e in array_at(c, "/env") {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(secret) = e.pointer("/valueFrom/secretKeyRef") {
            let (sname, key) = (secret["name"].as_str().unwrap(), secret["key"].as_str().unwrap());
            match docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == sname) {
                Some(s) => {
                    let b64 = s["data"][key].as_str().unwrap_or_else(|| panic!("Secret {sname} has no {key}"));
                    decode_base64(b64)
                }
                None => stand_ins
                    .iter()
                    .find(|(k, _)| *k == format!("{sname}/{key}"))
                    .unwrap_or_else(|| panic!("no stand-in for the operator's Secret {sname}/{key}"))
                    .1
                    .to_string(),
            }
        } else if e.pointer("/valueFrom/fieldRef").is_some() {
            "pod-0".to_string()
        } else {
            panic!("an env entry petal cannot get: {e}")
        };
        env.push((name, value));
    }
    env
}

fn decode_base64(text: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.split_whitespace().collect::<String>())
        .unwrap_or_else(|e| panic!("Secret data {text:?} is not base64: {e}"));
    String::from_utf8(bytes).unwrap()
}

/// Each overlay's API and worker containers start the real petal with the configuration they
/// would get in the cluster: every `PETAL__*` variable is a known key with a valid value.
#[test]
fn every_rendered_petal_container_loads_its_configuration() {
    let stand_ins = [
        ("petal-s3/access_key_id", "AKIAEXAMPLE"),
        ("petal-s3/secret_access_key", "example-secret"),
        ("petal-api-tokens/tokens", r#"[{name="ci",token="0123456789abcdef0123",scopes=["admin"]}]"#),
    ];
    for dir in ["base", "overlays/local", "overlays/gpu"] {
        let docs = render(dir);
        for (workload, role) in [(api(&docs), "api"), (worker(&docs), "worker")] {
            let env = container_env(&docs, workload, &stand_ins);
            let out = Command::new(env!("CARGO_BIN_EXE_petal"))
                .arg("config")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap();
            assert!(out.status.success(), "{dir} {role}: petal refuses its configuration: {}", text(&out.stderr));
            let config: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(config["registry"]["backend"], "s3", "{dir} {role}");
            assert_eq!(config["jobs"]["worker_name"], if role == "worker" { "pod-0" } else { "" }, "{dir} {role}");
            assert_eq!(!config["auth"]["tokens"].as_array().unwrap().is_empty(), role == "api", "{dir} {role}");
        }
    }
}
