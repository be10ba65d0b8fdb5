-- Tokens may have the `approve` scope (approving deploy plans). SQLite cannot change a CHECK
-- constraint in place: the table is rebuilt with its rows and ids (AUTOINCREMENT's counter too).
CREATE TABLE api_tokens_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT,
    scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'approve')),
    hash        TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the whole token
    prefix      TEXT NOT NULL,          -- the token's first characters, to tell tokens apart
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
INSERT INTO api_tokens_new (id, name, scope, hash, prefix, created_at, revoked_at)
    SELECT id, name, scope, hash, prefix, created_at, revoked_at FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
