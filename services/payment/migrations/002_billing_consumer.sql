-- Invoices move from capture to the billing consumer (order.confirmed events): one invoice per
-- confirmed order, keyed by UNIQUE (order_id). payment_id is what the event's order names; it is
-- no longer unique nor a foreign key (the event, not a payments row, is the invoice's source).
-- Existing invoices (one per captured payment) are kept; should an order have several, the
-- oldest stays.
CREATE TABLE invoices_v2 (
    invoice_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    create_time TEXT NOT NULL
);

INSERT INTO invoices_v2 (invoice_id, payment_id, order_id, user_id, amount_minor, currency, create_time)
SELECT i.invoice_id, i.payment_id, i.order_id, i.user_id, i.amount_minor, i.currency, i.create_time
FROM invoices i
WHERE i.invoice_id = (
    SELECT j.invoice_id FROM invoices j WHERE j.order_id = i.order_id
    ORDER BY j.create_time, j.invoice_id LIMIT 1
);

DROP TABLE invoices;

ALTER TABLE invoices_v2 RENAME TO invoices;

CREATE INDEX IF NOT EXISTS invoices_by_user ON invoices (user_id, create_time DESC, invoice_id DESC);

CREATE INDEX IF NOT EXISTS invoices_by_time ON invoices (create_time DESC, invoice_id DESC);

-- The billing consumer's inbox: message ids applied, in the same transaction as the invoice.
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_time TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
