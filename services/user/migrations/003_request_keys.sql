-- Idempotency keys (services/common/idempotency.py): UpdateUser remembers its request_id,
-- scoped to the RPC and caller, with a fingerprint of the request it named.
CREATE TABLE IF NOT EXISTS request_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- What each CreateUser request_id registered, so a re-send is answered the same way and the key
-- reused with another email, name or password is refused without disclosing the account. The
-- password is kept only as its salted hash (compared by verifying, never by digest). user_id is
-- the account made, or the decoy id a taken email was answered with (no users row then).
CREATE TABLE IF NOT EXISTS signups (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time TEXT NOT NULL
);

-- Keys of registrations made before this migration (their name as it is now).
INSERT INTO signups (request_id, user_id, email, display_name, password_hash, create_time)
SELECT request_id, user_id, email, display_name, password_hash, create_time FROM users
WHERE request_id IS NOT NULL AND request_id NOT IN (SELECT request_id FROM signups);
