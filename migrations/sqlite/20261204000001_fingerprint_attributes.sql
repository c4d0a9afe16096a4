-- The per-attribute hashes move to their own table, and both tables are clustered on their
-- key (WITHOUT ROWID). A nightly re-export looks up every row's fingerprint but needs the
-- attribute hashes only for the few rows that changed: the lookup now walks one narrow
-- B-tree (about 40 bytes per identity, so a million people fit the state connection's page
-- cache) instead of an index into a table four times wider.
CREATE TABLE fingerprints_narrow (
    job         TEXT NOT NULL,
    identity    TEXT NOT NULL,                -- id:…, email:…, object:<type>:<id>, rel:…
    fingerprint BIGINT NOT NULL,              -- 0 = forgotten (`run --full`)
    PRIMARY KEY (job, identity)
) WITHOUT ROWID;
-- (name hash, value hash) pairs, 16 bytes each, of the attributes last acknowledged; no
-- values. Absent for a forgotten fingerprint.
CREATE TABLE fingerprint_attributes (
    job         TEXT NOT NULL,
    identity    TEXT NOT NULL,
    attributes  BLOB NOT NULL,
    PRIMARY KEY (job, identity)
) WITHOUT ROWID;
INSERT INTO fingerprints_narrow (job, identity, fingerprint)
    SELECT job, identity, fingerprint FROM fingerprints;
INSERT INTO fingerprint_attributes (job, identity, attributes)
    SELECT job, identity, attributes FROM fingerprints WHERE LENGTH(attributes) > 0;
DROP TABLE fingerprints;
ALTER TABLE fingerprints_narrow RENAME TO fingerprints;
