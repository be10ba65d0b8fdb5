//! The vocabulary every layer shares, defined once below the store, the plugin host and the
//! manifest: the types whose values cross those boundaries.

use serde::Serialize;

/// One field of a plugin's configuration, as its `describe()` documents it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigField {
    pub name: String,
    /// A JSON type name: `string`, `bool`, `integer`, `number`, `array`, `object` (anything else
    /// is not checked).
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub description: String,
}

/// How many tests of a step passed, failed and were skipped: one type from the plugin's report
/// to the store, the CLI and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TestCounts {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
}

/// A file a step produced, relative to the service folder: one type from the plugin's report
/// to the store, the CLI and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    pub path: String,
    pub kind: String,
    /// 64 hex digits, when the plugin gave a valid one.
    pub sha256: Option<String>,
}

/// A time as every JSON body shows it: RFC 3339 in UTC with milliseconds
/// (`2026-12-01T23:11:07.123Z`), from the Unix milliseconds the store keeps.
pub fn rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `#[serde(with = "crate::model::time")]` for an `i64` of Unix milliseconds.
pub mod time {
    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }
}

/// `#[serde(with = "crate::model::time_opt")]` for an `Option<i64>` of Unix milliseconds.
pub mod time_opt {
    pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
            None => s.serialize_none(),
        }
    }
}
