-- Accounts. email is stored normalized (lower-case), so UNIQUE is case-insensitive in effect.
-- request_id remembers the registration's idempotency key (NULL when none was sent; NULLs
-- never collide), so a re-sent CreateUser finds the account it made the first time.
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles {json} NOT NULL,
    request_id TEXT UNIQUE,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL
);

-- ListUsers pages oldest first by (create_time, user_id).
CREATE INDEX IF NOT EXISTS users_by_create_time ON users (create_time, user_id);
