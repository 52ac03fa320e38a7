-- The transactional outbox: each order event is inserted in the same transaction as the order
-- change it reports, and the relay (services/common/messaging/relay.py) publishes unsent rows
-- to RabbitMQ in seq order, setting sent_time only after the broker's confirm.
CREATE TABLE IF NOT EXISTS outbox (
    -- Publication order; auto-numbered so concurrent writers never collide.
    seq {serial_key},
    -- Stable across redeliveries: the AMQP message_id consumers deduplicate by.
    event_id TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    message_type TEXT NOT NULL,
    payload {bytes} NOT NULL,
    create_time TEXT NOT NULL,
    sent_time TEXT,
    -- How many times a relay has taken the row for publishing (more than 1: a retry).
    attempts INTEGER NOT NULL DEFAULT 0,
    -- The relay instance publishing the row, and until when (epoch seconds): one relay at a
    -- time publishes, so several order instances keep the events in order.
    claimed_by TEXT NOT NULL DEFAULT '',
    claim_until DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_time IS NULL;
