-- dbjanitor audit schema v2: whether a notification was sent for the run
-- (alert-fatigue decisions), and the verification and batch counts.
-- One ALTER TABLE statement, applied whole or not at all.
ALTER TABLE dbjanitor_runs
    ADD COLUMN notified BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN remaining BIGINT NULL,
    ADD COLUMN batches BIGINT NULL
