-- dbjanitor audit schema v2: whether a notification was sent for the run
-- (alert-fatigue decisions), and the verification and batch counts.
ALTER TABLE dbjanitor_runs
    ADD COLUMN notified boolean NOT NULL DEFAULT false,
    ADD COLUMN remaining bigint,
    ADD COLUMN batches bigint;
