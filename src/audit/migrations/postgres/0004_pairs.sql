-- dbjanitor audit schema v4: one row per (rule, database) pair, the claim that
-- serialises "read the history, notify, record" across processes (two daemon
-- replicas, a daemon and a timer). A process locks the pair's row for the
-- whole step, in one transaction, so the next one reads the history the
-- first one wrote. claimed_by/claimed_at say who last did it (for people).
CREATE TABLE dbjanitor_pairs (
    rule varchar(200) NOT NULL,
    database_name varchar(200) NOT NULL,
    claimed_by varchar(255) NOT NULL,
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (rule, database_name)
);
