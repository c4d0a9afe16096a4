-- Checkpoints keyed by job and scope, so a phase (a backfill, a mirror) keeps its own
-- checkpoint beside the job's. Existing rows become the job's own scope (`job`).
ALTER TABLE checkpoints ADD COLUMN scope TEXT NOT NULL DEFAULT 'job';
ALTER TABLE checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE checkpoints ADD PRIMARY KEY (job, scope);
