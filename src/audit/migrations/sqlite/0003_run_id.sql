-- dbjanitor audit schema v3: the run's id (a UUIDv7 as text), the same as in
-- the report and the notifications. NULL for runs recorded before v3.
ALTER TABLE dbjanitor_runs ADD COLUMN run_id TEXT;
CREATE UNIQUE INDEX dbjanitor_runs_run_id ON dbjanitor_runs (run_id);
