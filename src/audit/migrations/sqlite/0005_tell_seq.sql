-- dbjanitor audit schema v5: the pair's tell sequence, so that messages about
-- one pair arrive in the order they were decided although they are delivered
-- outside the claim. told_seq: number of the last decision that delivers
-- (taken under the claim); delivered_seq: highest number whose delivery is
-- over; delivering_until: the deadline by which the told_seq-th teller is done
-- (the next one waits for it at most until then).
ALTER TABLE dbjanitor_pairs ADD COLUMN told_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dbjanitor_pairs ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dbjanitor_pairs ADD COLUMN delivering_until TEXT NULL;
