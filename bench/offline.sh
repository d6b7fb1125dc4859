#!/usr/bin/env bash
# bench/offline.sh: pgferry's offline migration compared with pgcopydb, the raw-COPY floor
# and PostgreSQL's own tools.
#
# Starts two throwaway PostgreSQL 15 clusters (source and target), loads a ~1 GB database
# `bench` into the source (pgbench -i -s 40, a TOASTed table, secondary indexes), then, in
# one interleaved run of BENCH_ROUNDS rounds (every method once per round, the order rotated
# by one each round), times each method into a fresh empty target database:
#   pgferry   pgferry migration create --migration-option Migrate --jobs N (with its verification)
#   pgcopydb  pgcopydb clone --table-jobs N --index-jobs N (skipped, with a message, where
#             pgcopydb cannot be installed or run)
#   floor     the raw-COPY floor: pre-data; binary COPY of every table, source COPY TO STDOUT
#             piped into target COPY FROM STDIN, N tables at once; then pg_restore -j N
#             --section=post-data; one phase after the other (data and index phases timed)
#   dump      pg_dump -Fc bench | pg_restore -d bench                     (one stream)
#   dumpdir   pg_dump -Fd -j N -f DIR bench; pg_restore -j N -d bench DIR (both timed)
# and prints each method's median wall time, its CPU seconds (client process tree plus both
# servers), peak RSS, the ratios to pgcopydb and to the floor, pgferry's phases and a verdict
# against the targets: pgferry <= 1.0x pgcopydb, <= 1.10x the floor, pgferry's peak RSS < 150 MB.
# Every target is checked against the source (row counts, index count, a payload hash, a sum,
# the sequence's value).
#
# Usage: bash bench/offline.sh                               (scale 40, ~1 GB; 10 runs)
#        BENCH_SCALE=3 BENCH_ROUNDS=1 bash bench/offline.sh  (~100 MB; a quick check)
# Environment:
#   BENCH_SCALE    pgbench scale (default 40); the wide table has 5000 rows per scale unit
#   BENCH_ROUNDS   rounds of the interleaved run (default 2); each prints medians over them
#   BENCH_METHODS  the methods, comma- or space-separated (default
#                  pgferry,pgcopydb,floor,dump,dumpdir)
#   BENCH_JOBS     workers for pgferry --jobs, pgcopydb's table and index jobs, the floor's
#                  parallel COPYs and every -j (default: nproc)
#   BENCH_PG_BIN   PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_TMPDIR   where the clusters go (default /dev/shm when it has > 4 GiB free,
#                  else $TMPDIR or /tmp)
#   BENCH_KEEP=1   keep the work directory (clusters, logs, pgferry events) at the end
#   BENCH_STRICT=1 exit 3 when a target of the verdict is missed or could not be measured
#                  (with pgferry and pgcopydb or the floor among the methods)
#   BENCH_SKIP_BUILD=1  use the pgferry binary already built
#   BENCH_BASELINES=0   time pgferry only (BENCH_METHODS=pgferry: no ratio, no verdict)
# As root, the server programs run as the OS user `postgres` (PostgreSQL refuses root);
# the clients (psql, pgbench, pg_dump, pg_restore, pgcopydb, pgferry) run as the invoking user.
# The method functions run through `bash -c` (export -f) and cleanup through a trap:
# shellcheck disable=SC2317
set -euo pipefail

SCALE=${BENCH_SCALE:-40}
JOBS=${BENCH_JOBS:-$(nproc)}
ROUNDS=${BENCH_ROUNDS:-2}
if [ "${BENCH_BASELINES:-1}" = 0 ]; then
  METHODS=pgferry
else
  METHODS=${BENCH_METHODS:-pgferry,pgcopydb,floor,dump,dumpdir}
fi
METHODS=$(echo "$METHODS" | tr ',' ' ' | xargs)
PG_BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PGFERRY=$TARGET_DIR/release/pgferry

BENCH_NAME=offline.sh
DB=bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer (got '$SCALE')"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "BENCH_JOBS must be a positive integer (got '$JOBS')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer (got '$ROUNDS')"
[ -n "$METHODS" ] || die "BENCH_METHODS is empty"
for m in $METHODS; do
  case $m in pgferry | pgcopydb | floor | dump | dumpdir) ;; *) die "unknown method '$m' in BENCH_METHODS (pgferry, pgcopydb, floor, dump, dumpdir)" ;; esac
done
require_tools
# pgcopydb: Debian 12 packages 0.10. Installed here when missing (as root); skipped with a
# message where it cannot be installed (or, later, when its first run fails).
PGCOPYDB=
SKIPPED_PGCOPYDB=
if has_method pgcopydb; then
  if ! command -v pgcopydb >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing pgcopydb (apt-get install pgcopydb)"
    apt-get install -y -qq pgcopydb >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq pgcopydb >/dev/null 2>&1; } || true
  fi
  if command -v pgcopydb >/dev/null && pgcopydb --version >/dev/null 2>&1; then
    PGCOPYDB=$(command -v pgcopydb)
    say "$(pgcopydb --version 2>/dev/null | head -n 1)"
  else
    SKIPPED_PGCOPYDB="pgcopydb is not installed and could not be installed (apt-get install pgcopydb)"
    say "SKIPPING pgcopydb: $SKIPPED_PGCOPYDB"
  fi
fi

setup_environment

# ---------------------------------------------------------------------------------------
if has_method pgferry; then build_pgferry; fi

# ---------------------------------------------------------------------------------------
make_workdir shm
parent=$WORK_PARENT
# shellcheck disable=SC2119 # no settings beyond the common ones
start_clusters

# ---------------------------------------------------------------------------------------
load_pgbench_db "$SP" bench "$SCALE"
DB_SIZE=$(sq "$SP" bench -c "select pg_size_pretty(pg_database_size('bench'))")
DB_BYTES=$(sq "$SP" bench -c "select pg_database_size('bench')")
SIGNATURE_SQL=$PGBENCH_SIGNATURE_SQL
SOURCE_SIGNATURE[bench]=$(sq "$SP" bench -c "$SIGNATURE_SQL")
say "source: ${SOURCE_SIGNATURE[bench]}"
expected=$(pgbench_expected "$SCALE")
[[ ${SOURCE_SIGNATURE[bench]} == "$expected"* ]] || die "unexpected source contents: ${SOURCE_SIGNATURE[bench]} (expected $expected…)"

if has_method pgferry; then warm_pgferry; fi

# ---------------------------------------------------------------------------------------
# The methods of this script; pgferry, dump and dumpdir are in lib.sh.
# (pgcopydb) pgcopydb clone, $JOBS table jobs and $JOBS index jobs. What it needs here, and
# why (pgcopydb 0.10, tried on these clusters):
#   --dir DIR   a fresh work directory per run: without --dir it uses one fixed directory
#               under $TMPDIR, and a directory left by a completed run makes it refuse to
#               start ("Please use --restart to allow for removing files that belong to a
#               completed previous run").
#   the target database must exist: pgcopydb restores into it but does not create it, and
#               fails with pg_restore's "database "bench" does not exist" otherwise (the
#               CREATE DATABASE is timed, as for dump, dumpdir and the floor).
#   PATH        it runs pg_dump and pg_restore found on PATH; Debian's /usr/bin ones are
#               wrappers that pick the newest installed version, so the clusters' own
#               binaries go first.
# No other flag is needed: it connects as the superuser postgres on both sides, and the clone
# also succeeds without --no-owner, --no-acl or --skip-extensions (tried). pgcopydb also runs
# VACUUM ANALYZE on every table and resets the sequences; both are in its time.
method_pgcopydb() {
  sq "$TP" postgres -c "create database bench"
  PATH="$PG_BIN:$PATH" exec "$PGCOPYDB" clone \
    --source "postgres://postgres@127.0.0.1:$SP/bench" \
    --target "postgres://postgres@127.0.0.1:$TP/bench" \
    --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$RUN_DIR/pgcopydb"
}

# (floor) what any COPY-based tool must at least do, one phase after the other:
#   schema: pg_dump -Fc --schema-only to a file, pg_restore --section=pre-data;
#   data:   binary COPY of every table, source COPY TO STDOUT piped into target COPY FROM
#           STDIN (two psql), $JOBS tables at once, the biggest (heap + TOAST) first; then
#           setval of every sequence to the source's value;
#   index:  pg_restore -j $JOBS --section=post-data (primary keys, indexes, constraints).
copy_table() { # schema-qualified, quoted table name
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SP" -U postgres -d bench \
    -c "copy $1 to stdout (format binary)" |
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$TP" -U postgres -d bench \
      -c "copy $1 from stdin (format binary)"
}
method_floor() {
  local t running=0 rc=0
  sq "$TP" postgres -c "create database bench"
  "$PG_BIN/pg_dump" -Fc --schema-only -f "$RUN_DIR/schema.dump" -h 127.0.0.1 -p "$SP" -U postgres bench
  "$PG_BIN/pg_restore" --section=pre-data -h 127.0.0.1 -p "$TP" -U postgres -d bench "$RUN_DIR/schema.dump"
  mark schema
  sq "$SP" bench -c "select format('%I.%I', n.nspname, c.relname)
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname not like 'pg\_toast%'
     order by pg_table_size(c.oid) desc" >"$RUN_DIR/tables"
  while read -r t; do
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || rc=1
      running=$((running - 1))
    fi
    copy_table "$t" &
    running=$((running + 1))
  done <"$RUN_DIR/tables"
  while [ "$running" -gt 0 ]; do
    wait -n || rc=1
    running=$((running - 1))
  done
  [ "$rc" = 0 ] || { echo "a table's COPY failed" >&2; return 1; }
  sq "$SP" bench -c "select format('select setval(%L, %s, %L);', format('%I.%I', schemaname, sequencename),
                                   coalesce(last_value, start_value), last_value is not null)
                       from pg_sequences" | sq "$TP" bench >/dev/null
  mark data
  "$PG_BIN/pg_restore" -j "$JOBS" --section=post-data -h 127.0.0.1 -p "$TP" -U postgres -d bench "$RUN_DIR/schema.dump"
  mark index
}

declare -A LABEL=(
  [pgferry]="pgferry --jobs $JOBS"
  [pgcopydb]="pgcopydb clone $JOBS+$JOBS jobs"
  [floor]="floor: COPY -j$JOBS, post-data -j$JOBS"
  [dump]="pg_dump -Fc | pg_restore"
  [dumpdir]="pg_dump -Fd -j$JOBS + pg_restore -j$JOBS"
)
export -f copy_table method_pgcopydb method_floor
export PG_BIN SP TP JOBS PGFERRY PGCOPYDB

# ---------------------------------------------------------------------------------------
read -r -a ORDER <<<"$METHODS"
run_rounds "${ORDER[@]}"
summarize "${ORDER[@]}"

echo
echo "pgferry offline benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'), scale $SCALE, database bench $DB_SIZE, clusters on $parent"
echo "$ROUNDS round(s), every method once per round, order rotated; medians over the rounds; --jobs/-j $JOBS"
row() { printf '%-36s %7s %6s %6s  %7s %7s %7s  %6s %6s  %9s %9s  %s\n' "$@"; }
row "method" "wall s" "data" "index" "CPU-s" "client" "servers" "RSS MB" "tree" "÷pgcopydb" "÷floor" "check"
for name in "${ORDER[@]}"; do
  label=${LABEL[$name]}
  if [ "$name" = pgcopydb ] && [ -n "$SKIPPED_PGCOPYDB" ] && ! has_run pgcopydb; then
    printf '%-36s skipped: %s\n' "$label" "$SKIPPED_PGCOPYDB"
    continue
  fi
  row "$label" "${M_WALL[$name]}" "${M_DATA[$name]}" "${M_INDEX[$name]}" "${M_CPU[$name]}" "${M_CCPU[$name]}" "${M_SCPU[$name]}" \
    "$(mb "${M_RSS[$name]:-0}")" "$(mb "${M_TREE[$name]:-0}")" \
    "$(ratio "${M_WALL[$name]}" "${M_WALL[pgcopydb]:-}")" "$(ratio "${M_WALL[$name]}" "${M_WALL[floor]:-}")" "${M_CHECK[$name]}"
done
echo "  wall s: median wall time. data / index: the data phase (after pre-data: COPY, sequences) and"
echo "  the post-data phase (indexes, keys), for pgferry from its events (its verification after"
echo "  that is in the wall time only), for the floor from its own marks."
echo "  CPU-s = client + servers, each the median over the rounds. client: user+sys of the method's"
echo "  whole process tree (GNU time: the tool and every child it waited for: pg_dump, pg_restore,"
echo "  psql, pgcopydb's workers). servers: user+sys of both PostgreSQL clusters, from /proc of each"
echo "  postmaster and its children (live, and reaped via cutime/cstime) before and after the run."
echo "  RSS MB: the largest single process of the client tree (GNU time, ru_maxrss), max over the"
echo "  rounds; tree: the largest sampled sum of VmRSS over the tree (every 100 ms)."
echo "  ÷pgcopydb, ÷floor: the method's median wall time over theirs."
if has_run pgferry; then
  echo "  throughput of pgferry: $(awk -v b="$DB_BYTES" -v s="${M_WALL[pgferry]}" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s }') MB/s of database size (median wall time)"
  echo "  pgferry's CPU-s ratio: $(ratio "${M_CPU[pgferry]}" "${M_CPU[pgcopydb]:-}") of pgcopydb, $(ratio "${M_CPU[pgferry]}" "${M_CPU[floor]:-}") of the floor"
  for ((r = 1; r <= ROUNDS; r++)); do
    if [ -n "${PGFERRY_PHASES[pgferry,$r]:-}" ]; then
      echo "  pgferry's phases, round $r ($(mb "${R_HWM[pgferry,$r]:-0}") MB peak RSS of pgferry itself, VmHWM):"
      echo "${PGFERRY_PHASES[pgferry,$r]}"
    fi
  done
fi

# Verdict: pgferry ≤ 1.0× pgcopydb, ≤ 1.10× the floor (median wall times), peak RSS of
# pgferry itself (VmHWM, the highest of the rounds) < 150 MB. A target that could not be
# measured (method skipped or failed) is "not measured", which BENCH_STRICT counts as missed.
ALL_OK=0
if ! has_method pgferry; then
  echo "verdict: none (pgferry was not among the methods)"
elif ! has_run pgferry; then
  echo "verdict: FAIL — pgferry did not succeed"
elif ! has_method pgcopydb && ! has_method floor; then
  echo "verdict: none (neither pgcopydb nor the floor was among the methods); pgferry's peak RSS $(mb "${M_HWM[pgferry]}") MB"
else
  HWM_MAX=${M_HWM[pgferry]}
  v1=$(verdict_part "vs pgcopydb" "$(ratio "${M_WALL[pgferry]}" "${M_WALL[pgcopydb]:-}")" 1.0)
  v2=$(verdict_part "vs floor" "$(ratio "${M_WALL[pgferry]}" "${M_WALL[floor]:-}")" 1.10)
  v3="peak RSS $(mb "${HWM_MAX:-0}") MB < 150 MB: $(awk -v k="${HWM_MAX:-0}" 'BEGIN { print (k > 0 && k < 150 * 1024) ? "PASS" : "FAIL" }')"
  verdict="$v1; $v2; $v3"
  if [[ $verdict != *FAIL* ]] && [[ $verdict != *"not measured"* ]] && [ "${M_CHECK[pgferry]}" = "exact ×$ROUNDS" ]; then
    ALL_OK=1
    echo "verdict: PASS — $verdict"
  elif [ "${M_CHECK[pgferry]}" != "exact ×$ROUNDS" ]; then
    echo "verdict: FAIL — pgferry's runs: ${M_CHECK[pgferry]}; $verdict"
  elif [[ $verdict != *FAIL* ]]; then
    echo "verdict: INCOMPLETE — $verdict"
  else
    echo "verdict: FAIL — $verdict"
  fi
fi

[ "$FAILED" = 0 ] || exit 1
if [ -n "${BENCH_STRICT:-}" ] && has_method pgferry && { has_method pgcopydb || has_method floor; } && [ "$ALL_OK" != 1 ]; then exit 3; fi
exit 0
