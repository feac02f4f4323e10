//! The OpenAPI document rendered as OpenAPI 3.0.3 (`openapi/openapi-3.0.json`), for client
//! generators that do not read 3.1 (progenitor, older openapi-generator templates). The same
//! document, with 3.1's JSON Schema spelled as 3.0 spells it: `type: [T, "null"]` and a `null`
//! alternative become `nullable`, a schema's `examples` list its `example`, a numeric
//! `exclusiveMinimum` a `minimum` with the boolean, `const` a one-value `enum`; `propertyNames`,
//! `contentMediaType` and the licence's SPDX `identifier` (3.1 only) go.
use serde_json::{Map, Value};

/// `doc` (OpenAPI 3.1, as utoipa writes it) as OpenAPI 3.0.3.
pub fn render(doc: &Value) -> Value {
    let mut out = doc.clone();
    convert(&mut out);
    out["openapi"] = Value::from("3.0.3");
    if let Some(license) = out.pointer_mut("/info/license").and_then(Value::as_object_mut) {
        license.remove("identifier");
    }
    if let Some(o) = out.as_object_mut() {
        o.remove("jsonSchemaDialect");
    }
    out
}

fn is_null_type(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null") && v.as_object().is_some_and(|o| o.len() == 1)
}

fn convert(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(convert),
        Value::Object(o) => {
            for child in o.values_mut() {
                convert(child);
            }
            convert_schema(o);
        }
        _ => {}
    }
}

/// One object, its children already converted.
fn convert_schema(o: &mut Map<String, Value>) {
    // `type: ["string", "null"]` → `type: "string", nullable: true`.
    if let Some(Value::Array(types)) = o.get("type").cloned() {
        let rest: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if rest.len() < types.len() {
            o.insert("nullable".into(), Value::Bool(true));
        }
        match rest.len() {
            0 => {
                o.remove("type");
            }
            1 => {
                o.insert("type".into(), rest[0].clone());
            }
            _ => {
                o.remove("type");
                let alternatives = rest.into_iter().map(|t| serde_json::json!({"type": t})).collect();
                o.insert("anyOf".into(), Value::Array(alternatives));
            }
        }
    }
    // A `null` alternative of oneOf/anyOf → nullable.
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(items)) = o.get(key).cloned() else { continue };
        let rest: Vec<Value> = items.iter().filter(|i| !is_null_type(i)).cloned().collect();
        if rest.len() == items.len() {
            continue;
        }
        o.insert("nullable".into(), Value::Bool(true));
        if rest.len() == 1 {
            o.remove(key);
            let only = rest.into_iter().next().expect("one");
            if only.get("$ref").is_some() {
                // 3.0 ignores a `$ref`'s siblings: the reference goes under allOf.
                o.insert("allOf".into(), Value::Array(vec![only]));
            } else if let Value::Object(fields) = only {
                for (k, val) in fields {
                    o.entry(k).or_insert(val);
                }
            }
        } else {
            o.insert(key.into(), Value::Array(rest));
        }
    }
    // JSON Schema's `examples` (a list) → OpenAPI 3.0's `example`; a media type's or parameter's
    // `examples` (a map) stays.
    if let Some(Value::Array(examples)) = o.get("examples").cloned() {
        o.remove("examples");
        if let Some(first) = examples.into_iter().next() {
            o.entry("example").or_insert(first);
        }
    }
    for (bound, exclusive) in [("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")] {
        if let Some(n) = o.get(exclusive).filter(|v| v.is_number()).cloned() {
            o.insert(bound.into(), n);
            o.insert(exclusive.into(), Value::Bool(true));
        }
    }
    if let Some(c) = o.remove("const") {
        o.insert("enum".into(), Value::Array(vec![c]));
    }
    // Keywords 3.0 does not have: what a map's keys may be (they are strings anyway), and what a
    // string holds (its description says so too).
    for key in ["propertyNames", "contentMediaType", "contentEncoding"] {
        o.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_schema_2020_is_spelled_as_openapi_3_0() {
        let doc = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1", "license": {"name": "A", "identifier": "Apache-2.0"}},
        "components": {"schemas": {"S": {"type": "object", "properties": {
            "a": {"type": ["string", "null"]},
            "b": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/T"}]},
            "c": {"type": "integer", "exclusiveMinimum": 0},
            "d": {"const": "x"},
            "e": {"type": "array", "items": {"type": "integer"}, "examples": [[1, 2]]},
            "f": {"type": "object", "additionalProperties": {"type": "integer"}, "propertyNames": {"type": "string"}}
        }}}}});
        let out = render(&doc);
        assert_eq!(out["openapi"], "3.0.3");
        assert!(out["info"]["license"].get("identifier").is_none());
        let p = &out["components"]["schemas"]["S"]["properties"];
        assert_eq!(p["a"], json!({"type": "string", "nullable": true}));
        assert_eq!(p["b"], json!({"allOf": [{"$ref": "#/components/schemas/T"}], "nullable": true}));
        assert_eq!(p["c"], json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true}));
        assert_eq!(p["d"], json!({"enum": ["x"]}));
        assert_eq!(p["e"]["example"], json!([1, 2]));
        assert!(p["f"].get("propertyNames").is_none());
        let left = serde_json::to_string(&out).unwrap();
        assert!(!left.contains("\"null\""), "{left}");
    }
}
