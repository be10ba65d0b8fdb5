//! The config fields a plugin documents, derived from its config type's `JsonSchema` (the serde
//! struct is the one declaration: names, JSON types, required-ness and the doc comments).

use serde_json::Value;

use crate::ConfigField;

/// The fields of `T`, a struct read from the `config` table; empty for anything else (a type
/// with no named fields, such as [`crate::NoConfig`] or `serde_json::Value`).
pub fn fields<T: schemars::JsonSchema>() -> Vec<ConfigField> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    let root = schema.as_value();
    let defs = root.get("$defs");
    let root = resolve(root, defs);
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| ConfigField {
            name: name.clone(),
            ty: json_type(p, defs),
            required: required.contains(&name.as_str()),
            description: p
                .get("description")
                .or_else(|| resolve(p, defs).get("description"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                // A doc comment wrapped over lines reads as one line.
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
}

/// Follows a `$ref` into `$defs`.
fn resolve<'a>(v: &'a Value, defs: Option<&'a Value>) -> &'a Value {
    let target = v
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs?.get(name));
    target.unwrap_or(v)
}

/// The one JSON type a value of schema `v` has (`null` aside), in the names nestr checks;
/// `any` when it may be several.
fn json_type(v: &Value, defs: Option<&Value>) -> String {
    let mut types = Vec::new();
    collect(v, defs, &mut types, 0);
    types.retain(|t| t != "null");
    types.sort();
    types.dedup();
    match types.as_slice() {
        [one] => one.clone(),
        _ => "any".to_string(),
    }
}

fn collect(v: &Value, defs: Option<&Value>, out: &mut Vec<String>, depth: u32) {
    if depth > 16 {
        out.push("any".into());
        return;
    }
    let v = resolve(v, defs);
    let name = |t: &str| match t {
        "boolean" => "bool".to_string(),
        other => other.to_string(),
    };
    match v.get("type") {
        Some(Value::String(t)) => out.push(name(t)),
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(name)),
        _ => {
            let mut any = true;
            for key in ["anyOf", "oneOf", "allOf"] {
                if let Some(list) = v.get(key).and_then(Value::as_array) {
                    any = false;
                    for item in list {
                        collect(item, defs, out, depth + 1);
                    }
                }
            }
            let values: Vec<&Value> = match (v.get("enum"), v.get("const")) {
                (Some(Value::Array(e)), _) => e.iter().collect(),
                (_, Some(c)) => vec![c],
                _ => Vec::new(),
            };
            if !values.is_empty() {
                any = false;
                for value in values {
                    out.push(
                        match value {
                            Value::String(_) => "string",
                            Value::Bool(_) => "bool",
                            Value::Number(n) if n.is_f64() => "number",
                            Value::Number(_) => "integer",
                            Value::Array(_) => "array",
                            Value::Object(_) => "object",
                            Value::Null => "null",
                        }
                        .to_string(),
                    );
                }
            }
            if any {
                out.push("any".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config of a plugin.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Config {
        /// Build with
        /// --release.
        #[serde(default)]
        release: bool,
        /// The package to build.
        package: Option<String>,
        /// Features to enable.
        features: Vec<String>,
        /// How hard to try.
        mode: Mode,
        /// A count.
        jobs: Option<u32>,
        /// Anything.
        extra: serde_json::Value,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Mode {
        Fast,
        Slow,
    }

    #[test]
    fn fields_come_from_the_struct_and_its_doc_comments() {
        let f = fields::<Config>();
        let get = |n: &str| f.iter().find(|x| x.name == n).expect(n);
        assert_eq!(f.len(), 6);
        assert_eq!(get("release").ty, "bool");
        assert!(!get("release").required);
        assert_eq!(get("release").description, "Build with --release.");
        assert_eq!(get("package").ty, "string");
        assert!(!get("package").required);
        assert_eq!(get("features").ty, "array");
        assert!(get("features").required);
        assert_eq!(get("mode").ty, "string");
        assert_eq!(get("mode").description, "How hard to try.");
        assert_eq!(get("jobs").ty, "integer");
        assert_eq!(get("extra").ty, "any");
        assert!(fields::<crate::NoConfig>().is_empty());
        assert!(fields::<serde_json::Value>().is_empty());
    }
}
