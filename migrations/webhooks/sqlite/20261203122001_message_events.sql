-- Customer.io reporting-webhook events (customerio-objects.md §4), one row per event_id.
-- Migrated by the webhooks' own migrator, with its own history table
-- (cio_sync_webhooks_migrations), so a `webhooks.database` gets this table and nothing else.
--
-- `timestamp` is the event's Unix seconds as Customer.io sent it; received_at is Unix ms set by
-- cio-sync. Ids are NULL when the event does not carry them (or carries them in a shape we do
-- not know: the payload keeps everything). A NUL in text is stored as the six characters \u0000
-- (PostgreSQL text cannot hold NUL). payload is the body exactly as received (JSON text).
CREATE TABLE IF NOT EXISTS cio_message_events (
    event_id                 TEXT PRIMARY KEY,   -- Customer.io's id; retries repeat it
    object_type              TEXT,               -- email | push | sms | customer | … (NULL if absent)
    metric                   TEXT,               -- sent | opened | … (unknown ones kept as sent)
    timestamp                BIGINT,
    delivery_id              TEXT,
    campaign_id              BIGINT,
    broadcast_id             BIGINT,
    newsletter_id            BIGINT,
    action_id                BIGINT,
    transactional_message_id BIGINT,
    customer_id              TEXT,               -- deprecated by Customer.io; identifiers.id is preferred
    identifier_id            TEXT,               -- identifiers.id
    email                    TEXT,               -- identifiers.email, or data.email_address
    cio_id                   TEXT,               -- identifiers.cio_id
    recipient                TEXT,
    payload                  TEXT NOT NULL,
    received_at              BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS cio_message_events_delivery ON cio_message_events (delivery_id);
CREATE INDEX IF NOT EXISTS cio_message_events_person ON cio_message_events (identifier_id);
CREATE INDEX IF NOT EXISTS cio_message_events_time ON cio_message_events (timestamp);
