-- Operation runs, their steps (one per service), the steps' log lines, and the audit trail of
-- capability decisions. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    operation    TEXT NOT NULL,
    selection    TEXT NOT NULL,            -- JSON: {"services": [...], "tags": [...]}
    options      TEXT NOT NULL DEFAULT '{}', -- JSON
    started_by   TEXT NOT NULL,            -- "cli" or "api"
    host         TEXT,
    pid          INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER
) STRICT;

CREATE INDEX runs_created ON runs (created_at DESC);

CREATE TABLE steps (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    service        TEXT NOT NULL,
    plugin         TEXT NOT NULL,
    plugin_digest  TEXT,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'skipped',
                                                   'denied', 'timed_out', 'resource_exhausted',
                                                   'cancelled', 'interrupted')),
    started_at     INTEGER,
    finished_at    INTEGER,
    duration_ms    INTEGER,
    summary        TEXT,
    reason         TEXT,
    tests_passed   INTEGER,
    tests_failed   INTEGER,
    tests_skipped  INTEGER,
    artifacts      TEXT NOT NULL DEFAULT '[]', -- JSON
    metrics        TEXT NOT NULL DEFAULT '{}', -- JSON
    grants         TEXT NOT NULL DEFAULT '{}', -- JSON: the effective capabilities used
    UNIQUE (run_id, service)
) STRICT;

CREATE TABLE log_lines (
    step_id  INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log', 'system')),
    level    TEXT,
    text     TEXT NOT NULL,
    PRIMARY KEY (step_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    run_id      TEXT,
    step_id     INTEGER,
    plugin      TEXT NOT NULL,
    capability  TEXT NOT NULL,
    requested   TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('denied', 'allowed')),
    detail      TEXT
) STRICT;

CREATE INDEX audit_run ON audit (run_id);
