-- Change detection and mirror mode: per job and row identity, what Customer.io last
-- acknowledged. `fingerprint` is a 64-bit hash of the mapped attributes (0 = forgotten by
-- `run --full`: the identity is still known to mirror mode, its row is sent again);
-- `attributes` packs (name hash, value hash) pairs, 16 bytes each: no values are stored.
CREATE TABLE fingerprints (
    job         TEXT NOT NULL,
    identity    TEXT NOT NULL,                -- id:…, email:…, object:<type>:<id>, rel:…
    fingerprint BIGINT NOT NULL,
    attributes  BLOB NOT NULL,
    PRIMARY KEY (job, identity)
);
