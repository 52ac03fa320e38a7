-- Payments, keyed by the caller-chosen payment_id (the idempotency key of AuthorizePayment).
CREATE TABLE IF NOT EXISTS payments (
    payment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('AUTHORIZED', 'CAPTURED', 'VOIDED', 'REFUNDED')),
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL
);

-- One invoice per captured payment: UNIQUE (payment_id) backs the store's conditional capture.
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL UNIQUE REFERENCES payments (payment_id),
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    create_time TEXT NOT NULL
);

-- ListInvoices pages newest first, per user or (for admins) over everyone.
CREATE INDEX IF NOT EXISTS invoices_by_user ON invoices (user_id, create_time DESC, invoice_id DESC);
CREATE INDEX IF NOT EXISTS invoices_by_time ON invoices (create_time DESC, invoice_id DESC);
