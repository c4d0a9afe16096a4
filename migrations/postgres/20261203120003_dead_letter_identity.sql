-- Dead letters keyed by the row's identity (id:…, event:<id>): a re-read file replaces a
-- row's dead letter instead of adding a second one. NULL for rows whose identity cannot be
-- read (they stay keyed by source and line).
ALTER TABLE dead_letters ADD COLUMN identity TEXT;
