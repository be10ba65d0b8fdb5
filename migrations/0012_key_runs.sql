-- A key manifest records the run that first had its key (`cache explain` names that run when no
-- stored entry does), and the index of steps by key goes: keys are random hashes, so each run
-- inserted its thousand keys at a thousand places of that index, most of what recording a run's
-- keys cost. Old manifests take the newest run that had their key, read through the index
-- before it is dropped.
ALTER TABLE key_manifests ADD COLUMN run_id TEXT;
UPDATE key_manifests SET run_id =
    (SELECT s.run_id FROM steps s WHERE s.cache_key = key_manifests.key ORDER BY s.id DESC LIMIT 1);
DROP INDEX steps_key;
