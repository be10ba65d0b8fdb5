-- Repositories of the workspace as nestr last saw them, and the history of assemble/sync results.
-- Times are milliseconds since the Unix epoch (UTC). URLs are stored with credentials redacted.

CREATE TABLE repos (
    name              TEXT PRIMARY KEY NOT NULL,
    url               TEXT NOT NULL,
    path              TEXT NOT NULL,
    branch            TEXT,
    head              TEXT,
    last_sync_at      INTEGER,
    last_sync_result  TEXT CHECK (last_sync_result IN ('updated', 'up_to_date', 'cloned', 'skipped', 'failed')),
    last_sync_message TEXT,
    updated_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE sync_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    repo      TEXT NOT NULL REFERENCES repos (name) ON DELETE CASCADE,
    action    TEXT NOT NULL CHECK (action IN ('assemble', 'sync')),
    at        INTEGER NOT NULL,
    result    TEXT NOT NULL CHECK (result IN ('updated', 'up_to_date', 'cloned', 'skipped', 'failed')),
    old_head  TEXT,
    new_head  TEXT,
    message   TEXT
) STRICT;

CREATE INDEX sync_events_repo_at ON sync_events (repo, at DESC);
