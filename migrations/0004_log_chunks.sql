-- Log lines are stored in chunks: the consecutive lines of one stream that arrived together,
-- joined with '\n', numbered first_seq..last_seq (one sequence number per line, as before).
-- One row per chunk instead of per line makes storing a flood of output fast.
CREATE TABLE log_chunks (
    step_id    INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    stream     TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log', 'system')),
    level      TEXT,
    text       TEXT NOT NULL,
    PRIMARY KEY (step_id, first_seq)
) STRICT, WITHOUT ROWID;

INSERT INTO log_chunks (step_id, first_seq, last_seq, at, stream, level, text)
    SELECT step_id, seq, seq, at, stream, level, text FROM log_lines;

DROP TABLE log_lines;
