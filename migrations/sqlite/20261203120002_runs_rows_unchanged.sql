-- Rows a run settled without sending because Customer.io already had them.
ALTER TABLE runs ADD COLUMN rows_unchanged BIGINT NOT NULL DEFAULT 0;
