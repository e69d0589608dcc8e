-- A small replica of the Dragonfly2 manager's `scheduler` table (GORM auto-migration,
-- singular table name, soft-delete flag is_del, v2.3.1+ keep-alive column) holding
-- dragonfly2 issue #3566: scheduler-0 in cluster 1 came back twice with a new IP
-- while the manager was down, so three rows are "active" for one host. Only the
-- newest one still keeps alive (last_keep_alive_at is refreshed every 5 seconds
-- by the manager); the two dead rows stopped days ago.
CREATE TABLE scheduler (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at DATETIME,
  updated_at DATETIME,
  is_del INTEGER NOT NULL DEFAULT 0,
  config TEXT,
  host_name VARCHAR(256) NOT NULL,
  idc VARCHAR(1024),
  location VARCHAR(1024),
  ip VARCHAR(256) NOT NULL,
  port INTEGER NOT NULL,
  state VARCHAR(256) DEFAULT 'inactive',
  features TEXT,
  last_keep_alive_at DATETIME,
  scheduler_cluster_id INTEGER,
  UNIQUE (host_name, ip, scheduler_cluster_id)
);
INSERT INTO scheduler (created_at, updated_at, host_name, ip, port, state, last_keep_alive_at, scheduler_cluster_id) VALUES
  (datetime('now', '-3 days'), datetime('now', '-3 days'), 'scheduler-0', '10.0.0.5', 8002, 'active', datetime('now', '-3 days'), 1),
  (datetime('now', '-2 days'), datetime('now', '-2 days'), 'scheduler-0', '10.0.0.9', 8002, 'active', datetime('now', '-2 days'), 1),
  (datetime('now', '-1 hours'), datetime('now', '-5 seconds'), 'scheduler-0', '10.0.0.12', 8002, 'active', datetime('now', '-5 seconds'), 1),
  (datetime('now', '-5 days'), datetime('now', '-5 seconds'), 'scheduler-0', '10.1.0.3', 8002, 'active', datetime('now', '-5 seconds'), 2),
  (datetime('now', '-5 days'), datetime('now', '-5 seconds'), 'scheduler-1', '10.0.0.7', 8002, 'active', datetime('now', '-5 seconds'), 1),
  (datetime('now', '-9 days'), datetime('now', '-9 days'), 'scheduler-2', '10.0.0.8', 8002, 'inactive', datetime('now', '-9 days'), 1);
