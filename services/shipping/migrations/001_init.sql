-- Shipments, keyed by the caller-chosen shipment_id (the idempotency key of ScheduleShipment).
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    line1 TEXT NOT NULL,
    city TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country_code TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('SCHEDULED', 'CANCELLED')),
    tracking_number TEXT NOT NULL,
    estimated_delivery_time TEXT NOT NULL,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL
);
