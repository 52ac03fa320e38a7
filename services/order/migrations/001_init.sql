-- Orders as JSON documents (no MongoDB server is installable on this stack). The columns beside the document are
-- what is looked up or sorted on; the document is the whole order, step history included.
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- The caller's idempotency key: one order per (user, request_id).
    request_id TEXT NOT NULL,
    status TEXT NOT NULL,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL,
    -- Bumped by every save; a save from a stale copy changes nothing and is refused.
    version BIGINT NOT NULL,
    document {json} NOT NULL,
    UNIQUE (user_id, request_id)
);

-- ListOrders: one user's orders, newest first.
CREATE INDEX IF NOT EXISTS orders_by_user_newest ON orders (user_id, create_time DESC, order_id DESC);
