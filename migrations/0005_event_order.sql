-- What a live event stream (the API's Server-Sent Events) needs to resume exactly where a client
-- left off: log chunks get a global id in insertion order, and a journal of run transitions
-- (run started, step queued/started/finished, run finished) in the order they happened.

CREATE TABLE log_chunks_ordered (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    step_id    INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    stream     TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log', 'system')),
    level      TEXT,
    text       TEXT NOT NULL,
    UNIQUE (step_id, first_seq)
) STRICT;

INSERT INTO log_chunks_ordered (step_id, first_seq, last_seq, at, stream, level, text)
    SELECT step_id, first_seq, last_seq, at, stream, level, text FROM log_chunks
    ORDER BY at, step_id, first_seq;

DROP TABLE log_chunks;
ALTER TABLE log_chunks_ordered RENAME TO log_chunks;

CREATE TABLE run_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id  INTEGER REFERENCES steps (id) ON DELETE CASCADE,
    kind     TEXT NOT NULL CHECK (kind IN ('run_started', 'step_queued', 'step_started',
                                           'step_finished', 'run_finished')),
    status   TEXT,
    at       INTEGER NOT NULL
) STRICT;

CREATE INDEX run_events_run ON run_events (run_id, id);

-- The journal of runs recorded before this migration, rebuilt from what they stored.
INSERT INTO run_events (run_id, step_id, kind, status, at)
    SELECT run_id, step_id, kind, status, at FROM (
        SELECT id AS run_id, NULL AS step_id, 'run_started' AS kind, 'running' AS status,
               created_at AS at, 0 AS rank, 0 AS ord FROM runs
        UNION ALL
        SELECT s.run_id, s.id, 'step_queued', 'queued', r.created_at, 1, s.id
            FROM steps s JOIN runs r ON r.id = s.run_id
        UNION ALL
        SELECT run_id, id, 'step_started', 'running', started_at, 2, id
            FROM steps WHERE started_at IS NOT NULL
        UNION ALL
        SELECT run_id, id, 'step_finished', status, finished_at, 3, id
            FROM steps WHERE finished_at IS NOT NULL
        UNION ALL
        SELECT id, NULL, 'run_finished', status, finished_at, 4, 0
            FROM runs WHERE finished_at IS NOT NULL
    ) ORDER BY run_id, at, rank, ord;
