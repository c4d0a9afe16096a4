-- Checkpoints keyed by job and scope, so a phase (a backfill, a mirror) keeps its own
-- checkpoint beside the job's. SQLite cannot change a primary key in place: the table is
-- rebuilt, and existing rows become the job's own scope (`job`).
CREATE TABLE checkpoints_scoped (
    job        TEXT NOT NULL,
    scope      TEXT NOT NULL DEFAULT 'job',     -- `job`, or the phase's name
    position   TEXT NOT NULL,                   -- JSON: source identity + resume point
    run_id     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job, scope)
);
INSERT INTO checkpoints_scoped (job, scope, position, run_id, updated_at)
    SELECT job, 'job', position, run_id, updated_at FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_scoped RENAME TO checkpoints;
