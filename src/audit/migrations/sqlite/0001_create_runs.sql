-- dbjanitor audit schema v1: one row per (rule, database) run.
-- Times are UTC text as sqlx writes them ('2026-11-22T10:00:00.123456+00:00, RFC 3339'),
-- which sorts in time order.
CREATE TABLE dbjanitor_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    database_name TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    error TEXT,
    detected INTEGER,
    changed INTEGER,
    dry_run INTEGER NOT NULL,
    host TEXT NOT NULL,
    dbjanitor_version TEXT NOT NULL
);
CREATE INDEX dbjanitor_runs_pair ON dbjanitor_runs (rule, database_name, started_at);
CREATE INDEX dbjanitor_runs_started ON dbjanitor_runs (started_at);
