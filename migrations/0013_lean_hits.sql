-- What a run of cache hits rewrote that it need not (issue "change-aware runs", benchmark (b)):
-- - the index of steps by service: each run put one entry for each of its services at as many
--   places of the index (a thousand services touched a thousand leaf pages, written to the WAL
--   and back). A service's history is now read by walking the runs newest first and probing
--   the (run_id, service) index each run already has.
-- - each used cache entry's row, to move its `used_at`: entries are keyed by random hashes, so a
--   run of a thousand hits rewrote nearly every page of `cache_entries`. When an entry was last
--   used is now kept in `cache_use`, a narrow table (an entry's `used_at` stays the time it was
--   stored; the later of the two counts).
DROP INDEX steps_service;
DROP INDEX cache_entries_used;
CREATE TABLE cache_use (
    key      TEXT PRIMARY KEY NOT NULL,
    used_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
