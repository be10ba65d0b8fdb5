-- The dashboard's log view reads any line of a run's log directly: each chunk gets its run
-- (`run_id`, which `step_id` implies, kept here for the index) and the run-wide number of its
-- first line (`line0`: the lines of the run's chunks stored before it), and each run counts the
-- lines stored so far (`log_lines`). `log_chunks_run_line` is the index from a line number to
-- its chunk. Chunks of earlier runs are numbered in the order they were stored (their ids).

ALTER TABLE log_chunks ADD COLUMN run_id TEXT;
ALTER TABLE log_chunks ADD COLUMN line0 INTEGER;
ALTER TABLE runs ADD COLUMN log_lines INTEGER NOT NULL DEFAULT 0;

UPDATE log_chunks SET run_id = (SELECT s.run_id FROM steps s WHERE s.id = log_chunks.step_id);

UPDATE log_chunks SET line0 = w.line0
    FROM (SELECT id,
                 sum(last_seq - first_seq + 1) OVER (PARTITION BY run_id ORDER BY id)
                     - (last_seq - first_seq + 1) AS line0
          FROM log_chunks) AS w
    WHERE w.id = log_chunks.id;

UPDATE runs SET log_lines = coalesce(
    (SELECT sum(c.last_seq - c.first_seq + 1) FROM log_chunks c WHERE c.run_id = runs.id), 0);

CREATE INDEX log_chunks_run_line ON log_chunks (run_id, line0);
-- A run's chunks in the order stored (the event streams and `after` cursors read by chunk id).
CREATE INDEX log_chunks_run ON log_chunks (run_id, id);
