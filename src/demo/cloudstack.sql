-- A small replica of CloudStack's `op_ha_work` table holding apache/cloudstack
-- issue #10367: host 7 went Down and the 4.19 manager queued several HA work
-- items for VM 101. A management server is already working on item 3 (taken);
-- items 1 and 2 are bare copies nobody has taken. Upstream would run them too,
-- at the same time (its "wait while another item runs" check never matches), so
-- they are cancelled; the item that is being worked on stays.
CREATE TABLE op_ha_work (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  instance_id INTEGER NOT NULL,
  type VARCHAR(32) NOT NULL,
  vm_type VARCHAR(32) NOT NULL,
  state VARCHAR(32) NOT NULL,
  mgmt_server_id INTEGER,
  host_id INTEGER,
  created DATETIME NOT NULL,
  tried INTEGER,
  taken DATETIME,
  step VARCHAR(32) NOT NULL,
  time_to_try INTEGER,
  updated INTEGER NOT NULL
);
INSERT INTO op_ha_work (instance_id, type, vm_type, state, mgmt_server_id, host_id, created, tried, taken, step, time_to_try, updated) VALUES
  (101, 'HA', 'User', 'Running', NULL, 7, datetime('now', '-10 minutes'), 0, NULL, 'Scheduled', 0, 5),
  (101, 'HA', 'User', 'Running', NULL, 7, datetime('now', '-9 minutes'), 0, NULL, 'Scheduled', 0, 5),
  (101, 'HA', 'User', 'Running', 345051498372, 7, datetime('now', '-8 minutes'), 1, datetime('now', '-7 minutes'), 'Investigating', 0, 5),
  (102, 'HA', 'User', 'Running', NULL, 7, datetime('now', '-5 minutes'), 0, NULL, 'Scheduled', 0, 5),
  (103, 'HA', 'User', 'Stopped', NULL, 7, datetime('now', '-2 days'), 3, NULL, 'Done', 0, 3),
  (103, 'HA', 'User', 'Running', NULL, 7, datetime('now', '-4 minutes'), 0, NULL, 'Scheduled', 0, 5);
