//! Each operation's `config` checked against the fields its plugin documents in `describe()`:
//! unknown keys (with "did you mean" and the plugin's field list), missing required fields and
//! values of the wrong type, every one at its file:line:column. The manifest does not load
//! plugins itself; the caller says what each plugin documents.

use super::diagnostic::{InvalidManifest, Problems};
use super::validate::closest;
use super::{Manifest, OperationSpec};
use crate::model::ConfigField;

/// What a plugin's `describe()` says that the manifest is checked against.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginDoc {
    /// The fields of its `config`.
    pub config: Vec<ConfigField>,
    /// Whether its results may be cached (`cache = true` on an operation it runs).
    pub cacheable: bool,
}

impl Manifest {
    /// Every problem of every operation's `config`, and every `cache = true` on a plugin that
    /// is not cacheable, given what each plugin documents (`None`: the plugin could not be
    /// loaded, which its steps report; nothing is checked).
    pub fn check_config(
        &self,
        doc_of: &dyn Fn(&str) -> Option<PluginDoc>,
    ) -> Result<(), InvalidManifest> {
        let mut problems = Problems::new(&self.source);
        let ops = self
            .operations
            .iter()
            .chain(self.services.iter().flat_map(|s| s.operations.iter()));
        let mut known: std::collections::HashMap<&str, Option<PluginDoc>> = Default::default();
        for (name, op) in ops {
            let doc = known
                .entry(op.plugin.as_str())
                .or_insert_with(|| doc_of(&op.plugin));
            if let Some(doc) = doc {
                check_one(name, op, &doc.config, &mut problems);
                if let (false, true, Some(site)) = (doc.cacheable, op.cache, &op.cache_site) {
                    problems.err(
                        site.clone(),
                        format!(
                            "operation `{name}` sets `cache = true`, but plugin `{}` says its \
                             results must not be cached (it acts on the world, e.g. deploys)",
                            op.plugin
                        ),
                        "remove `cache = true` from this operation",
                    );
                }
            }
        }
        if problems.list.is_empty() {
            Ok(())
        } else {
            Err(InvalidManifest::new(
                &self.path,
                &self.source,
                problems.list,
            ))
        }
    }
}

fn field_list(fields: &[ConfigField]) -> String {
    if fields.is_empty() {
        return "no configuration fields".to_string();
    }
    let list: Vec<String> = fields
        .iter()
        .map(|f| {
            let req = if f.required { ", required" } else { "" };
            format!("`{}` ({}{req})", f.name, f.ty)
        })
        .collect();
    format!("these fields: {}", list.join(", "))
}

fn check_one(operation: &str, op: &OperationSpec, fields: &[ConfigField], p: &mut Problems<'_>) {
    let plugin = &op.plugin;
    let names = || fields.iter().map(|f| f.name.as_str());
    // A required field a mistyped key was meant to be is reported once, as the typo.
    let mut suggested: Vec<&str> = Vec::new();
    for key in &op.site.keys {
        let Some(field) = fields.iter().find(|f| f.name == key.name) else {
            suggested.extend(closest(&key.name, names()));
            p.err(
                key.key.clone(),
                format!(
                    "plugin `{plugin}` has no config field `{}` (operation `{operation}`)",
                    key.name
                ),
                format!(
                    "{}`{plugin}` documents {}; see `nestr plugin inspect {plugin}`",
                    closest(&key.name, names())
                        .map(|b| format!("did you mean `{b}`? "))
                        .unwrap_or_default(),
                    field_list(fields)
                ),
            );
            continue;
        };
        let value = op.config.get(&key.name);
        if let Some(v) = value
            && !type_matches(&field.ty, v)
        {
            p.err(
                key.value.clone(),
                format!(
                    "config field `{}` of plugin `{plugin}` must be {}, not {}",
                    key.name,
                    article(&field.ty),
                    article(json_type(v))
                ),
                if field.description.is_empty() {
                    format!("write {} value", article(&field.ty))
                } else {
                    format!("`{}`: {}", key.name, field.description)
                },
            );
        }
    }
    for f in fields.iter().filter(|f| f.required) {
        if op.config.get(&f.name).is_none() && !suggested.contains(&f.name.as_str()) {
            p.err(
                op.site.table.clone(),
                format!(
                    "operation `{operation}` lacks the config field `{}` that plugin `{plugin}` requires",
                    f.name
                ),
                format!(
                    "add `{} = …` ({}) to its `config`{}",
                    f.name,
                    f.ty,
                    if f.description.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", f.description)
                    }
                ),
            );
        }
    }
}

/// The JSON type name of a value, as plugins name their fields' types.
fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Whether `v` is of the documented type (an integer is a number too; a type name nestr does
/// not know is not checked).
fn type_matches(ty: &str, v: &serde_json::Value) -> bool {
    let actual = json_type(v);
    match ty {
        "string" | "bool" | "integer" | "array" | "object" => actual == ty,
        "boolean" => actual == "bool",
        "number" => actual == "number" || actual == "integer",
        _ => true,
    }
}

fn article(ty: &str) -> String {
    match ty.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}
