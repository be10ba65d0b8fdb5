//! Deploy records: plans (`deploy_plans`), what was deployed where (`deployments`), the one lock
//! per environment (`deploy_locks`, owned by a process, taken over when that process is gone)
//! and the audit trail (`deploy_events`).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};

/// A recorded plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub id: String,
    pub environment: String,
    #[serde(skip)]
    pub body: String,
    #[serde(with = "crate::model::time")]
    pub created_at: i64,
    pub created_by: String,
    pub state: String,
    pub approved_by: Option<String>,
    #[serde(with = "crate::model::time_opt")]
    pub approved_at: Option<i64>,
    pub run_id: Option<String>,
    pub rollback_run_id: Option<String>,
    #[serde(with = "crate::model::time_opt")]
    pub finished_at: Option<i64>,
}

/// One deployment of a service to an environment.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRow {
    pub id: i64,
    pub environment: String,
    pub service: String,
    pub commit: Option<String>,
    pub action: String,
    pub plan_id: String,
    pub run_id: String,
    #[serde(with = "crate::model::time")]
    pub at: i64,
}

/// Who holds an environment's lock.
#[derive(Debug, Clone, Serialize)]
pub struct LockRow {
    pub environment: String,
    pub plan_id: String,
    pub pid: i64,
    #[serde(skip)]
    pub pid_start: Option<i64>,
    #[serde(with = "crate::model::time")]
    pub acquired_at: i64,
}

/// An audit record.
#[derive(Debug, Clone, Serialize)]
pub struct DeployEvent {
    pub id: i64,
    pub environment: String,
    pub plan_id: Option<String>,
    #[serde(with = "crate::model::time")]
    pub at: i64,
    pub kind: String,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockRefused {
    /// A live process holds it.
    Held(LockRow),
    Store(StoreError),
}

impl From<StoreError> for LockRefused {
    fn from(e: StoreError) -> Self {
        LockRefused::Store(e)
    }
}

const PLAN_COLUMNS: &str = "id, environment, body, created_at, created_by, state, approved_by, \
                            approved_at, run_id, rollback_run_id, finished_at";

fn plan_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlanRow> {
    Ok(PlanRow {
        id: r.get(0)?,
        environment: r.get(1)?,
        body: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        state: r.get(5)?,
        approved_by: r.get(6)?,
        approved_at: r.get(7)?,
        run_id: r.get(8)?,
        rollback_run_id: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

fn deployment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(0)?,
        environment: r.get(1)?,
        service: r.get(2)?,
        commit: r.get(3)?,
        action: r.get(4)?,
        plan_id: r.get(5)?,
        run_id: r.get(6)?,
        at: r.get(7)?,
    })
}

fn lock_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockRow> {
    Ok(LockRow {
        environment: r.get(0)?,
        plan_id: r.get(1)?,
        pid: r.get(2)?,
        pid_start: r.get(3)?,
        acquired_at: r.get(4)?,
    })
}

impl Store {
    /// Records a plan (a plan recorded twice is the same plan: kept as it was).
    pub fn insert_plan(
        &mut self,
        id: &str,
        environment: &str,
        body: &str,
        created_by: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO deploy_plans (id, environment, body, created_at, created_by, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'planned')",
                params![id, environment, body, now, created_by],
            )
        })?;
        Ok(())
    }

    /// A plan by its hash, or by a unique prefix of it.
    pub fn plan(&self, id: &str) -> Result<Option<PlanRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {PLAN_COLUMNS} FROM deploy_plans WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2"
        ))?;
        let rows: Vec<PlanRow> = stmt
            .query_map(params![id], plan_row)?
            .collect::<Result<_, _>>()?;
        Ok(match rows.as_slice() {
            [one] => Some(one.clone()),
            _ => rows.into_iter().find(|r| r.id == id),
        })
    }

    /// The newest plans of an environment (every environment: `None`), newest first.
    pub fn plans(&self, environment: Option<&str>, limit: u32) -> Result<Vec<PlanRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {PLAN_COLUMNS} FROM deploy_plans WHERE ?1 IS NULL OR environment = ?1 \
             ORDER BY created_at DESC, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![environment, limit], plan_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets a plan's state (and, when given, its runs; finished states stamp `finished_at`).
    pub fn set_plan_state(
        &mut self,
        id: &str,
        state: &str,
        run_id: Option<&str>,
        rollback_run_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let finished = matches!(
            state,
            "applied" | "rolled_back" | "rollback_failed" | "failed" | "interrupted"
        )
        .then(now_ms);
        self.write(|tx| {
            tx.execute(
                "UPDATE deploy_plans SET state = ?2, run_id = COALESCE(?3, run_id), \
                 rollback_run_id = COALESCE(?4, rollback_run_id), \
                 finished_at = COALESCE(?5, finished_at) WHERE id = ?1",
                params![id, state, run_id, rollback_run_id, finished],
            )
        })?;
        Ok(())
    }

    /// Records an approval.
    pub fn approve_plan(&mut self, id: &str, by: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "UPDATE deploy_plans SET state = 'approved', approved_by = ?2, approved_at = ?3 \
                 WHERE id = ?1 AND state IN ('planned', 'approved')",
                params![id, by, now],
            )
        })?;
        Ok(())
    }

    /// Records a deployment.
    pub fn insert_deployment(
        &mut self,
        environment: &str,
        service: &str,
        commit: Option<&str>,
        action: &str,
        plan_id: &str,
        run_id: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO deployments (environment, service, commit_id, action, plan_id, run_id, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![environment, service, commit, action, plan_id, run_id, now],
            )
        })?;
        Ok(())
    }

    /// The newest deployment of each service to `environment` (by service).
    pub fn latest_deployments(&self, environment: &str) -> Result<Vec<DeploymentRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, environment, service, commit_id, action, plan_id, run_id, at FROM deployments d \
             WHERE environment = ?1 AND id = (SELECT MAX(id) FROM deployments e \
             WHERE e.environment = d.environment AND e.service = d.service) ORDER BY service",
        )?;
        let rows = stmt.query_map(params![environment], deployment_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest deployment of `service` to `environment` that left a known version running
    /// (deployed or rolled back).
    pub fn running_version(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<DeploymentRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, environment, service, commit_id, action, plan_id, run_id, at FROM deployments \
             WHERE environment = ?1 AND service = ?2 AND action IN ('deployed', 'rolled_back') \
             ORDER BY id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![environment, service], deployment_row)
            .optional()?)
    }

    /// The id of the newest audit record that ended an apply to `environment` (0: none yet):
    /// a plan made before another apply finished is stale.
    pub fn last_apply_end(&self, environment: &str) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(id), 0) FROM deploy_events WHERE environment = ?1 AND kind IN \
             ('applied', 'rolled_back', 'rollback_failed', 'deploy_failed', 'interrupted')",
            params![environment],
            |r| r.get(0),
        )?)
    }

    /// Appends an audit record.
    pub fn deploy_event(
        &mut self,
        environment: &str,
        plan_id: Option<&str>,
        kind: &str,
        actor: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let detail = detail.to_string();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO deploy_events (environment, plan_id, at, kind, actor, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![environment, plan_id, now, kind, actor, detail],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// The audit records of a plan (every plan of the environment: `plan` None), oldest first.
    pub fn deploy_events(
        &self,
        environment: &str,
        plan: Option<&str>,
    ) -> Result<Vec<DeployEvent>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, environment, plan_id, at, kind, actor, detail FROM deploy_events \
             WHERE environment = ?1 AND (?2 IS NULL OR plan_id = ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![environment, plan], |r| {
            let detail: String = r.get(6)?;
            Ok(DeployEvent {
                id: r.get(0)?,
                environment: r.get(1)?,
                plan_id: r.get(2)?,
                at: r.get(3)?,
                kind: r.get(4)?,
                actor: r.get(5)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Takes `environment`'s lock for `plan_id` and this process, unless a live process holds
    /// it. A lock whose process is gone is taken over; its holder is returned so that the caller
    /// can report that apply as interrupted.
    pub fn take_deploy_lock(
        &mut self,
        environment: &str,
        plan_id: &str,
    ) -> Result<Option<LockRow>, LockRefused> {
        let pid = i64::from(std::process::id());
        let start = crate::scheduler::recover::own_start();
        let now = now_ms();
        let held = self.deploy_lock(environment)?;
        // Held by a live process, or by a paused plan (pid 0) other than this one.
        if let Some(h) = &held
            && h.plan_id != plan_id
            && (h.pid == 0 || crate::scheduler::recover::owner_alive(Some(h.pid), h.pid_start))
        {
            return Err(LockRefused::Held(h.clone()));
        }
        let taken = self.write(|tx| {
            // Only over the row just read: two processes racing for a dead owner's lock do not
            // both win.
            let n = match &held {
                Some(h) => tx.execute(
                    "UPDATE deploy_locks SET plan_id = ?2, pid = ?3, pid_start = ?4, acquired_at = ?5 \
                     WHERE environment = ?1 AND pid = ?6 AND acquired_at = ?7",
                    params![environment, plan_id, pid, start, now, h.pid, h.acquired_at],
                )?,
                None => tx.execute(
                    "INSERT OR IGNORE INTO deploy_locks (environment, plan_id, pid, pid_start, acquired_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![environment, plan_id, pid, start, now],
                )?,
            };
            Ok(n == 1)
        })?;
        if !taken {
            return match self.deploy_lock(environment)? {
                Some(h) => Err(LockRefused::Held(h)),
                None => self.take_deploy_lock(environment, plan_id),
            };
        }
        Ok(held)
    }

    /// Who holds `environment`'s lock, if anyone (alive or not).
    pub fn deploy_lock(&self, environment: &str) -> Result<Option<LockRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT environment, plan_id, pid, pid_start, acquired_at FROM deploy_locks WHERE environment = ?1",
        )?;
        Ok(stmt.query_row(params![environment], lock_row).optional()?)
    }

    /// Every lock held (alive or not).
    pub fn deploy_locks(&self) -> Result<Vec<LockRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT environment, plan_id, pid, pid_start, acquired_at FROM deploy_locks ORDER BY environment",
        )?;
        let rows = stmt.query_map([], lock_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps `environment` held by `plan_id` with no process (pid 0): a paused apply.
    pub fn pause_deploy_lock(
        &mut self,
        environment: &str,
        plan_id: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE deploy_locks SET pid = 0, pid_start = NULL WHERE environment = ?1 AND plan_id = ?2",
                params![environment, plan_id],
            )
        })?;
        Ok(())
    }

    /// Releases `environment`'s lock if `plan_id` holds it.
    pub fn release_deploy_lock(
        &mut self,
        environment: &str,
        plan_id: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM deploy_locks WHERE environment = ?1 AND plan_id = ?2",
                params![environment, plan_id],
            )
        })?;
        Ok(())
    }
}
