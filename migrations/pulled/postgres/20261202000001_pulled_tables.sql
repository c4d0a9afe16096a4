-- What pull jobs bring back from the App API (customerio-api.md §9). Migrated by the pulled
-- tables' own migrator, with its own history table (cio_sync_pulled_migrations), so a
-- `pull.into` database gets these tables and nothing else. IF NOT EXISTS because databases made
-- before that migrator existed already hold these tables (the state migrations created them).
--
-- Times from Customer.io (created_at, updated_at, first_started_at, period_start) are Unix
-- seconds; times cio-sync sets (deleted_at) are Unix ms, like the runs table. JSON columns hold
-- JSON text. A NUL in text from Customer.io is stored as the six characters \u0000 (PostgreSQL
-- text and jsonb cannot hold NUL), so every JSON column also casts to jsonb. pulled_run_id is
-- runs.id of the last pull that saw the row (no foreign key: the target may be another database).

CREATE TABLE IF NOT EXISTS cio_segments (
    id            BIGINT PRIMARY KEY,
    name          TEXT,
    description   TEXT,
    type          TEXT,                         -- dynamic | manual
    state         TEXT,                         -- events | build | events_queued | build_queued | finished
    tags          TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings (null from the API = [])
    created_at    BIGINT,
    updated_at    BIGINT,
    raw           TEXT NOT NULL,                -- JSON: the segment object as returned
    deleted_at    BIGINT,                       -- set when a pull no longer finds it; NULL = current
    pulled_run_id TEXT NOT NULL
);

-- One row per member per segment. A segment's rows are replaced in one transaction, only after
-- every page of its membership was fetched, so readers see the old or the new list, never half.
CREATE TABLE IF NOT EXISTS cio_segment_members (
    segment_id    BIGINT NOT NULL,
    customer_id   TEXT,                         -- the person's `id`, when they have one
    email         TEXT,
    cio_id        TEXT NOT NULL,
    pulled_run_id TEXT NOT NULL,
    PRIMARY KEY (segment_id, cio_id)
);
CREATE INDEX IF NOT EXISTS cio_segment_members_customer ON cio_segment_members (customer_id);

-- Pages of a membership being fetched, until the segment's swap (then deleted). Rows left by a
-- crashed run are deleted by the job's next run.
CREATE TABLE IF NOT EXISTS cio_segment_members_staging (
    run_id        TEXT NOT NULL,
    job           TEXT NOT NULL,
    segment_id    BIGINT NOT NULL,
    seq           BIGINT NOT NULL,              -- position in the membership listing
    customer_id   TEXT,
    email         TEXT,
    cio_id        TEXT,
    PRIMARY KEY (run_id, segment_id, seq)
);
CREATE INDEX IF NOT EXISTS cio_segment_members_staging_job ON cio_segment_members_staging (job);

CREATE TABLE IF NOT EXISTS cio_campaigns (
    id               BIGINT PRIMARY KEY,
    deduplicate_id   TEXT,
    name             TEXT,
    description      TEXT,
    type             TEXT,                      -- trigger type (deprecated by Customer.io)
    state            TEXT,                      -- running | draft | stopped
    active           BOOLEAN,
    tags             TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    created_at       BIGINT,                    -- `created`
    updated_at       BIGINT,                    -- `updated`
    first_started_at BIGINT,                    -- `first_started`
    raw              TEXT NOT NULL,             -- JSON: the campaign object as returned
    deleted_at       BIGINT,
    pulled_run_id    TEXT NOT NULL
);

-- v1 metrics: one row per campaign, metric, period and period start; later pulls update values.
CREATE TABLE IF NOT EXISTS cio_campaign_metrics (
    campaign_id   BIGINT NOT NULL,
    metric        TEXT NOT NULL,                -- sent, delivered, opened, … (or 2xx… for webhooks)
    period        TEXT NOT NULL,                -- hours | days | weeks | months
    period_start  BIGINT NOT NULL,              -- hours in UTC; days/weeks/months at midnight US Eastern
    value         BIGINT NOT NULL,
    pulled_run_id TEXT NOT NULL,
    PRIMARY KEY (campaign_id, metric, period, period_start)
);
