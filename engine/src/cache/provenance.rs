//! Run provenance: what produced each step's result, as an in-toto Statement v1 with a SLSA
//! Provenance v1 predicate. A step records (in `steps.provenance`) its repository, commit and
//! the programs it ran (argv, exit, duration); its key manifest holds the plugin digest and
//! contract, effective grants, config, resolved programs and inputs (tree ids). Environment
//! variables appear by name only. Subjects are the step's artifacts and outputs with their
//! digests (a step that produced no file is its own subject: the digest of its result record).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::{RunHead, StepRow};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
pub const BUILD_TYPE: &str = "https://nestr.dev/provenance/step/v1";

/// Programs recorded per step (the rest are counted).
pub const MAX_PROGRAM_RUNS: usize = 1000;

/// A program a step ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramRun {
    /// The program as spawned (absolute path) and its arguments, masked.
    pub argv: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
}

/// What a step records about how its result was produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepProvenance {
    pub repo: Option<String>,
    pub url: Option<String>,
    pub commit: Option<String>,
    pub branch: Option<String>,
    #[serde(default)]
    pub programs_run: Vec<ProgramRun>,
    /// Programs run beyond [`MAX_PROGRAM_RUNS`].
    #[serde(default)]
    pub programs_not_recorded: u64,
    /// The files restored or stored with the result (`outputs`).
    #[serde(default)]
    pub outputs: Vec<super::OutputFile>,
    /// A hit: the run whose result was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
}

/// The statement for one step of a run.
pub fn statement(
    run: &RunHead,
    step: &StepRow,
    key: Option<&Value>,
    prov: &StepProvenance,
) -> Value {
    let null = Value::Null;
    let key_doc = key.unwrap_or(&null);
    let mut subjects: Vec<Value> = Vec::new();
    for a in &step.artifacts {
        if let Some(d) = &a.sha256 {
            subjects.push(json!({"name": a.path, "digest": {"sha256": d}}));
        }
    }
    for o in &prov.outputs {
        if !subjects.iter().any(|s| s["name"] == o.path.as_str()) {
            subjects.push(json!({"name": o.path, "digest": {"sha256": o.sha256}}));
        }
    }
    if subjects.is_empty() {
        let record = json!({
            "run": run.id, "service": step.service, "status": step.status,
            "summary": step.summary, "tests": step.tests, "key": step.cache.as_ref().map(|c| &c.key),
        });
        subjects.push(json!({
            "name": format!("nestr-step:{}/{}", run.id, step.service),
            "digest": {"sha256": hex::encode(Sha256::digest(record.to_string().as_bytes()))},
        }));
    }
    let mut deps: Vec<Value> = Vec::new();
    if let (Some(repo), Some(commit)) = (&prov.repo, &prov.commit) {
        let url = prov.url.clone().unwrap_or_default();
        deps.push(json!({
            "name": format!("repo:{repo}"),
            "uri": format!("git+{url}@{commit}"),
            "digest": {"gitCommit": commit},
            "annotations": {"branch": prov.branch},
        }));
    }
    let inputs = &key_doc["inputs"];
    if let Some(tree) = inputs["tree"].as_str() {
        deps.push(json!({
            "name": format!("tree:{}/{}", inputs["repo"].as_str().unwrap_or(""), inputs["path"].as_str().unwrap_or(".")),
            "digest": {"gitTree": tree},
        }));
    }
    let plugin = &key_doc["plugin"];
    let digest = step
        .plugin_digest
        .clone()
        .or_else(|| plugin["digest"].as_str().map(str::to_string));
    if let Some(d) = digest {
        deps.push(json!({
            "name": format!("plugin:{}", step.plugin),
            "uri": format!("nestr:plugin/{}", step.plugin),
            "digest": {"sha256": d},
            "annotations": {"contract": plugin["contract"]},
        }));
    }
    if let Some(programs) = key_doc["programs"].as_object() {
        for (name, p) in programs {
            if let (Some(path), Some(d)) = (p["path"].as_str(), p["sha256"].as_str()) {
                deps.push(json!({
                    "name": format!("program:{name}"),
                    "uri": format!("file://{path}"),
                    "digest": {"sha256": d},
                }));
            }
        }
    }
    let names = |part: &str| -> Vec<String> {
        key_doc[part]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut byproducts: Vec<Value> = prov
        .programs_run
        .iter()
        .map(|p| {
            json!({
                "name": "program-run",
                "annotations": {
                    "argv": p.argv, "exit_code": p.exit_code, "signal": p.signal,
                    "duration_ms": p.duration_ms,
                },
            })
        })
        .collect();
    if let Some(from) = &prov.cached_from {
        byproducts.push(json!({"name": "cached-result", "annotations": {"run_id": from}}));
    }
    let time = |ms: Option<i64>| ms.map(crate::model::rfc3339);
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "invocationId".into(),
        json!(format!("{}/{}", run.id, step.service)),
    );
    if let Some(t) = time(step.started_at) {
        metadata.insert("startedOn".into(), json!(t));
    }
    if let Some(t) = time(step.finished_at) {
        metadata.insert("finishedOn".into(), json!(t));
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "operation": run.operation,
                    "service": step.service,
                    "config": key_doc["config"],
                    "inputs": key_doc["inputs"],
                },
                "internalParameters": {
                    "grants": key_doc["grants"],
                    "env": names("env"),
                    "secrets": names("secrets"),
                    "cache_key": step.cache.as_ref().map(|c| &c.key),
                    "status": step.status,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": "https://nestr.dev/engine",
                    "version": {"nestr": env!("CARGO_PKG_VERSION")},
                },
                "metadata": metadata,
                "byproducts": byproducts,
            },
        },
    })
}

/// Why provenance cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("there is no run `{0}`")]
    NoRun(String),
    #[error("run `{run}` has no step for service `{service}`")]
    NoStep { run: String, service: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The statements of run `run_id`'s steps that ran or were cached (of `service` only, when
/// given), in step order: what `nestr runs provenance` prints and
/// `GET /api/runs/{id}/provenance` answers.
pub fn for_run(
    store: &crate::store::Store,
    run_id: &str,
    service: Option<&str>,
) -> Result<Vec<Value>, ProvenanceError> {
    let run = store
        .run(run_id)?
        .ok_or_else(|| ProvenanceError::NoRun(run_id.to_string()))?;
    if let Some(s) = service
        && !run.steps.iter().any(|st| st.service == s)
    {
        return Err(ProvenanceError::NoStep {
            run: run_id.to_string(),
            service: s.to_string(),
        });
    }
    let mut out = Vec::new();
    for step in &run.steps {
        if service.is_some_and(|s| s != step.service) || step.started_at.is_none() {
            continue;
        }
        let key = match &step.cache {
            Some(c) => store
                .key_manifest(&c.key)?
                .and_then(|t| serde_json::from_str::<Value>(&t).ok()),
            None => None,
        };
        let prov: StepProvenance = step
            .provenance
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        out.push(statement(&run.run, step, key.as_ref(), &prov));
    }
    Ok(out)
}
