-- Deploys to environments (issue 14): recorded plans, what was deployed where, one lock per
-- environment, and the audit trail of every plan, approval, apply, verdict and rollback.

CREATE TABLE deploy_plans (
    id TEXT PRIMARY KEY,                -- sha256 of the plan's body (its hash)
    environment TEXT NOT NULL,
    body TEXT NOT NULL,                 -- the plan as JSON
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    -- planned, approved, applying, applied, rolled_back, rollback_failed, failed, interrupted
    state TEXT NOT NULL,
    approved_by TEXT,
    approved_at INTEGER,
    run_id TEXT,
    rollback_run_id TEXT,
    finished_at INTEGER
);
CREATE INDEX deploy_plans_environment ON deploy_plans (environment, created_at);

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    commit_id TEXT,
    -- deployed, rolled_back (commit_id: the version returned to), failed (the service's state is
    -- unknown), rollback_failed
    action TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX deployments_environment_service ON deployments (environment, service, id);

CREATE TABLE deploy_locks (
    environment TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL,
    -- the process applying the plan: pid and start time (as runs record theirs)
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    acquired_at INTEGER NOT NULL
);

CREATE TABLE deploy_events (
    id INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    plan_id TEXT,
    at INTEGER NOT NULL,
    -- planned, approved, apply_started, deployed, deploy_failed, rollback, rolled_back,
    -- rollback_failed, applied, refused, interrupted
    kind TEXT NOT NULL,
    actor TEXT,
    detail TEXT NOT NULL                -- JSON
);
CREATE INDEX deploy_events_environment ON deploy_events (environment, id);
