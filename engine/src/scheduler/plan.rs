//! Planning a run: which services (names and tags, plus their dependencies or dependents on
//! request), which of them have the operation, and the dependency DAG between them, in levels.
//! Nothing is executed or recorded here.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::manifest::Manifest;

/// Which services a run covers.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Add everything the selection depends on.
    #[serde(default)]
    pub with_deps: bool,
    /// Add everything that depends on the selection.
    #[serde(default)]
    pub with_dependents: bool,
}

/// One planned step.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub service: String,
    /// The plugin that runs it; None when the service lacks the operation (skipped).
    pub plugin: Option<String>,
    /// Why it will be skipped, if it will.
    pub skip: Option<String>,
    /// Selected services it waits for.
    pub depends_on: Vec<String>,
    /// 0 for steps without dependencies in the plan, else 1 + the deepest dependency's level.
    pub level: usize,
    /// At most this many steps of the operation run at once (from the manifest).
    pub concurrency: Option<u32>,
}

/// A plan: steps in an order that respects every dependency.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub operation: String,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Steps grouped by level.
    pub fn levels(&self) -> Vec<Vec<&PlannedStep>> {
        let depth = self.steps.iter().map(|s| s.level + 1).max().unwrap_or(0);
        (0..depth)
            .map(|l| self.steps.iter().filter(|s| s.level == l).collect())
            .collect()
    }

    /// The smallest `concurrency` any selected service's operation sets.
    pub fn concurrency(&self) -> Option<u32> {
        self.steps.iter().filter_map(|s| s.concurrency).min()
    }
}

/// A plan as it is shown: by `nestr run --dry-run --json` and `GET /api/plan`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub operation: String,
    /// At most this many steps at once (the smallest `concurrency` of the selected services).
    pub concurrency: Option<u32>,
    /// The steps by level: level 0 has no dependency in the plan; each later level waits for
    /// earlier ones.
    pub levels: Vec<Vec<PlanViewStep>>,
}

/// A step of a [`PlanView`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanViewStep {
    pub service: String,
    /// The plugin that runs it; null when the service lacks the operation.
    pub plugin: Option<String>,
    /// Selected services it waits for.
    pub depends_on: Vec<String>,
    /// Why it will be skipped, if it will.
    pub skip: Option<String>,
}

impl Plan {
    /// How the plan is shown.
    pub fn view(&self) -> PlanView {
        PlanView {
            operation: self.operation.clone(),
            concurrency: self.concurrency(),
            levels: self
                .levels()
                .iter()
                .map(|l| {
                    l.iter()
                        .map(|s| PlanViewStep {
                            service: s.service.clone(),
                            plugin: s.plugin.clone(),
                            depends_on: s.depends_on.clone(),
                            skip: s.skip.clone(),
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectionError(pub String);

/// The services `sel` names: by name and tag, with their dependencies or dependents when asked;
/// naming none selects every service that has `operation` (every service, without one).
pub fn select<'m>(
    m: &'m Manifest,
    sel: &Selection,
    operation: Option<&str>,
) -> Result<BTreeSet<&'m str>, SelectionError> {
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    for name in &sel.services {
        let Some(service) = m.service(name) else {
            let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
            return Err(SelectionError(format!(
                "there is no service `{name}`; services: {}",
                names.join(", ")
            )));
        };
        chosen.insert(service.name.as_str());
    }
    for tag in &sel.tags {
        let tagged: Vec<&str> = m
            .services
            .iter()
            .filter(|s| s.tags.contains(tag))
            .map(|s| s.name.as_str())
            .collect();
        if tagged.is_empty() {
            return Err(SelectionError(format!("no service has the tag `{tag}`")));
        }
        chosen.extend(tagged);
    }
    let explicit = !(sel.services.is_empty() && sel.tags.is_empty());
    if !explicit {
        chosen = m
            .services
            .iter()
            .filter(|s| operation.is_none_or(|op| m.operation(s, op).is_some()))
            .map(|s| s.name.as_str())
            .collect();
        if let (true, Some(op)) = (chosen.is_empty(), operation) {
            return Err(unknown_operation(m, op, None));
        }
    }
    let deps: HashMap<&str, Vec<&str>> = m
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    if sel.with_deps {
        let mut stack: Vec<&str> = chosen.iter().copied().collect();
        while let Some(s) = stack.pop() {
            for d in deps.get(s).into_iter().flatten() {
                if chosen.insert(d) {
                    stack.push(d);
                }
            }
        }
    }
    if sel.with_dependents {
        let mut stack: Vec<&str> = chosen.iter().copied().collect();
        while let Some(s) = stack.pop() {
            for (svc, ds) in &deps {
                if ds.contains(&s) && chosen.insert(svc) {
                    stack.push(svc);
                }
            }
        }
    }

    Ok(chosen)
}

/// Selects services and orders them so that dependencies come first.
pub fn plan(m: &Manifest, operation: &str, sel: &Selection) -> Result<Plan, SelectionError> {
    let chosen = select(m, sel, Some(operation))?;
    // Kahn's algorithm, taking ready services in manifest order; level = longest path.
    let mut level: HashMap<&str, usize> = HashMap::new();
    let mut done: HashSet<&str> = HashSet::new();
    let mut steps = Vec::new();
    // Each chosen service's count of chosen dependencies not yet planned, and who waits on it;
    // the ready ones by manifest position (the smallest first), so a plan of thousands of
    // services costs a heap operation per step, not a scan of the manifest.
    let position: HashMap<&str, usize> = m
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut waiting: Vec<usize> = vec![0; m.services.len()];
    let mut waiters: Vec<Vec<usize>> = vec![Vec::new(); m.services.len()];
    let mut ready = std::collections::BinaryHeap::new();
    for (i, s) in m.services.iter().enumerate() {
        if !chosen.contains(s.name.as_str()) {
            continue;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for d in &s.depends_on {
            if chosen.contains(d.as_str())
                && seen.insert(d.as_str())
                && let Some(&j) = position.get(d.as_str())
            {
                waiting[i] += 1;
                waiters[j].push(i);
            }
        }
        if waiting[i] == 0 {
            ready.push(std::cmp::Reverse(i));
        }
    }
    while steps.len() < chosen.len() {
        let next = ready.pop().map(|std::cmp::Reverse(i)| {
            for &w in &waiters[i] {
                waiting[w] -= 1;
                if waiting[w] == 0 {
                    ready.push(std::cmp::Reverse(w));
                }
            }
            &m.services[i]
        });
        let Some(next) = next else {
            return Err(SelectionError(
                "the selected services depend on each other in a cycle".into(),
            ));
        };
        let in_plan: Vec<String> = next
            .depends_on
            .iter()
            .filter(|d| chosen.contains(d.as_str()))
            .cloned()
            .collect();
        let lvl = in_plan
            .iter()
            .filter_map(|d| level.get(d.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level.insert(next.name.as_str(), lvl);
        done.insert(next.name.as_str());
        let spec = m.operation(next, operation);
        steps.push(PlannedStep {
            service: next.name.clone(),
            plugin: spec.map(|o| o.plugin.clone()),
            skip: spec.is_none().then(|| {
                if next.opted_out.iter().any(|o| o == operation) {
                    format!(
                        "service `{}` opts out of `{operation}` (`{operation} = false`)",
                        next.name
                    )
                } else {
                    format!("service `{}` does not define `{operation}`", next.name)
                }
            }),
            depends_on: in_plan,
            level: lvl,
            concurrency: spec.and_then(|o| o.concurrency),
        });
    }
    // A selection none of whose services has the operation is a mistake (a mistyped name, the
    // wrong service), not a run of skipped steps that would pass for a success.
    let opted_out = |svc: &str| {
        m.service(svc)
            .is_some_and(|s| s.opted_out.iter().any(|o| o == operation))
    };
    if steps
        .iter()
        .all(|s| s.skip.is_some() && !opted_out(&s.service))
    {
        let selected: Vec<&str> = steps.iter().map(|s| s.service.as_str()).collect();
        return Err(unknown_operation(m, operation, Some(&selected)));
    }
    Ok(Plan {
        operation: operation.to_string(),
        steps,
    })
}

/// Why no selected service can run `operation`: a "did you mean" over every operation the
/// manifest defines, or which services do define it.
fn unknown_operation(m: &Manifest, operation: &str, selected: Option<&[&str]>) -> SelectionError {
    let defining: Vec<&str> = m
        .services
        .iter()
        .filter(|s| m.operation(s, operation).is_some())
        .map(|s| s.name.as_str())
        .collect();
    let names = m.all_operation_names();
    let hint = if defining.is_empty() {
        crate::manifest::did_you_mean(operation, names.iter().map(String::as_str))
    } else {
        format!("services that define it: {}", defining.join(", "))
    };
    SelectionError(match selected {
        Some(selected) => format!(
            "none of the selected services ({}) defines the operation `{operation}`; {hint}",
            selected.join(", ")
        ),
        None => format!(
            "no service defines the operation `{operation}` (and there is no \
             [operations.{operation}] default); {hint}"
        ),
    })
}
