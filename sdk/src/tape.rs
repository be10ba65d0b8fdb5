//! Tapes: what crossed the boundary in one step — the request, every host call with its answer,
//! the log lines and the result — as JSON. `nestr run OP --record DIR` writes one per step from
//! a real run; [`crate::testing::replay`] runs the plugin natively against it, answering each
//! call from the tape and checking the plugin asks the same things in the same order.

use serde::{Deserialize, Serialize};

use crate::{Error, Level, Output, Report, Request};

/// The tape format's version; a reader refuses others.
pub const FORMAT: u32 = 1;

/// One step's host calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tape {
    /// [`FORMAT`].
    pub nestr_tape: u32,
    /// The plugin's name and the contract it speaks (`nestr:plugin@0.2.0`).
    pub plugin: String,
    pub contract: String,
    pub request: Request,
    pub calls: Vec<Call>,
    pub logs: Vec<LogLine>,
    /// What `run` returned; absent when it did not return (a trap, the deadline).
    pub result: Option<Result<Report, Error>>,
}

/// One host call and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Exec {
        command: crate::Command,
        result: Result<Output, Error>,
    },
    Http {
        request: crate::http::Request,
        result: Result<crate::http::Response, Error>,
    },
}

/// A line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

impl Tape {
    /// Reads a tape, refusing another format version.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Tape, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the tape {}: {e}", path.display()))?;
        let tape: Tape = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a nestr tape: {e}", path.display()))?;
        if tape.nestr_tape != FORMAT {
            return Err(format!(
                "{} is tape format {}; this nestr-sdk reads format {FORMAT}",
                path.display(),
                tape.nestr_tape
            ));
        }
        Ok(tape)
    }

    /// The tape as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "…"}`.
pub mod bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Base64 { base64: String },
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(text) => Repr::Text(text.to_string()),
            Err(_) => Repr::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(b),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(serde::de::Error::custom),
        }
    }
}
