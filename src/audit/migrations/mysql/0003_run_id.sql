-- dbjanitor audit schema v3: the run's id (a UUIDv7 as text), the same as in
-- the report and the notifications. NULL for runs recorded before v3.
-- One ALTER TABLE statement (column and unique index), applied whole or not at all.
ALTER TABLE dbjanitor_runs
    ADD COLUMN run_id CHAR(36) CHARACTER SET ascii NULL,
    ADD UNIQUE INDEX dbjanitor_runs_run_id (run_id)
