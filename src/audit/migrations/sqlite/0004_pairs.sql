-- dbjanitor audit schema v4: one row per (rule, database) pair, the claim that
-- serialises "read the history, notify, record" across processes. On SQLite
-- the claim's BEGIN IMMEDIATE already excludes every other writer; the row
-- says who last did it (for people) and keeps the schema alike on every engine.
CREATE TABLE dbjanitor_pairs (
    rule TEXT NOT NULL,
    database_name TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (rule, database_name)
);
