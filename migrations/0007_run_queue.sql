-- Runs that wait for a slot: `nestr serve` executes a bounded number of runs at once and records
-- the rest as `queued` (journal kind `run_queued`) until one of its slots frees. Also: the index
-- for pages of runs covers the whole order (created_at, id). SQLite cannot
-- change a CHECK constraint in place, so `runs` and `run_events` are rebuilt (the store turns
-- foreign keys off while it migrates, as SQLite's procedure for such changes asks, and checks
-- them after).

CREATE TABLE runs_new (
    id           TEXT PRIMARY KEY NOT NULL,
    operation    TEXT NOT NULL,
    selection    TEXT NOT NULL,
    options      TEXT NOT NULL DEFAULT '{}',
    started_by   TEXT NOT NULL,
    host         TEXT,
    pid          INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
                                                 'cancelled', 'interrupted')),
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    pid_start    INTEGER
) STRICT;

INSERT INTO runs_new (rowid, id, operation, selection, options, started_by, host, pid, status,
                      created_at, finished_at, pid_start)
    SELECT rowid, id, operation, selection, options, started_by, host, pid, status, created_at,
           finished_at, pid_start FROM runs;

DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
-- Pages of runs, newest first, walk this index and stop after a page.
CREATE INDEX runs_page ON runs (created_at DESC, id DESC);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE run_events_new (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id  INTEGER REFERENCES steps (id) ON DELETE CASCADE,
    kind     TEXT NOT NULL CHECK (kind IN ('run_queued', 'run_started', 'step_queued',
                                           'step_started', 'step_finished', 'run_finished')),
    status   TEXT,
    at       INTEGER NOT NULL
) STRICT;

INSERT INTO run_events_new (id, run_id, step_id, kind, status, at)
    SELECT id, run_id, step_id, kind, status, at FROM run_events;

DROP TABLE run_events;
ALTER TABLE run_events_new RENAME TO run_events;
CREATE INDEX run_events_run ON run_events (run_id, id);
