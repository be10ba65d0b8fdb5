-- The CHECK constraints of the tables a run writes a row to per step (`steps`, `run_events`,
-- `log_chunks`) are written as comparisons instead of IN lists: SQLite builds a temporary
-- b-tree of an IN list's values for every row it checks (2.1 µs a row against 0.3 µs for the
-- comparisons, on the benchmark machine), and a run of a thousand cache hits writes some six
-- thousand checked rows. The allowed values are the same. The tables are rebuilt (SQLite cannot
-- change a constraint in place; foreign keys are off while the store migrates) with their rows,
-- ids, indexes and AUTOINCREMENT counters.

CREATE TABLE steps_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    service        TEXT NOT NULL,
    plugin         TEXT NOT NULL,
    plugin_digest  TEXT,
    status         TEXT NOT NULL CHECK (status = 'queued' OR status = 'running'
                                        OR status = 'succeeded' OR status = 'failed'
                                        OR status = 'skipped' OR status = 'denied'
                                        OR status = 'timed_out' OR status = 'resource_exhausted'
                                        OR status = 'cancelled' OR status = 'interrupted'
                                        OR status = 'cached'),
    started_at     INTEGER,
    finished_at    INTEGER,
    duration_ms    INTEGER,
    summary        TEXT,
    reason         TEXT,
    tests_passed   INTEGER,
    tests_failed   INTEGER,
    tests_skipped  INTEGER,
    artifacts      TEXT NOT NULL DEFAULT '[]',
    metrics        TEXT NOT NULL DEFAULT '{}',
    grants         TEXT NOT NULL DEFAULT '{}',
    cache_key      TEXT,
    cache_source   TEXT CHECK (cache_source = 'local' OR cache_source = 'remote'),
    saved_ms       INTEGER,
    provenance     TEXT,
    UNIQUE (run_id, service)
) STRICT;
INSERT INTO steps_new (id, run_id, service, plugin, plugin_digest, status, started_at,
                       finished_at, duration_ms, summary, reason, tests_passed, tests_failed,
                       tests_skipped, artifacts, metrics, grants, cache_key, cache_source,
                       saved_ms, provenance)
    SELECT id, run_id, service, plugin, plugin_digest, status, started_at, finished_at,
           duration_ms, summary, reason, tests_passed, tests_failed, tests_skipped, artifacts,
           metrics, grants, cache_key, cache_source, saved_ms, provenance FROM steps;
DELETE FROM sqlite_sequence WHERE name = 'steps_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'steps_new', seq FROM sqlite_sequence WHERE name = 'steps';
DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;

CREATE TABLE run_events_new (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id  INTEGER REFERENCES steps (id) ON DELETE CASCADE,
    kind     TEXT NOT NULL CHECK (kind = 'run_queued' OR kind = 'run_started'
                                  OR kind = 'step_queued' OR kind = 'step_started'
                                  OR kind = 'step_finished' OR kind = 'run_finished'),
    status   TEXT,
    at       INTEGER NOT NULL
) STRICT;
INSERT INTO run_events_new (id, run_id, step_id, kind, status, at)
    SELECT id, run_id, step_id, kind, status, at FROM run_events;
DELETE FROM sqlite_sequence WHERE name = 'run_events_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'run_events_new', seq FROM sqlite_sequence WHERE name = 'run_events';
DROP TABLE run_events;
ALTER TABLE run_events_new RENAME TO run_events;
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE TABLE log_chunks_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    step_id    INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    stream     TEXT NOT NULL CHECK (stream = 'stdout' OR stream = 'stderr' OR stream = 'log'
                                    OR stream = 'system'),
    level      TEXT,
    text       TEXT NOT NULL,
    run_id     TEXT,
    line0      INTEGER,
    UNIQUE (step_id, first_seq)
) STRICT;
INSERT INTO log_chunks_new (id, step_id, first_seq, last_seq, at, stream, level, text, run_id,
                            line0)
    SELECT id, step_id, first_seq, last_seq, at, stream, level, text, run_id, line0
    FROM log_chunks;
DELETE FROM sqlite_sequence WHERE name = 'log_chunks_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'log_chunks_new', seq FROM sqlite_sequence WHERE name = 'log_chunks';
DROP TABLE log_chunks;
ALTER TABLE log_chunks_new RENAME TO log_chunks;
CREATE INDEX log_chunks_run_line ON log_chunks (run_id, line0);
CREATE INDEX log_chunks_run ON log_chunks (run_id, id);
