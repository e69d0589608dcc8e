#!/usr/bin/env bash
# Benchmark suite of issue 11: dbjanitor side by side with what it replaces,
# in one run, on the local servers (as for the tests).
#
#   bash benches/run.sh [CASE...]     cases: clean detect purge fleet daemon (default: all)
#
# Every case seeds its own databases (dbj_bench_*, dropped on exit), runs the
# release build and the reference the same number of times, alternating, and
# prints Markdown rows: median seconds of each side and the ratio
# dbjanitor / reference. Tunables (environment; defaults keep each case to a
# minute or two on a shared 2-core machine):
#
#   RUNS=7            repetitions of the short cases (clean, detect)
#   PURGE_RUNS=3      repetitions of the purge case (each re-seeds the table)
#   PURGE_ROWS=1000000  rows in the purge table; half of them are purged
#   BATCH=10000       LIMIT of the fixed-size batch shapes (and the keyset window)
#   PURGE_SHAPES="keyset-target keyset ctid id-in order-by-limit"  purge shapes
#                     to run (keyset, keyset-target: PostgreSQL and MariaDB;
#                     ctid, id-in (the old rules/generic shape): PostgreSQL;
#                     order-by-limit: MariaDB)
#   TARGET=200ms      batch.target of the keyset-target shape (first batch BATCH rows)
#   FLEET_DBS=20      databases of the fleet case (× 5 rules, 50 ms each)
#   FLEET_RUNS=3      repetitions of the fleet case
#   DAEMON_SECS=20    how long each daemon measurement lasts
#   PG=postgres://postgres@127.0.0.1:5432  MY=mysql://root@127.0.0.1:3306
#   BIN=path          measure this dbjanitor binary instead of building the
#                     release one (e.g. an older build, to compare two in turn)
#
# Needs psql, mariadb, python3, GNU time and hyperfine (installed with
# apt-get when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-7}
PURGE_RUNS=${PURGE_RUNS:-3}
PURGE_ROWS=${PURGE_ROWS:-1000000}
BATCH=${BATCH:-10000}
PURGE_SHAPES=${PURGE_SHAPES:-keyset-target keyset ctid id-in order-by-limit}
TARGET=${TARGET:-200ms}
FLEET_DBS=${FLEET_DBS:-20}
FLEET_RUNS=${FLEET_RUNS:-3}
DAEMON_SECS=${DAEMON_SECS:-20}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
MY=${MY:-mysql://root@127.0.0.1:3306}

command -v hyperfine >/dev/null || apt-get install -y hyperfine >/dev/null
if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN")
else
  cargo build --release --locked --quiet
  bin=$PWD/target/release/dbjanitor
fi
work=$(mktemp -d)

psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql "$PG/postgres?sslmode=disable" -v ON_ERROR_STOP=1 -qAt "$@"; }
my_admin() { mariadb -uroot -h127.0.0.1 "$@"; }

cleanup() {
  local db
  for db in $(psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE 'dbj\_bench\_%'" 2>/dev/null); do
    psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  for db in $(my_admin -N -e "SHOW DATABASES LIKE 'dbj\_bench\_%'" 2>/dev/null); do
    my_admin -e "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
  [ -z "${daemon_pid:-}" ] || kill "$daemon_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

pg_db() { # name: a fresh PostgreSQL database
  psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}
my_db() { # name: a fresh MariaDB database
  my_admin -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1"
}

config() { # dir url...: a config with databases db0..dbN and the rules in dir/rules
  local dir=$1 i=0; shift
  mkdir -p "$dir/rules"
  {
    echo "databases:"
    for url in "$@"; do printf '  db%d: { url: "%s" }\n' "$i" "$url"; i=$((i + 1)); done
    echo "rules: [rules]"
    echo "defaults: { timeout: 10m }"
  } >"$dir/dbjanitor.yaml"
}

# compare LABEL DBJ_CMD REF_CMD [hyperfine options...]: medians and ratio.
compare() {
  local label=$1 dbj=$2 ref=$3; shift 3
  hyperfine -N --style none --runs "$RUNS" --export-json "$work/hf.json" "$@" "$dbj" "$ref" >/dev/null 2>"$work/hf.err" ||
    { echo "| $label | failed: $(tail -3 "$work/hf.err" | tr '\n' ' ') | | |"; return; }
  python3 - "$work/hf.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
d, ref = r[0]["median"], r[1]["median"]
print(f"| {sys.argv[2]} | {d*1000:.0f} ms | {ref*1000:.0f} ms | {d/ref:.2f}× |")
PY
}

rss() { # command...: peak RSS in MiB
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null 2>&1 || true
  echo $(( $(tail -1 "$work/rss") / 1024 ))
}

header() {
  echo
  echo "### $1"
  echo
  echo "| case | dbjanitor | reference | ratio |"
  echo "| --- | ---: | ---: | ---: |"
}

case_clean() {
  header "clean: one clean rule, one-shot, vs psql -c / mariadb -e ($RUNS runs)"
  pg_db dbj_bench_clean
  psql "$PG/dbj_bench_clean?sslmode=disable" -qc "CREATE TABLE job (id bigint PRIMARY KEY, state text NOT NULL)" \
    -c "INSERT INTO job SELECT g, 'done' FROM generate_series(1, 1000) g"
  my_db dbj_bench_clean
  my_admin dbj_bench_clean -e "CREATE TABLE job (id bigint PRIMARY KEY, state varchar(16) NOT NULL); INSERT INTO job SELECT seq, 'done' FROM seq_1_to_1000"
  local sql="SELECT id FROM job WHERE state = 'stuck'" mode dir
  for mode in require prefer disable; do
    dir=$work/clean-$mode
    config "$dir" "$PG/dbj_bench_clean?sslmode=$mode"
    printf 'name: bench.clean\ndatabase: db0\ndetect: "%s"\n' "$sql" >"$dir/rules/clean.yaml"
    compare "PostgreSQL, sslmode=$mode" "$bin --config $dir/dbjanitor.yaml run" \
      "psql $PG/dbj_bench_clean?sslmode=$mode -Atc \"$sql\""
  done
  dir=$work/clean-my
  config "$dir" "$MY/dbj_bench_clean"
  printf 'name: bench.clean\ndatabase: db0\ndetect: "%s"\n' "$sql" >"$dir/rules/clean.yaml"
  compare "MariaDB" "$bin --config $dir/dbjanitor.yaml run" \
    "mariadb -uroot -h127.0.0.1 dbj_bench_clean -e \"$sql\""
}

case_detect() {
  header "detect: a report-only rule finding N rows vs psql counting them server-side, sslmode=disable ($RUNS runs)"
  local n dir url sql="SELECT id, state, payload, updated_at FROM job WHERE state = 'stuck'" rss_d rss_r
  for n in 1000 1000000; do
    pg_db dbj_bench_detect
    url="$PG/dbj_bench_detect?sslmode=disable"
    psql "$url" -qc "CREATE TABLE job (id bigint PRIMARY KEY, state text NOT NULL, payload text, updated_at timestamptz NOT NULL DEFAULT now())" \
      -c "INSERT INTO job (id, state, payload) SELECT g, 'stuck', repeat('x', 100) FROM generate_series(1, $n) g" -c "VACUUM ANALYZE job"
    dir=$work/detect-$n
    config "$dir" "$url"
    printf 'name: bench.found\ndatabase: db0\ndetect: "%s"\n' "$sql" >"$dir/rules/found.yaml"
    compare "PostgreSQL, $n rows found" "$bin --config $dir/dbjanitor.yaml run" \
      "psql $url -Atc \"SELECT count(*) FROM ($sql) AS detect\""
    rss_d=$(rss "$bin" --config "$dir/dbjanitor.yaml" run)
    rss_r=$(rss psql "$url" -Atc "SELECT count(*) FROM ($sql) AS detect")
    echo "| peak RSS, $n rows | $rss_d MiB | $rss_r MiB (psql) | |"
  done
}

# The purge case: PURGE_ROWS rows, the older half purged. Each repetition
# re-creates the table from a seed copy (hyperfine --prepare, not timed);
# on PostgreSQL the copy ends with a CHECKPOINT, so that neither side meets
# one the seeding's write-ahead log would otherwise trigger mid-run (the raw
# DELETE varied from 0.34 to 0.59 s without it).
purge_seed_pg() {
  pg_db dbj_bench_purge
  psql "$PG/dbj_bench_purge?sslmode=disable" -qc "CREATE TABLE seed AS SELECT g::bigint AS id, 'event ' || g AS event, timestamp '2020-01-01' + g * interval '1 second' AS created_at FROM generate_series(1, $PURGE_ROWS) g"
  cat >"$work/purge-pg-reset.sql" <<'SQL'
DROP TABLE IF EXISTS event_history;
CREATE TABLE event_history AS SELECT * FROM seed;
ALTER TABLE event_history ADD PRIMARY KEY (id);
CREATE INDEX ON event_history (created_at);
VACUUM ANALYZE event_history;
CHECKPOINT;
SQL
}
purge_seed_my() {
  my_db dbj_bench_purge
  my_admin dbj_bench_purge -e "CREATE TABLE seed (id bigint PRIMARY KEY, event varchar(40), created_at datetime NOT NULL);
    INSERT INTO seed SELECT seq, CONCAT('event ', seq), TIMESTAMP '2020-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_$PURGE_ROWS"
  cat >"$work/purge-my-reset.sql" <<'SQL'
DROP TABLE IF EXISTS event_history;
CREATE TABLE event_history (id bigint PRIMARY KEY, event varchar(40), created_at datetime NOT NULL, KEY (created_at));
INSERT INTO event_history SELECT * FROM seed;
ANALYZE TABLE event_history;
SQL
}

purge_rule() { # dir fix-sql [extra batch keys, e.g. ", size: 10000, key: id"]
  local cut="'2020-01-01 00:00:00'::timestamp + interval '$((PURGE_ROWS / 2)) seconds'" extra=${3:-}
  [[ $1 == *-my-* ]] && cut="TIMESTAMP '2020-01-01 00:00:00' + INTERVAL $((PURGE_ROWS / 2)) SECOND"
  cat >"$1/rules/purge.yaml" <<YAML
name: bench.purge
database: db0
detect: SELECT id FROM event_history WHERE created_at <= $cut
fix: |
  ${2//CUT/$cut}
max_rows: $PURGE_ROWS
batch: { pause: 0s, max_batches: 100000$extra }
YAML
}

# purge_shapes ENGINE URL RAW RESET SHAPE=FIX...: one comparison per shape
# named in PURGE_SHAPES; the keyset shapes get batch.size and batch.key
# (keyset-target also batch.target, so batches grow towards TARGET).
purge_shapes() {
  local engine=$1 url=$2 raw=$3 reset=$4 pair shape dir; shift 4
  for pair in "$@"; do
    shape=${pair%%=*}
    [[ " $PURGE_SHAPES " == *" $shape "* ]] || continue
    dir=$work/purge-pg-$shape
    [ "$engine" = MariaDB ] && dir=$work/purge-my-$shape
    config "$dir" "$url"
    case $shape in
      keyset) purge_rule "$dir" "${pair#*=}" ", size: $BATCH, key: id" ;;
      keyset-target) purge_rule "$dir" "${pair#*=}" ", size: $BATCH, key: id, target: $TARGET" ;;
      *) purge_rule "$dir" "${pair#*=}" ;;
    esac
    compare "$engine, $shape shape" "$bin --config $dir/dbjanitor.yaml run" "$raw" --prepare "$reset"
  done
}

case_purge() {
  header "purge: batched purge of $((PURGE_ROWS / 2)) of $PURGE_ROWS rows vs one raw DELETE ($PURGE_RUNS runs, BATCH=$BATCH, pause 0)"
  local RUNS=$PURGE_RUNS url
  local keyset="DELETE FROM event_history WHERE id BETWEEN {batch_first_key} AND {batch_last_key} AND created_at <= CUT"
  purge_seed_pg
  url="$PG/dbj_bench_purge?sslmode=disable"
  purge_shapes PostgreSQL "$url" \
    "psql $url -qc \"DELETE FROM event_history WHERE created_at <= '2020-01-01 00:00:00'::timestamp + interval '$((PURGE_ROWS / 2)) seconds'\"" \
    "psql $url -qf $work/purge-pg-reset.sql" \
    "keyset=$keyset" "keyset-target=$keyset" \
    "ctid=DELETE FROM event_history WHERE ctid = ANY(ARRAY(SELECT ctid FROM event_history WHERE created_at <= CUT LIMIT $BATCH))" \
    "id-in=DELETE FROM event_history WHERE id IN (SELECT id FROM event_history WHERE created_at <= CUT ORDER BY id LIMIT $BATCH)"
  purge_seed_my
  url="$MY/dbj_bench_purge"
  purge_shapes MariaDB "$url" \
    "mariadb -uroot -h127.0.0.1 dbj_bench_purge -e \"DELETE FROM event_history WHERE created_at <= TIMESTAMP '2020-01-01 00:00:00' + INTERVAL $((PURGE_ROWS / 2)) SECOND\"" \
    "bash -c 'mariadb -uroot -h127.0.0.1 dbj_bench_purge <$work/purge-my-reset.sql'" \
    "keyset=$keyset" "keyset-target=$keyset" \
    "order-by-limit=DELETE FROM event_history WHERE created_at <= CUT ORDER BY id LIMIT $BATCH"
}

case_fleet() {
  local ideal_ms=$((FLEET_DBS * 5 * 50 / 8))
  header "fleet: $FLEET_DBS databases × 5 clean rules, each detect 50 ms of server time, --jobs 8, sslmode=disable ($FLEET_RUNS runs)"
  local dir=$work/fleet i urls=() dbs=""
  for i in $(seq 0 $((FLEET_DBS - 1))); do
    pg_db "dbj_bench_fleet_$i"
    urls+=("$PG/dbj_bench_fleet_$i?sslmode=disable")
    dbs="$dbs db$i,"
  done
  config "$dir" "${urls[@]}"
  for i in 1 2 3 4 5; do
    printf 'name: bench.fleet-%d\ndatabase: [%s]\ndetect: "SELECT 1 WHERE pg_sleep(0.05)::text = %s"\n' "$i" "${dbs%,}" "'x'" >"$dir/rules/r$i.yaml"
  done
  hyperfine -N --style none --runs "$FLEET_RUNS" --export-json "$work/hf.json" "$bin --config $dir/dbjanitor.yaml run --jobs 8" >/dev/null
  python3 - "$work/hf.json" "$ideal_ms" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["results"][0]["median"]
ideal = int(sys.argv[2]) / 1000
print(f"| fleet, --jobs 8 | {d*1000:.0f} ms | ideal {ideal*1000:.0f} ms | {d/ideal:.2f}× |")
PY
}

# CPU seconds (user + system) a process has used, from /proc.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

case_daemon() {
  header "daemon: idle CPU with 500 rules, tick lateness with 50 rules every second (${DAEMON_SECS}s each)"
  local dir=$work/daemon-idle i before after
  python3 -c "import sqlite3; sqlite3.connect('$work/daemon.db').execute('CREATE TABLE job (id integer PRIMARY KEY, state text)')"
  config "$dir" "sqlite://$work/daemon.db"
  for i in $(seq 1 500); do
    printf 'name: bench.idle-%d\ndatabase: db0\nschedule: "@yearly"\ndetect: SELECT id FROM job WHERE state = %s\n' "$i" "'stuck'" >"$dir/rules/r$i.yaml"
  done
  RUST_LOG=warn "$bin" --config "$dir/dbjanitor.yaml" daemon >/dev/null 2>"$work/daemon.log" &
  daemon_pid=$!
  sleep 3
  before=$(cpu_secs "$daemon_pid")
  sleep "$DAEMON_SECS"
  after=$(cpu_secs "$daemon_pid")
  kill "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=
  python3 -c "print(f'| 500 idle rules, CPU | {100 * ($after - $before) / $DAEMON_SECS:.2f} % of a core | goal < 1 % | |')"

  pg_db dbj_bench_daemon
  dir=$work/daemon-busy
  config "$dir" "sqlite://$work/daemon.db" "$PG/dbj_bench_daemon?sslmode=disable"
  printf 'audit: { database: db1 }\n' >>"$dir/dbjanitor.yaml"
  for i in $(seq 1 50); do
    printf 'name: bench.busy-%d\ndatabase: db0\nschedule: "* * * * * *"\ndetect: SELECT id FROM job WHERE state = %s\n' "$i" "'stuck'" >"$dir/rules/r$i.yaml"
  done
  RUST_LOG=warn "$bin" --config "$dir/dbjanitor.yaml" daemon >/dev/null 2>"$work/daemon.log" &
  daemon_pid=$!
  sleep "$DAEMON_SECS"
  kill "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=
  # Ticks are on whole seconds. A run's started_at is taken when it starts:
  # after its tick, its turn (the runs of one SQLite database go one at a
  # time) and its slots, so this measures the queue as well as the timer.
  psql "$PG/dbj_bench_daemon?sslmode=disable" -qAt -F ' ' -c "
    WITH l AS (SELECT extract(epoch FROM started_at - date_trunc('second', started_at)) * 1000 AS ms FROM dbjanitor_runs)
    SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM l" |
    while read -r count p50 p99; do
      echo "| 50 rules every second, tick lateness ($count runs) | p50 $p50 ms, p99 $p99 ms | goal p99 < 50 ms | |"
    done
}

echo "dbjanitor $("$bin" version | head -1); $(psql --version); $(mariadb --version | cut -d, -f1); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(clean detect purge fleet daemon)
for c in "${cases[@]}"; do
  case $c in
    clean | detect | purge | fleet | daemon) "case_$c" ;;
    *) echo "unknown case $c (clean detect purge fleet daemon)" >&2; exit 2 ;;
  esac
done
