//! The vocabulary every layer shares, defined once below the store, the plugin host, git and
//! the scheduler: the types whose values cross those boundaries. Each word list (statuses,
//! streams, scopes, journal kinds, …) is an enum whose text form is derived once (strum) and
//! used for JSON (serde), the command line (clap, where it is an option) and SQL (`ToSql` /
//! `FromSql` from [`words!`]); an unknown word read back from the store is an error, never a
//! silent default.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};

/// Defines a word list: an enum with its one text form (strum, in `$case`) used by serde, SQL
/// (`ToSql` / `FromSql`), `Display` and `as_str`; extra derives (e.g. `clap::ValueEnum`) go in
/// the attributes.
macro_rules! words {
    ($case:tt; $(#[$meta:meta])* pub enum $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            Serialize,
            Deserialize,
            utoipa::ToSchema,
            IntoStaticStr,
            EnumString,
            VariantArray,
        )]
        #[serde(rename_all = $case)]
        #[strum(serialize_all = $case)]
        pub enum $name { $($body)* }

        impl $name {
            /// The word as JSON, SQL and the command line spell it.
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            /// Every word of the list, in declaration order.
            pub fn words() -> Vec<&'static str> {
                <Self as VariantArray>::VARIANTS.iter().map(|w| w.as_str()).collect()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = v.as_str()?;
                text.parse().map_err(|_| {
                    rusqlite::types::FromSqlError::Other(
                        format!("`{text}` is not a known {}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

words! {
    "snake_case";
    /// How a step ended (or where it stands).
    pub enum StepStatus {
        Queued,
        Running,
        Succeeded,
        Failed,
        Skipped,
        Denied,
        TimedOut,
        ResourceExhausted,
        Cancelled,
        Interrupted,
        /// Not run: the result stored in the cache under the step's key was used.
        Cached,
    }
}

impl StepStatus {
    /// Succeeded, cached or skipped: nothing went wrong.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Cached | StepStatus::Skipped
        )
    }
}

words! {
    "kebab-case";
    /// How a run uses the operation cache (`--cache`), where the operation has `cache = true`.
    #[derive(clap::ValueEnum, Default)]
    pub enum CacheMode {
        /// Use stored results and store new ones.
        #[default]
        ReadWrite,
        /// Use stored results; store nothing.
        Read,
        /// Run every step; store the results.
        Write,
        /// Neither (like `--no-cache`).
        Off,
    }
}

impl CacheMode {
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::ReadWrite | CacheMode::Read)
    }

    pub fn writes(self) -> bool {
        matches!(self, CacheMode::ReadWrite | CacheMode::Write)
    }
}

words! {
    "snake_case";
    /// How a run ended (or that it waits for a slot, or runs).
    pub enum RunStatus {
        /// Recorded, waiting for one of `nestr serve`'s run slots (`[api] max_runs`).
        Queued,
        Running,
        Succeeded,
        Failed,
        Cancelled,
        Interrupted,
    }
}

impl RunStatus {
    /// Queued or running: the run has not ended.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

words! {
    "lowercase";
    /// Where a log line came from.
    pub enum Stream {
        Stdout,
        Stderr,
        /// The plugin's `log` import.
        Log,
        /// The engine (truncation markers, denials, timeouts).
        System,
    }
}

words! {
    "snake_case";
    /// A transition in a run's journal (`run_events.kind`), also the `event:` of its SSE stream.
    pub enum JournalKind {
        RunQueued,
        RunStarted,
        StepQueued,
        StepStarted,
        StepFinished,
        RunFinished,
    }
}

words! {
    "snake_case";
    /// Which command produced a repository result.
    pub enum SyncAction {
        Assemble,
        Sync,
    }
}

words! {
    "snake_case";
    /// The result of assembling or syncing one repository.
    pub enum SyncResult {
        Cloned,
        Updated,
        UpToDate,
        Skipped,
        Failed,
    }
}

words! {
    "lowercase";
    /// What an API token may do.
    #[derive(clap::ValueEnum)]
    pub enum Scope {
        /// GET requests.
        Read,
        /// GET and POST requests (approving a deploy plan excepted).
        Write,
        /// GET requests, and approving deploy plans (`POST /api/deploys/{plan}/approve`).
        Approve,
    }
}

words! {
    "lowercase";
    /// Where a repository's working copy stands against its upstream.
    pub enum RepoState {
        Clean,
        Dirty,
        Ahead,
        Behind,
        Diverged,
        Detached,
        Missing,
    }
}

words! {
    "kebab-case";
    /// What happens after a step does not succeed.
    #[derive(clap::ValueEnum, Default)]
    pub enum ContinueMode {
        /// Start nothing new after the first failure (running steps finish).
        #[default]
        Never,
        /// Go on with every step whose dependencies all succeeded.
        DependenciesOk,
        /// Run everything regardless of failures.
        Always,
    }
}

/// One field of a plugin's configuration, as its `describe()` documents it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every word is the same in JSON, in SQL and back: one spelling.
    fn round_trips<T>()
    where
        T: VariantArray + Copy + PartialEq + std::fmt::Debug + Serialize + std::str::FromStr,
        T: rusqlite::types::ToSql + rusqlite::types::FromSql,
        &'static str: From<T>,
    {
        let db = rusqlite::Connection::open_in_memory().expect("db");
        for &v in T::VARIANTS {
            let word: &'static str = v.into();
            assert_eq!(
                serde_json::to_value(v).expect("json"),
                serde_json::Value::String(word.into())
            );
            assert_eq!(word.parse::<T>().ok(), Some(v), "{word}");
            let back: T = db.query_row("SELECT ?1", [&v], |r| r.get(0)).expect("sql");
            assert_eq!(back, v);
        }
        let unknown: rusqlite::Result<T> = db.query_row("SELECT 'nonsense'", [], |r| r.get(0));
        assert!(
            unknown.is_err(),
            "an unknown word is an error, not a default"
        );
    }

    #[test]
    fn every_word_has_one_spelling() {
        round_trips::<StepStatus>();
        round_trips::<RunStatus>();
        round_trips::<Stream>();
        round_trips::<JournalKind>();
        round_trips::<SyncAction>();
        round_trips::<SyncResult>();
        round_trips::<Scope>();
        round_trips::<RepoState>();
        round_trips::<ContinueMode>();
        round_trips::<CacheMode>();
        assert_eq!(StepStatus::TimedOut.as_str(), "timed_out");
        assert_eq!(ContinueMode::DependenciesOk.as_str(), "dependencies-ok");
    }
}
