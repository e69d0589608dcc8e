#!/usr/bin/env bash
# Starts a private PgBouncer in transaction mode in front of the test
# PostgreSQL, for the pooler tests (tests/it/pgbouncer.rs) and .ci/run.
#
#   tests/pgbouncer/start.sh [PORT] [DIR]     # defaults: 6439, /tmp/dbjanitor-pgbouncer-PORT
#
# Writes its own config, auth file, pid file and log into DIR; listens on
# 127.0.0.1:PORT only; pool_mode = transaction, default_pool_size = 2, and no
# ignore_startup_parameters (dbjanitor must not need it). Idempotent: exits 0
# at once when a PgBouncer already answers on PORT. PgBouncer refuses to run
# as root, so under root it runs as the `postgres` user.
set -euo pipefail
port="${1:-6439}"
dir="${2:-/tmp/dbjanitor-pgbouncer-$port}"
upstream_host="${DBJ_PGBOUNCER_UPSTREAM_HOST:-127.0.0.1}"
upstream_port="${DBJ_PGBOUNCER_UPSTREAM_PORT:-5432}"

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "pgbouncer is not installed (apt-get install -y pgbouncer)" >&2
  exit 1
fi
bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

if pg_isready -h 127.0.0.1 -p "$port" -q 2>/dev/null; then
  exit 0
fi

mkdir -p "$dir"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$upstream_host port=$upstream_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
server_reset_query =
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
INI
printf '"postgres" ""\n' >"$dir/userlist.txt"

run_as=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$dir"
  run_as=(-u postgres)
fi
"$bin" -d "${run_as[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 1 50); do
  if pg_isready -h 127.0.0.1 -p "$port" -q 2>/dev/null; then
    exit 0
  fi
  sleep 0.1
done
echo "pgbouncer did not start on port $port; see $dir/pgbouncer.log" >&2
exit 1
