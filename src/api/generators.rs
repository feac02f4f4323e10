//! The document shaped so that client generators (openapi-generator's `typescript-fetch`, `rust`,
//! `java`…, progenitor, openapi-python-client) make usable clients of it. The handlers document
//! what they do; this pass rewrites the few constructs generators misread, for every operation
//! alike:
//!
//! - **Errors**: every 4xx/5xx of an operation shares one body schema, so generators that type
//!   errors by status into an untagged union (openapi-generator's `rust`) cannot tell them apart —
//!   a 404 parses as the first variant, 401. The error statuses become one `default` response whose
//!   description lists each status and when it happens, with every example kept (`examples`, by
//!   status) and every header (`Retry-After`, `WWW-Authenticate`).
//! - **Non-JSON bodies** (Markdown, server-sent events, Prometheus text, PNG, ONNX) are typed as
//!   binary strings: generators parse a `string` schema as JSON or refuse a text type, and hand a
//!   binary one over as the raw response to read or stream. Each is also listed as
//!   `application/octet-stream` (the server sends its own type), which the generators that read
//!   any `text/*` body as a string or know no `image/*` (openapi-python-client) read as bytes.
//! - **Optional parameters** are not nullable (absent is how a client leaves them out), and a
//!   parameter referring to a plain string or number schema gets that schema inline: generators
//!   serialize a referenced or `allOf`-wrapped parameter as JSON (`model="flowers"`, quotes and all).
//! - **Tagged unions** (`oneOf` of objects told apart by a one-value property, as serde's tagged
//!   enums are written) get their variants named in `components/schemas` (`DecayLinear`,
//!   `JobEventState`…) and a `discriminator` with its mapping, so generators make a typed enum of
//!   them instead of `OneOf1`, `OneOf2`; the union requires the tag, the variants only describe it.
use serde_json::{json, Map, Value};

/// The pass over a document as JSON.
pub fn shape(doc: &mut Value) {
    let responses = doc.pointer("/components/responses").cloned().unwrap_or_else(|| json!({}));
    let schemas = doc.pointer("/components/schemas").cloned().unwrap_or_else(|| json!({}));
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                if !["get", "put", "post", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                    continue;
                }
                if let Some(rs) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    merge_errors(rs, &responses);
                    for r in rs.values_mut() {
                        binary_bodies(r, &schemas);
                    }
                }
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    params.iter_mut().for_each(|p| plain_parameter(p, &schemas));
                }
            }
        }
    }
    // Shared responses are all inlined into `default` now.
    if let Some(c) = doc.get_mut("components").and_then(Value::as_object_mut) {
        c.remove("responses");
    }
    name_tagged_variants(doc);
}

fn is_error_status(code: &str) -> bool {
    code.starts_with('4') || code.starts_with('5')
}

/// The error statuses of one operation → one `default` response.
fn merge_errors(rs: &mut Map<String, Value>, shared: &Value) {
    let codes: Vec<String> = rs.keys().filter(|c| is_error_status(c)).cloned().collect();
    if codes.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    let mut schema = None;
    let mut examples = Map::new();
    let mut headers = Map::new();
    for code in &codes {
        let mut r = rs.remove(code).expect("listed");
        if let Some(name) =
            r.get("$ref").and_then(Value::as_str).and_then(|s| s.strip_prefix("#/components/responses/"))
        {
            r = shared.get(name).cloned().unwrap_or_else(|| json!({"description": name}));
        }
        let description = r.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " ");
        lines.push(format!("- `{code}`: {description}"));
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                headers.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if let Some(media) = r.pointer("/content/application~1json") {
            schema = schema.or_else(|| media.get("schema").cloned());
            if let Some(example) = media.get("example") {
                examples.insert(format!("status_{code}"), json!({"summary": code, "value": example}));
            }
            if let Some(named) = media.get("examples").and_then(Value::as_object) {
                for (k, v) in named {
                    examples.insert(format!("status_{code}_{k}"), v.clone());
                }
            }
        }
    }
    let mut default = json!({
        "description": format!("Not a success; the status is one of:\n\n{}", lines.join("\n")),
    });
    if let Some(schema) = schema {
        let mut media = json!({"schema": schema});
        if !examples.is_empty() {
            media["examples"] = Value::Object(examples);
        }
        default["content"] = json!({"application/json": media});
    }
    if !headers.is_empty() {
        default["headers"] = Value::Object(headers);
    }
    rs.insert("default".into(), default);
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// A response's non-JSON media types get a binary schema (keeping the old schema's example).
fn binary_bodies(r: &mut Value, schemas: &Value) {
    let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) else { return };
    for (media_type, media) in content.iter_mut() {
        if is_json(media_type) {
            continue;
        }
        let old = media.get("schema").cloned().unwrap_or(Value::Null);
        let old = match old.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
            Some(name) => schemas.get(name).cloned().unwrap_or(Value::Null),
            None => old,
        };
        if media.get("example").is_none() && media.get("examples").is_none() {
            if let Some(example) = old.get("example") {
                media["example"] = example.clone();
            }
        }
        media["schema"] = json!({"type": "string", "format": "binary"});
    }
    // Generators that read `text/*` as a string whatever the schema says, or know no `image/*`
    // (openapi-python-client), read `application/octet-stream` beside it (first, as media types
    // sort) as bytes, as all do.
    let other = content.iter().find(|(t, _)| !is_json(t)).map(|(_, m)| m.clone());
    if let Some(media) = other {
        content.entry("application/octet-stream").or_insert(media);
    }
}

/// An optional parameter's schema without `null`, and a reference to a plain scalar schema inline.
fn plain_parameter(p: &mut Value, schemas: &Value) {
    let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let Some(schema) = p.get_mut("schema") else { return };
    if !required {
        drop_null(schema);
    }
    let referred = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|name| schemas.get(name));
    if let Some(target) = referred.filter(|t| is_plain_scalar(t)) {
        let mut inline = target.clone();
        if let (Some(o), Some(siblings)) = (inline.as_object_mut(), schema.as_object()) {
            for (k, v) in siblings.iter().filter(|(k, _)| *k != "$ref") {
                o.insert(k.clone(), v.clone());
            }
        }
        *schema = inline;
    }
}

fn is_plain_scalar(s: &Value) -> bool {
    matches!(s.get("type").and_then(Value::as_str), Some("string" | "integer" | "number" | "boolean"))
        && s.get("enum").is_none()
}

/// `type: [T, "null"]` → `T`; `oneOf: [X, {type: null}]` → `X` (its siblings kept).
fn drop_null(schema: &mut Value) {
    let Some(o) = schema.as_object_mut() else { return };
    if let Some(Value::Array(types)) = o.get("type").cloned() {
        let rest: Vec<Value> = types.into_iter().filter(|t| t.as_str() != Some("null")).collect();
        o.insert("type".into(), if rest.len() == 1 { rest[0].clone() } else { Value::Array(rest) });
    }
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(items)) = o.get(key).cloned() else { continue };
        let rest: Vec<Value> =
            items.into_iter().filter(|i| i.get("type").and_then(Value::as_str) != Some("null")).collect();
        if rest.len() == 1 {
            o.remove(key);
            if let Value::Object(only) = &rest[0] {
                for (k, v) in only {
                    o.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        } else {
            o.insert(key.into(), Value::Array(rest));
        }
    }
}

/// The property that tells the variants of `items` apart: present and required in each, with one
/// value of its own.
fn tag_of(items: &[Value]) -> Option<(String, Vec<String>)> {
    let first = items.first()?.get("properties")?.as_object()?;
    'candidate: for name in first.keys() {
        let mut values = Vec::new();
        for item in items {
            let required = item.get("required").and_then(Value::as_array);
            let value = item.pointer(&format!("/properties/{name}/enum")).and_then(Value::as_array);
            match (required, value) {
                (Some(req), Some(one)) if one.len() == 1 && req.iter().any(|r| r == name.as_str()) => {
                    match one[0].as_str() {
                        Some(v) if !values.iter().any(|seen| seen == v) => values.push(v.to_string()),
                        _ => continue 'candidate,
                    }
                }
                _ => continue 'candidate,
            }
        }
        return Some((name.clone(), values));
    }
    None
}

fn pascal(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
        .collect()
}

/// Tagged unions in `components/schemas`: named variants and a discriminator.
fn name_tagged_variants(doc: &mut Value) {
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else { return };
    let mut added = Vec::new();
    for (parent, schema) in schemas.iter_mut() {
        let Some(items) = schema.get("oneOf").and_then(Value::as_array) else { continue };
        if items.len() < 2 || items.iter().any(|i| i.get("$ref").is_some() || i.get("type") != Some(&json!("object"))) {
            continue;
        }
        let Some((tag, values)) = tag_of(items) else { continue };
        let mut refs = Vec::new();
        let mut mapping = Map::new();
        for (item, value) in items.iter().zip(&values) {
            let name = format!("{parent}{}", pascal(value));
            let reference = format!("#/components/schemas/{name}");
            // The tag is required by the union (below), not by the variant: generators that read
            // the tag first and then the variant (serde's internally tagged enums, as
            // openapi-generator's `rust` writes them) find it consumed.
            let mut item = item.clone();
            if let Some(req) = item.get_mut("required").and_then(Value::as_array_mut) {
                req.retain(|r| r.as_str() != Some(tag.as_str()));
            }
            added.push((name, item));
            mapping.insert(value.clone(), Value::from(reference.clone()));
            refs.push(json!({"$ref": reference}));
        }
        schema["oneOf"] = Value::Array(refs);
        schema["discriminator"] = json!({"propertyName": tag, "mapping": mapping});
        schema["required"] = json!([tag]);
    }
    for (name, variant) in added {
        assert!(!schemas.contains_key(&name), "a variant's name {name} is taken in components/schemas");
        schemas.insert(name, variant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_merge_into_one_default_with_every_status_example_and_header() {
        let mut doc = json!({
            "paths": {"/x": {"get": {"responses": {
                "200": {"description": "ok", "content": {"text/markdown": {"schema": {"type": "string"}, "example": "# x"}}},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "429": {"description": "full", "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/E"}, "example": {"error": 2}}}}
            }, "parameters": [
                {"name": "m", "in": "query", "required": false, "schema": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Name"}]}},
                {"name": "k", "in": "query", "required": false, "schema": {"type": ["integer", "null"], "minimum": 1}}
            ]}}},
            "components": {
                "responses": {"Unauthorized": {"description": "no token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/E"}, "example": {"error": 1}}}}},
                "schemas": {"Name": {"type": "string", "pattern": "^[a-z]+$"}, "E": {"type": "object"}}
            }
        });
        shape(&mut doc);
        let rs = &doc["paths"]["/x"]["get"]["responses"];
        assert_eq!(rs.as_object().unwrap().keys().collect::<Vec<_>>(), ["200", "default"]);
        let d = &rs["default"];
        assert!(d["description"].as_str().unwrap().contains("- `401`: no token\n- `429`: full"), "{d}");
        assert_eq!(d["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/E");
        assert_eq!(d["content"]["application/json"]["examples"]["status_401"]["value"], json!({"error": 1}));
        assert_eq!(d["content"]["application/json"]["examples"]["status_429"]["value"], json!({"error": 2}));
        assert!(d["headers"]["Retry-After"].is_object());
        assert_eq!(rs["200"]["content"]["text/markdown"]["schema"], json!({"type": "string", "format": "binary"}));
        assert_eq!(rs["200"]["content"]["application/octet-stream"], rs["200"]["content"]["text/markdown"]);
        let params = &doc["paths"]["/x"]["get"]["parameters"];
        assert_eq!(params[0]["schema"], json!({"type": "string", "pattern": "^[a-z]+$"}));
        assert_eq!(params[1]["schema"], json!({"type": "integer", "minimum": 1}));
        assert!(doc["components"].get("responses").is_none());
    }

    #[test]
    fn tagged_unions_get_named_variants_and_a_discriminator() {
        let variant = |kind: &str, field: &str| {
            json!({"type": "object", "required": [field, "kind"],
                   "properties": {"kind": {"type": "string", "enum": [kind]}, field: {"type": "number"}}})
        };
        let mut doc = json!({"components": {"schemas": {
            "Decay": {"oneOf": [variant("linear", "bottom_lr"), variant("geometric", "factor")]},
            "Plain": {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "object"}]}
        }}});
        shape(&mut doc);
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["Decay"]["oneOf"],
            json!([{"$ref": "#/components/schemas/DecayLinear"}, {"$ref": "#/components/schemas/DecayGeometric"}])
        );
        assert_eq!(s["Decay"]["discriminator"]["propertyName"], "kind");
        assert_eq!(s["Decay"]["discriminator"]["mapping"]["geometric"], "#/components/schemas/DecayGeometric");
        assert_eq!(s["Decay"]["required"], json!(["kind"]));
        let mut linear = variant("linear", "bottom_lr");
        linear["required"] = json!(["bottom_lr"]);
        assert_eq!(s["DecayLinear"], linear);
        assert!(s["Plain"].get("discriminator").is_none(), "no tag, no discriminator");
    }
}
