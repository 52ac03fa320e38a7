-- Idempotency keys (services/common/idempotency.py): a request_id is remembered, scoped to its
-- RPC and caller, with a fingerprint of the request it named, in the transaction that acted on
-- that request. A re-send with the same fingerprint gets the same result; another request under
-- the same key is refused (ALREADY_EXISTS, IDEMPOTENCY_KEY_REUSED) instead of being answered
-- with the result of the first. Keys sent before this migration were not remembered.
CREATE TABLE IF NOT EXISTS request_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
