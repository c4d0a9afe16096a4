-- Daemons sharing this database: which replica took each scheduled tick of a job (so a
-- tick runs once however many replicas see it), and each replica's last heartbeat (so the
-- rate limits are shared among the live ones).
CREATE TABLE schedule_ticks (
    job TEXT NOT NULL,
    tick_at BIGINT NOT NULL,
    holder TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (job, tick_at)
);
CREATE TABLE replicas (
    holder TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);
