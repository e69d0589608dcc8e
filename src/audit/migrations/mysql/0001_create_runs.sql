-- dbjanitor audit schema v1: one row per (rule, database) run.
-- One statement: MySQL/MariaDB commit DDL implicitly, so a migration that is a
-- single statement is applied whole or not at all. Times are UTC.
CREATE TABLE dbjanitor_runs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    rule VARCHAR(200) NOT NULL,
    database_name VARCHAR(200) NOT NULL,
    started_at DATETIME(6) NOT NULL,
    finished_at DATETIME(6) NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    reason VARCHAR(64) NULL,
    message TEXT NULL,
    error TEXT NULL,
    detected BIGINT NULL,
    changed BIGINT NULL,
    dry_run BOOLEAN NOT NULL,
    host VARCHAR(255) NOT NULL,
    dbjanitor_version VARCHAR(64) NOT NULL,
    INDEX dbjanitor_runs_pair (rule, database_name, started_at),
    INDEX dbjanitor_runs_started (started_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
