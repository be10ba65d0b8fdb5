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
