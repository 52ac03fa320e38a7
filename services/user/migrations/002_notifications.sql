-- Customer notifications, recorded by the consumer of order events (services/user/notifications.py).
-- event_id is deliberately NOT unique: the inbox below is what makes each event count once, and
-- a test can then detect an event applied twice by counting rows per event_id.
CREATE TABLE IF NOT EXISTS notifications (
    notification_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    create_time TEXT NOT NULL
);

-- ListNotifications pages a user's notifications newest first.
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, create_time DESC, notification_id DESC);

-- The consumer's inbox: message ids applied, in the same transaction as the notification.
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_time TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
