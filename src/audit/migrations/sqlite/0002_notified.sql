-- dbjanitor audit schema v2: whether a notification was sent for the run
-- (alert-fatigue decisions), and the verification and batch counts.
ALTER TABLE dbjanitor_runs ADD COLUMN notified INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dbjanitor_runs ADD COLUMN remaining INTEGER;
ALTER TABLE dbjanitor_runs ADD COLUMN batches INTEGER;
