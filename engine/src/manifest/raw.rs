//! The manifest exactly as written: serde structures that keep the source span of every key and
//! value so that validation can point at the line and column at fault. Unknown keys are refused
//! here (by `deny_unknown_fields`); meaning is checked in `validate`.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

pub(crate) type Named<T> = IndexMap<Spanned<String>, Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub workspace: Spanned<RawWorkspace>,
    #[serde(default)]
    pub repos: Named<RawRepo>,
    #[serde(default)]
    pub services: Named<RawService>,
    #[serde(default)]
    pub operations: Named<RawOperation>,
    #[serde(default)]
    pub plugins: Named<RawPlugin>,
    pub api: Option<RawApi>,
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub environments: Named<RawEnvironment>,
}

/// `[environments.NAME]`: where deploys go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    pub approval: Option<Spanned<bool>>,
    pub max_parallel: Option<Spanned<i64>>,
    pub operation: Option<Spanned<String>>,
    pub config: Option<Spanned<Named<toml::Value>>>,
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub services: Named<RawEnvironmentService>,
}

/// `health = { url, passes, failures, interval, timeout }`: the engine's gate after a deploy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub url: Spanned<String>,
    pub passes: Option<Spanned<i64>>,
    pub failures: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `[environments.NAME.services.SERVICE]`: one service's overrides there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironmentService {
    pub config: Option<Spanned<Named<toml::Value>>>,
    pub health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub max_size: Option<Spanned<toml::Value>>,
    pub remote: Option<Spanned<String>>,
    pub remote_read_only: Option<Spanned<bool>>,
    pub remote_secret: Option<Spanned<String>>,
    pub remote_auth: Option<Spanned<String>>,
    pub remote_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    #[serde(default)]
    pub cors_origins: Vec<Spanned<String>>,
    pub rate_limit: Option<Spanned<i64>>,
    pub max_runs: Option<Spanned<i64>>,
    pub max_queued: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkspace {
    pub name: Spanned<String>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepo {
    pub url: Spanned<String>,
    pub branch: Option<Spanned<String>>,
    pub tag: Option<Spanned<String>>,
    pub rev: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub repo: Spanned<String>,
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<RawDep>>,
    /// `wire = true`: every dependency is wired.
    pub wire: Option<Spanned<bool>>,
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub operations: Named<RawServiceOperation>,
}

/// One `depends_on` entry: `"name"` or `{ service = "name", wire = true }`.
#[derive(Debug)]
pub(crate) struct RawDep {
    pub service: String,
    pub wire: bool,
}

impl<'de> Deserialize<'de> for RawDep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = RawDep;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a service name, or a table `{ service = \"name\", wire = true }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDep, E> {
                Ok(RawDep {
                    service: v.to_string(),
                    wire: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawDep, A::Error> {
                let (mut service, mut wire) = (None, false);
                while let Some(key) = m.next_key::<String>()? {
                    match key.as_str() {
                        "service" => service = Some(m.next_value::<String>()?),
                        "wire" => wire = m.next_value::<bool>()?,
                        other => {
                            return Err(de::Error::unknown_field(other, &["service", "wire"]));
                        }
                    }
                }
                let service = service.ok_or_else(|| de::Error::missing_field("service"))?;
                Ok(RawDep { service, wire })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// A service's operation: its own definition, or `false` to turn a workspace default off.
#[derive(Debug)]
pub(crate) enum RawServiceOperation {
    Own(Box<RawOperation>),
    Switch(bool),
}

impl<'de> Deserialize<'de> for RawServiceOperation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawServiceOperation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an operation table `{ plugin = \"…\" }`, or `false` to turn a workspace default off")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(RawServiceOperation::Switch(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawOperation::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|o| RawServiceOperation::Own(Box::new(o)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOperation {
    pub plugin: Spanned<String>,
    pub config: Option<Spanned<Named<toml::Value>>>,
    pub concurrency: Option<Spanned<i64>>,
    pub cache: Option<Spanned<bool>>,
    pub inputs: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    pub path: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    pub grants: Option<Spanned<RawGrants>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrants {
    #[serde(default)]
    pub exec: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    pub fs: Option<Spanned<String>>,
    pub memory_mb: Option<Spanned<i64>>,
    pub output_mb: Option<Spanned<i64>>,
    pub disk_mb: Option<Spanned<i64>>,
    pub pids: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<String>>,
}
