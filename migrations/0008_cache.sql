-- The operation cache (issue "change-aware runs"). A step may end `cached`: its result was taken
-- from the cache under its key instead of being run. Each step records its key (`cache_key`,
-- whose human-readable key manifest is in `key_manifests`), where a hit came from
-- (`cache_source`: local or remote), the time the hit saved (`saved_ms`) and what produced its
-- result (`provenance`: the programs it ran). `steps` is rebuilt to admit the new status (SQLite
-- cannot change a CHECK constraint in place; foreign keys are off while the store migrates).

CREATE TABLE steps_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    service        TEXT NOT NULL,
    plugin         TEXT NOT NULL,
    plugin_digest  TEXT,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'skipped',
                                                   'denied', 'timed_out', 'resource_exhausted',
                                                   'cancelled', 'interrupted', 'cached')),
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
    cache_source   TEXT CHECK (cache_source IN ('local', 'remote')),
    saved_ms       INTEGER,
    provenance     TEXT,
    UNIQUE (run_id, service)
) STRICT;

INSERT INTO steps_new (id, run_id, service, plugin, plugin_digest, status, started_at, finished_at,
                       duration_ms, summary, reason, tests_passed, tests_failed, tests_skipped,
                       artifacts, metrics, grants)
    SELECT id, run_id, service, plugin, plugin_digest, status, started_at, finished_at,
           duration_ms, summary, reason, tests_passed, tests_failed, tests_skipped, artifacts,
           metrics, grants FROM steps;

DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;
-- Steps of one service, newest first (the nearest entry `cache explain` compares against).
CREATE INDEX steps_service ON steps (service, id DESC);
CREATE INDEX steps_key ON steps (cache_key);

-- Every key manifest once, by its key (the sha256 of its canonical text).
CREATE TABLE key_manifests (
    key         TEXT PRIMARY KEY NOT NULL,
    manifest    TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- Stored results, by key: the step's report, its log and outputs as blobs (files under
-- cache/blobs/ named by the sha256 of their content), used least recently first to go.
CREATE TABLE cache_entries (
    key           TEXT PRIMARY KEY NOT NULL,
    operation     TEXT NOT NULL,
    service       TEXT NOT NULL,
    result        TEXT NOT NULL,   -- JSON: summary, tests, artifacts, metrics, duration, log, outputs
    size          INTEGER NOT NULL, -- bytes of its blobs, compressed
    run_id        TEXT,
    created_at    INTEGER NOT NULL,
    used_at       INTEGER NOT NULL
) STRICT;

CREATE INDEX cache_entries_used ON cache_entries (used_at);
CREATE INDEX cache_entries_service ON cache_entries (operation, service, created_at DESC);

-- Which blobs each entry holds: a blob no entry holds is deleted by `cache prune`.
CREATE TABLE cache_blobs (
    key     TEXT NOT NULL REFERENCES cache_entries (key) ON DELETE CASCADE,
    digest  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (key, digest)
) STRICT, WITHOUT ROWID;

CREATE INDEX cache_blobs_digest ON cache_blobs (digest);

-- The sha256 of a program file, kept while its size and modification time stay the same.
CREATE TABLE program_digests (
    path      TEXT PRIMARY KEY NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    sha256    TEXT NOT NULL
) STRICT, WITHOUT ROWID;
