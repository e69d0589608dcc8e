-- dbjanitor audit schema v1: one row per (rule, database) run.
CREATE TABLE dbjanitor_runs (
    id bigserial PRIMARY KEY,
    rule varchar(200) NOT NULL,
    database_name varchar(200) NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    outcome varchar(32) NOT NULL,
    reason varchar(64),
    message text,
    error text,
    detected bigint,
    changed bigint,
    dry_run boolean NOT NULL,
    host varchar(255) NOT NULL,
    dbjanitor_version varchar(64) NOT NULL
);
-- The last run of a pair (run --due, notifications).
CREATE INDEX dbjanitor_runs_pair ON dbjanitor_runs (rule, database_name, started_at);
-- Retention (audit.keep).
CREATE INDEX dbjanitor_runs_started ON dbjanitor_runs (started_at);
