-- Run history, checkpoints and dead letters: cio-sync's memory between runs.
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,             -- ULID
    job           TEXT NOT NULL,
    kind          TEXT NOT NULL,                -- push | pull
    started_at    BIGINT NOT NULL,              -- Unix ms
    finished_at   BIGINT,                       -- Unix ms; NULL while running
    outcome       TEXT NOT NULL,                -- running | succeeded | rejected_rows | failed | interrupted
    error         TEXT,
    rows_read     BIGINT NOT NULL DEFAULT 0,
    rows_delivered BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0,
    requests      BIGINT NOT NULL DEFAULT 0,
    retries       BIGINT NOT NULL DEFAULT 0,
    summary       TEXT                          -- JSON, job-kind specific figures
);
CREATE INDEX runs_job_started ON runs (job, started_at);

CREATE TABLE checkpoints (
    job        TEXT PRIMARY KEY,
    position   TEXT NOT NULL,                   -- JSON: source identity + resume point
    run_id     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        TEXT NOT NULL,
    source     TEXT NOT NULL,                   -- file path or masked database URL
    row_ref    TEXT NOT NULL,                   -- stable identity of the row in its input
    line       BIGINT,
    row_data   TEXT NOT NULL,                   -- JSON object column -> value, or the raw text
    reason     TEXT NOT NULL,
    stage      TEXT NOT NULL,                   -- source | mapping | customerio
    run_id     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (job, row_ref)
);

CREATE TABLE job_leases (
    job         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL                 -- Unix ms
);
