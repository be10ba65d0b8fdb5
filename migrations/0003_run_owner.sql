-- The process executing a run: its pid (already recorded) and its start time (clock ticks since
-- boot, /proc/PID/stat field 22), so that a reused pid is not mistaken for the owner.
ALTER TABLE runs ADD COLUMN pid_start INTEGER;

CREATE INDEX runs_status ON runs (status);
