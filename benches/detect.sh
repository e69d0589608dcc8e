#!/usr/bin/env bash
# Benchmark: time and peak memory of `dbjanitor run` against tables of growing
# size, on PostgreSQL, MariaDB and SQLite. Detect streams its rows and keeps 5
# samples, so peak memory must stay flat as the row count grows.
#
#   bash benches/detect.sh [ROWS...]        (default: 10000 100000 1000000)
#
# Needs the local servers (as for the tests) and GNU time. Creates and drops
# the databases dbj_bench (PostgreSQL, MariaDB) and a temporary SQLite file.
# Prints a Markdown table: engine, rows, what ran, wall seconds, peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rows_list=("$@")
[ ${#rows_list[@]} -gt 0 ] || rows_list=(10000 100000 1000000)

cargo build --release --locked --quiet
bin=target/release/dbjanitor
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS dbj_bench" >/dev/null 2>&1 || true; mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS dbj_bench" >/dev/null 2>&1 || true' EXIT
mkdir -p "$work/rules"

payload="repeat('x', 100)"
seed() { # engine rows
  local engine=$1 n=$2
  case $engine in
    postgres)
      psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS dbj_bench" -c "CREATE DATABASE dbj_bench" >/dev/null 2>&1
      psql -h 127.0.0.1 -U postgres -d dbj_bench -qc "CREATE TABLE job (id bigint PRIMARY KEY, state varchar(16) NOT NULL, payload text, updated_at timestamptz NOT NULL DEFAULT now())" \
        -c "INSERT INTO job (id, state, payload) SELECT g, 'stuck', $payload FROM generate_series(1, $n) g" >/dev/null
      echo "postgres://postgres@127.0.0.1:5432/dbj_bench" ;;
    mysql)
      mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS dbj_bench; CREATE DATABASE dbj_bench"
      mariadb -uroot -h127.0.0.1 dbj_bench -e "CREATE TABLE job (id bigint PRIMARY KEY, state varchar(16) NOT NULL, payload text, updated_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP);
        SET SESSION max_recursive_iterations = $((n + 1));
        INSERT INTO job (id, state, payload) WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < $n) SELECT g, 'stuck', $payload FROM s"
      echo "mysql://root@127.0.0.1:3306/dbj_bench" ;;
    sqlite)
      rm -f "$work/bench.db"
      python3 - "$work/bench.db" "$n" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL, payload text, updated_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP)")
db.execute("INSERT INTO job (id, state, payload) WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?) SELECT g, 'stuck', printf('%.100c', 'x') FROM s", (int(sys.argv[2]),))
db.commit()
PY
      echo "sqlite://$work/bench.db" ;;
  esac
}

measure() { # label args...
  local label=$1; shift
  local out
  /usr/bin/time -o "$work/time" -f "%e %M" "$bin" --config "$work/dbjanitor.yaml" "$@" --output json >"$work/report.json" 2>/dev/null || true
  out=$(tail -1 "$work/time")
  local detected
  detected=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["rules"][0]; print(r["outcome"], r.get("detected"), r.get("changed"))' "$work/report.json")
  printf '| %s | %s | %s | %s | %.2f | %d |\n' "$engine" "$n" "$label" "$detected" "${out% *}" "$(( ${out#* } / 1024 ))"
}

echo "| engine | rows | run | outcome detected changed | seconds | peak RSS (MiB) |"
echo "| --- | ---: | --- | --- | ---: | ---: |"
for engine in postgres mysql sqlite; do
  for n in "${rows_list[@]}"; do
    url=$(seed "$engine" "$n")
    printf 'databases:\n  bench:\n    url: "%s"\nrules: [rules]\ndefaults: { timeout: 10m }\n' "$url" >"$work/dbjanitor.yaml"
    cat >"$work/rules/found.yaml" <<YAML
name: bench.found
database: bench
detect: SELECT id, state, payload, updated_at FROM job WHERE state = 'stuck'
YAML
    measure "detect only (found)" run
    cat >"$work/rules/found.yaml" <<YAML
name: bench.found
database: bench
detect: SELECT id, state, payload, updated_at FROM job WHERE state = 'stuck'
fix: UPDATE job SET state = 'failed' WHERE state = 'stuck'
max_rows: $n
YAML
    measure "fix + verify, dry run" run --dry-run
  done
done
