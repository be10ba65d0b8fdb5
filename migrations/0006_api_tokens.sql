-- API tokens: only a SHA-256 hash of each token is kept (the token is shown once, when created).
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT,
    scope       TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    hash        TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the whole token
    prefix      TEXT NOT NULL,          -- the token's first characters, to tell tokens apart
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
