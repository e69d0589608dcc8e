#!/usr/bin/env bash
# Starts a private primary and a real streaming replica of it, for the
# replica-lag tests (tests/it/replica.rs). Nothing on the shared servers is
# touched: the shared PostgreSQL allows no replication connections (pg_hba)
# and the shared MariaDB has no binary log, and their config is not ours to
# change, so both primaries here are private instances too.
#
#   tests/replica/start.sh pg      PORT DELAY DIR   # primary on PORT, replica on PORT+1
#   tests/replica/start.sh mariadb PORT DELAY DIR   # primary on PORT, replica on PORT+1
#   tests/replica/start.sh stop    DIR              # stops what DIR holds and deletes DIR
#
# DELAY is the replica's apply delay in seconds (PostgreSQL
# recovery_min_apply_delay, MariaDB MASTER_DELAY): real replication lag.
# PostgreSQL: pg_basebackup -R -X stream makes the replica (its temporary
# slot is dropped when the copy ends; no replication slot is left), and the
# replica reports every second (wal_receiver_status_interval = 1s) so the
# primary's pg_stat_replication.replay_lag follows it closely. Everything
# listens on 127.0.0.1 and on sockets in DIR, runs as the service user
# (the servers refuse root), and lives under DIR.
set -Eeuo pipefail
trap 'echo "tests/replica/start.sh: line $LINENO failed (exit $?)" >&2' ERR

as_user() {
  local user="$1"
  shift
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  echo "$dir"
}

start_pg() {
  local port="$1" delay="$2" dir="$3" bin
  bin="$(pg_bin)"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_user postgres "$bin/initdb" -D "$dir/primary" -U postgres -A trust >"$dir/initdb.log" 2>&1
  cat >>"$dir/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 4
max_replication_slots = 2
fsync = off
CONF
  printf 'host replication all 127.0.0.1/32 trust\n' >>"$dir/primary/pg_hba.conf"
  as_user postgres "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w start >/dev/null
  as_user postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres \
    -D "$dir/replica" -R -X stream >"$dir/basebackup.log" 2>&1
  cat >>"$dir/replica/postgresql.auto.conf" <<CONF
port = $((port + 1))
recovery_min_apply_delay = '${delay}s'
wal_receiver_status_interval = '1s'
hot_standby = on
CONF
  as_user postgres "$bin/pg_ctl" -D "$dir/replica" -l "$dir/replica.log" -w start >/dev/null
  for _ in $(seq 1 100); do
    if [ "$(psql -h 127.0.0.1 -p "$port" -U postgres -Atc \
      "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 1 ]; then
      echo "$port" >"$dir/pg.port"
      return 0
    fi
    sleep 0.1
  done
  echo "the replica did not start streaming; see $dir/replica.log" >&2
  return 1
}

start_mariadb_instance() {
  local dir="$1" name="$2" port="$3" id="$4"
  mkdir -p "$dir/$name"
  chown mysql "$dir" "$dir/$name" 2>/dev/null || true
  if ! mariadb-install-db --no-defaults --user=mysql --datadir="$dir/$name" \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/$name-install.log" 2>&1; then
    echo "mariadb-install-db $name failed:" >&2
    tail -20 "$dir/$name-install.log" >&2
    return 1
  fi
  mariadbd --no-defaults --user=mysql --datadir="$dir/$name" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/$name.sock" --pid-file="$dir/$name.pid" \
    --server-id="$id" --log-bin="$dir/$name/binlog" --skip-name-resolve \
    --innodb-buffer-pool-size=16M --innodb-log-file-size=8M \
    --log-error="$dir/$name.err" >/dev/null 2>&1 &
  for _ in $(seq 1 200); do
    if mariadb --no-defaults -h127.0.0.1 -P"$port" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "mariadbd $name did not start on port $port; see $dir/$name.err" >&2
  return 1
}

start_mariadb() {
  local port="$1" delay="$2" dir="$3"
  mkdir -p "$dir"
  start_mariadb_instance "$dir" primary "$port" 1
  start_mariadb_instance "$dir" replica "$((port + 1))" 2
  mariadb --no-defaults -h127.0.0.1 -P"$port" -uroot -e \
    "CREATE USER 'repl'@'%'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';"
  mariadb --no-defaults -h127.0.0.1 -P"$((port + 1))" -uroot -e \
    "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$port, MASTER_USER='repl',
       MASTER_USE_GTID=slave_pos, MASTER_DELAY=$delay;
     START SLAVE;"
  for _ in $(seq 1 100); do
    if mariadb --no-defaults -h127.0.0.1 -P"$((port + 1))" -uroot -e 'SHOW SLAVE STATUS\G' |
      grep -q 'Slave_SQL_Running: Yes'; then
      echo "$port" >"$dir/mariadb.port"
      return 0
    fi
    sleep 0.1
  done
  echo "the MariaDB replica did not start; see $dir/replica.err" >&2
  return 1
}

stop_all() {
  local dir="$1" bin
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pg.port" ] || [ -d "$dir/primary/pg_wal" ]; then
    bin="$(pg_bin)"
    for name in replica primary; do
      if [ -f "$dir/$name/postmaster.pid" ]; then
        as_user postgres "$bin/pg_ctl" -D "$dir/$name" -m immediate -w stop >/dev/null 2>&1 || true
      fi
    done
  fi
  for name in replica primary; do
    if [ -f "$dir/$name.pid" ]; then
      local pid
      pid="$(cat "$dir/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  done
  rm -rf "$dir"
}

case "${1:-}" in
  pg) start_pg "$2" "$3" "$4" ;;
  mariadb) start_mariadb "$2" "$3" "$4" ;;
  stop) stop_all "$2" ;;
  *)
    echo "usage: $0 pg|mariadb PORT DELAY DIR | stop DIR" >&2
    exit 2
    ;;
esac
